"""One replay per stack fieldhub replaces: that firmware's traffic, byte for byte as the stack's
source and documents give it (docs/protocol.md, "The stacks fieldhub replaces"), published
through a real Mosquitto into a real `fieldhub up`.

Each replay asserts the stored readings (names and values), the device's identity with its MAC
spelled differently on different topics, its attributes and presence, and that what the broker
hands over again (retained copies on a new session, QoS 1 duplicates) is stored once.
"""

from __future__ import annotations

import base64
import json
import math
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.mqtt.publisher import MqttPublisher, Will
from fieldhub.protocol.timestamps import US_PER_S, format_us
from support.audio import sine, wav_bytes
from support.fieldhub_process import FieldhubProcess, wait_until


@dataclass(frozen=True, slots=True)
class Frame:
    """One publish of the recorded traffic."""

    topic: str
    payload: bytes
    retain: bool = False


def random_mac() -> str:
    return "3C:E9:0E:" + ":".join(f"{random.randrange(256):02X}" for _ in range(3))


def device_client(
    url: str, client_id: str, *, will: Will | None = None, protocol: int = 4
) -> MqttPublisher:
    """A connected client standing in for the device's firmware (3.1.1, as the stacks use)."""
    client = MqttPublisher(
        endpoint=parse_mqtt_url(url), client_id=client_id, will=will, protocol=protocol
    )
    client.start()
    assert client.wait_connected(10), f"device client could not connect to {url}"
    return client


def replay(client: MqttPublisher, frames: Sequence[Frame]) -> None:
    """Publish QoS 1 in order, each acknowledged before the next (firmware loops do the same)."""
    for frame in frames:
        client.publish(frame.topic, frame.payload, qos=1, retain=frame.retain).result(10)


@pytest.fixture
def fieldhub(mosquitto: MosquittoProcess, tmp_path: Path) -> Iterator[FieldhubProcess]:
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=mosquitto.url).start()
    yield fh
    fh.stop()


def parse_ts(text: str) -> float:
    """Epoch seconds of an API time (ISO 8601 with a zone)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def readings(fh: FieldhubProcess, device: str, metric: str) -> list[tuple[str, float]]:
    """(time, value) of a metric, oldest first."""
    response = fh.get(f"/api/v1/devices/{device}/readings", metric=metric, limit=1000)
    if response.status_code != 200:
        return []
    return sorted((row["ts"], row["value"]) for row in response.json()["data"])


def device(fh: FieldhubProcess, device_id: str) -> dict[str, Any] | None:
    response = fh.get(f"/api/v1/devices/{device_id}")
    return response.json() if response.status_code == 200 else None


def metric_names(fh: FieldhubProcess, device_id: str) -> set[str]:
    found = device(fh, device_id)
    return {metric["name"] for metric in found["metrics"]} if found else set()


def presence_changes(fh: FieldhubProcess, device_id: str) -> list[str]:
    body = fh.get(f"/api/v1/devices/{device_id}/presence").json()
    return [f"{change['ts']} {change['state']}" for change in body["data"]]


def on_a_new_session(fh: FieldhubProcess, retained_copies: int) -> FieldhubProcess:
    """Stop fieldhub and start it under another client id: a new session, to which the broker
    hands every retained message again. Returns once `retained_copies` were recognised."""
    assert fh.stop() == 0
    fresh = FieldhubProcess(
        data_dir=fh.data_dir,
        mqtt_url=fh.mqtt_url,
        env={"FIELDHUB_MQTT_CLIENT_ID": f"fieldhub-replay-{uuid.uuid4().hex[:8]}"},
    ).start()
    try:
        wait_until(
            lambda: (
                fresh.metric("fieldhub_ingest_messages_total", {"outcome": "retained_redelivery"})
                >= retained_copies
            ),
            what=f"{retained_copies} retained copies recognised",
        )
    except BaseException:
        fresh.stop()  # the caller never gets it to stop
        raise
    return fresh


# --- Flask/SQLite gateway stack (`readings` profile) ------------------------------------------


def flask_gateway_frames(mac: str, *, temperature_id: str) -> list[Frame]:
    """Two gateway readings (rssi 65 then 63) and a temperature (21.4) of the gateway `mac`,
    retained; the temperature topic names it `temperature_id`."""
    frames = [
        Frame(
            f"/readings/gateway/{mac}",
            f'{{"macAddress":"{mac}", "timestamp":{uptime}, "rssi":{rssi}}}'.encode(),
            retain=True,
        )
        for uptime, rssi in ((93_387, 65), (123_391, 63))
    ]
    frames.append(
        Frame(
            f"/readings/temperature/{temperature_id}",
            f'{{"macAddress":"{mac}", "timestamp":123400, "temperature":21.4}}'.encode(),
            retain=True,
        )
    )
    return frames


def test_flask_gateway_stack_replay(mosquitto: MosquittoProcess, fieldhub: FieldhubProcess) -> None:
    """Retained QoS 1 on a fresh connection per publish, client id = the MAC, no DISCONNECT."""
    mac = random_mac()
    dashed = mac.lower().replace(":", "-")
    # The temperature topic of the same gateway, with the MAC spelled another way.
    frames = flask_gateway_frames(mac, temperature_id=dashed)
    for frame in frames:
        client = device_client(mosquitto.url, mac, protocol=5)
        replay(client, [frame])
        client.stop(disconnect=False)

    wait_until(lambda: len(readings(fieldhub, mac, "uptime_ms")) == 3, what="three uptimes")
    found = device(fieldhub, mac.replace(":", ""))
    assert found is not None
    assert (found["id"], found["profile"], found["presence"]) == (mac, "readings", "online")
    assert found["attributes"] == {"macAddress": mac}
    assert metric_names(fieldhub, mac) == {"rssi_percent", "uptime_ms", "temperature"}
    assert [v for _, v in readings(fieldhub, mac, "rssi_percent")] == [65.0, 63.0]
    assert [v for _, v in readings(fieldhub, mac, "temperature")] == [21.4]
    assert sorted(v for _, v in readings(fieldhub, mac, "uptime_ms")) == [93_387, 123_391, 123_400]

    # Both topics hold a retained copy; a new session gets both again and stores neither.
    fresh = on_a_new_session(fieldhub, retained_copies=2)
    try:
        assert len(readings(fresh, mac, "uptime_ms")) == 3
        assert len(readings(fresh, mac, "rssi_percent")) == 2
    finally:
        fresh.stop()


# --- FastAPI/RabbitMQ/React stack (native aliases) --------------------------------------------


# The node's clock: configTime() with UTC+5:30 and no zone written (IoT_Platform_Node.ino).
FASTAPI_UTC_OFFSET_S = 19_800


def fastapi_clock(fmt: str, epoch_s: float) -> str:
    return time.strftime(fmt, time.gmtime(epoch_s + FASTAPI_UTC_OFFSET_S))


def fastapi_status(node_id: str, status: str, clock: str, *numbers: int) -> bytes:
    """publishStatus(): the firmware's members in its order, compact (ArduinoJson)."""
    uptime, heap, rssi, servo, gas, strength = numbers
    return (
        f'{{"timestamp":"{clock}","status":"{status}","uptime":{uptime},"free_heap":{heap},'
        f'"wifi_rssi":{rssi},"node_id":"{node_id}","servo_angle":{servo},"gas_sensor":{gas},'
        f'"signal_strength":{strength}}}'
    ).encode()


def fastapi_sensor_data(node_id: str, clock: str, temperature: str, gas: int, light: str) -> bytes:
    """readAndPublishSensors() as sent: the first 14 of its 17 members (the rest do not fit its
    StaticJsonDocument<250> under ArduinoJson 6: no `smart_mode`, `uptime`, `wifi_rssi`)."""
    return (
        f'{{"timestamp":"{clock}","temperature":{temperature},"humidity":50,"humidity_mq":0,'
        f'"humidity_mq_raw":0,"gas_sensor":{gas},"status":"online","node_id":"{node_id}",'
        f'"servo_angle":90,"light_state":{light},"fan_state":false,"relay3_state":false,'
        f'"relay4_state":false,"real_model_state":false}}'
    ).encode()


def fastapi_heartbeat(node_id: str, uptime: int) -> bytes:
    return (
        f'{{"type":"heartbeat","status":"online","node_id":"{node_id}","uptime":{uptime}}}'.encode()
    )


def fastapi_frames(bare: str, now_s: float) -> list[Frame]:
    """The node `bare`'s connect sequence (status `online`, data, test ping), heartbeats and a
    servo command's status message, all on its data topic, its clock at `now_s` (+1 to +6 s)."""
    data_topic = f"devices/{bare}/data"
    date = fastapi_clock("%Y-%m-%d %H:%M:%S", now_s)
    later_date = fastapi_clock("%Y-%m-%d %H:%M:%S", now_s + 6)
    clocks = [fastapi_clock("%H:%M:%S", now_s + step) for step in (1, 4)]
    return [
        Frame(data_topic, fastapi_status(bare, "online", date, 6_004, 201_344, -61, 90, 45, 55)),
        Frame(data_topic, fastapi_sensor_data(bare, clocks[0], "20.1", 45, "false")),
        Frame(data_topic, f'{{"test":"ping","node_id":"{bare}"}}'.encode()),
        Frame(data_topic, fastapi_heartbeat(bare, 9_012)),
        Frame(data_topic, fastapi_sensor_data(bare, clocks[1], "20.2", 47, "true")),
        Frame(data_topic, fastapi_heartbeat(bare, 12_015)),
        Frame(
            data_topic,
            fastapi_status(
                bare, "servo_updated_wifi", later_date, 12_480, 201_112, -60, 135, 47, 57
            ),
        ),
    ]


def test_fastapi_stack_replay(mosquitto: MosquittoProcess, fieldhub: FieldhubProcess) -> None:
    """The firmware's connect sequence (status `online`, data, test ping), heartbeats, a servo
    command's status message, all on the data topic; the retained `offline` will on a lost link."""
    mac = random_mac()
    bare = mac.replace(":", "")  # the firmware's node_id
    now_s = time.time()
    later_date = fastapi_clock("%Y-%m-%d %H:%M:%S", now_s + 6)
    clocks = [fastapi_clock("%H:%M:%S", now_s + step) for step in (1, 4)]
    client = device_client(
        mosquitto.url,
        f"ESP32-{bare}",
        will=Will(topic=f"devices/{bare}/status", payload=b"offline", qos=1, retain=True),
    )
    replay(client, fastapi_frames(bare, now_s))

    wait_until(lambda: len(readings(fieldhub, mac, "uptime_ms")) == 4, what="four uptimes")
    wait_until(lambda: len(readings(fieldhub, mac, "temperature")) == 2, what="both data")
    found = device(fieldhub, mac.lower())
    assert found is not None
    assert (found["id"], found["profile"], found["presence"]) == (mac, "native", "online")
    assert found["attributes"] == {
        "status": "servo_updated_wifi",
        "status_time": later_date,
        "node_id": bare,
        "timestamp": clocks[1],
        "test": "ping",
    }
    assert metric_names(fieldhub, mac) == {
        "temperature",
        "humidity",
        "humidity_mq",
        "humidity_mq_raw",
        "gas_sensor",
        "servo_angle",
        "light_state",
        "fan_state",
        "relay3_state",
        "relay4_state",
        "real_model_state",
        "uptime_ms",
        "free_heap",
        "rssi",
        "signal_strength",
    }
    # millis(): milliseconds, from the status messages and the heartbeats.
    assert [v for _, v in readings(fieldhub, mac, "uptime_ms")] == [6_004, 9_012, 12_015, 12_480]
    assert [v for _, v in readings(fieldhub, mac, "rssi")] == [-61.0, -60.0]
    assert [v for _, v in readings(fieldhub, mac, "signal_strength")] == [55.0, 57.0]
    assert [v for _, v in readings(fieldhub, mac, "free_heap")] == [201_344.0, 201_112.0]
    assert [v for _, v in readings(fieldhub, mac, "temperature")] == [20.1, 20.2]
    assert [v for _, v in readings(fieldhub, mac, "light_state")] == [0.0, 1.0]
    assert [v for _, v in readings(fieldhub, mac, "servo_angle")] == [90.0, 90.0, 90.0, 135.0]
    assert [v for _, v in readings(fieldhub, mac, "gas_sensor")] == [45.0, 45.0, 47.0, 47.0]
    assert [v for _, v in readings(fieldhub, mac, "humidity_mq_raw")] == [0.0, 0.0]
    # The status messages are dated on receipt, not by their zone-less local clock: every
    # reading is within a minute of now.
    for ts, _ in readings(fieldhub, mac, "uptime_ms"):
        assert abs(parse_ts(ts) - time.time()) < 60
    assert fieldhub.get("/api/v1/dead-letters", device=mac).json()["data"] == []

    # Power lost: the broker publishes the retained will.
    client.stop(disconnect=False)
    wait_until(lambda: (device(fieldhub, mac) or {}).get("presence") == "offline", what="the will")
    changes = presence_changes(fieldhub, mac)
    assert changes[-1].endswith(" offline")

    # The retained will comes again on a new session: no new presence change, no new readings.
    fresh = on_a_new_session(fieldhub, retained_copies=1)
    try:
        assert presence_changes(fresh, mac) == changes
        assert len(readings(fresh, mac, "uptime_ms")) == 4
        assert (device(fresh, mac) or {}).get("presence") == "offline"
    finally:
        fresh.stop()


# --- Raspberry Pi/Mosquitto/Telegraf stack (`iot-node` profile) --------------------------------


def iot_node_frames(node: str, node_s: int) -> list[Frame]:
    """Two telemetry messages of `node` (temperature 22.5 and 23.5, its clock from `node_s`), the
    second again (a redelivery), retained health on status, then the management utility's
    command on the down-link topic."""
    telemetry = [
        {
            "node_id": node,
            "timestamp": node_s + step * 10,
            "sensors": {"temperature": 22.5 + step, "humidity": 45.2},
            "wifi_rssi": -65,
            "uptime": 3_600 + step * 10,
        }
        for step in range(2)
    ]
    frames = [Frame(f"iot/node/{node}/telemetry", json.dumps(t).encode()) for t in telemetry]
    frames.append(frames[-1])  # a redelivery: the same bytes again
    # Node health, retained (the simulated node publishes it so): its readings are stored once.
    frames.append(
        Frame(f"iot/node/{node}/status", b'{"uptime": 3611, "wifi_rssi": -66}', retain=True)
    )
    # The management utility's command on the down-link topic: not data, not a dead letter.
    command = {"command": "set_led", "params": {"state": "on", "brightness": 128}}
    frames.append(Frame(f"iot/node/{node}/command", json.dumps(command).encode()))
    return frames


def test_iot_node_stack_replay(mosquitto: MosquittoProcess, fieldhub: FieldhubProcess) -> None:
    """Telemetry at the node's clock, retained health on status, duplicates stored once."""
    node = f"node_{uuid.uuid4().hex[:6]}"
    node_s = int(time.time()) - 20
    frames = iot_node_frames(node, node_s)
    client = device_client(mosquitto.url, node)
    try:
        replay(client, frames)
    finally:
        client.stop()

    wait_until(lambda: len(readings(fieldhub, node, "uptime_s")) == 3, what="three uptimes")
    found = device(fieldhub, node)
    assert found is not None
    assert (found["profile"], found["presence"]) == ("iot-node", "online")
    assert found["attributes"] == {"node_id": node}
    assert readings(fieldhub, node, "temperature") == [
        (format_us((node_s + step * 10) * US_PER_S), 22.5 + step) for step in range(2)
    ]
    assert metric_names(fieldhub, node) == {"temperature", "humidity", "rssi", "uptime_s"}
    dead = fieldhub.get("/api/v1/dead-letters", device=node).json()["data"]
    assert dead == []

    fresh = on_a_new_session(fieldhub, retained_copies=1)
    try:
        assert len(readings(fresh, node, "uptime_s")) == 3
    finally:
        fresh.stop()


# --- Go/ClickHouse window-control stack (`sensor` profile) -------------------------------------


def window_control_frames(sensor: str, amplitude: int) -> list[Frame]:
    """`sensor`'s temperature (25.5) and humidity (61) as text, a 2 s WAV clip of a sine of
    `amplitude`, the backbone's inference request and the ML service's window order (40)."""
    clip = wav_bytes(sine(amplitude))
    audio = {"data": base64.b64encode(clip).decode(), "sample_rate": 16_000, "duration": 2.0}
    control = {
        "device_id": sensor,
        "timestamp": time.time(),
        "position": 40,
        "confidence": 0.87,
        "features_used": {"temperature": 25.5, "humidity": 61.0, "sound_volume": -17.7},
    }
    request = {
        "device_id": sensor,
        "timestamp": int(time.time()),
        "temperature": 25.5,
        "humidity": 61.0,
        "sound_volume": -17.7,
    }
    return [
        Frame(f"sensor/{sensor}/temperature", b"25.5"),
        Frame(f"sensor/{sensor}/humidity", b"61"),
        Frame(f"sensor/{sensor}/audio", json.dumps(audio).encode()),
        Frame(f"ml/inference/request/{sensor}", json.dumps(request).encode()),
        Frame(f"window/{sensor}/control", json.dumps(control).encode()),
    ]


def test_window_control_stack_replay(
    mosquitto: MosquittoProcess, fieldhub: FieldhubProcess
) -> None:
    """Numbers as text, a 2 s WAV clip as its level, the ML service's window order as state."""
    sensor = f"esp32_{uuid.uuid4().hex[:6]}"
    amplitude = 6_000
    frames = window_control_frames(sensor, amplitude)
    client = device_client(mosquitto.url, sensor)
    try:
        replay(client, frames)
    finally:
        client.stop()

    wanted = {"temperature", "humidity", "sound_volume", "window_position", "window_confidence"}
    wait_until(lambda: metric_names(fieldhub, sensor) == wanted, what="the five metrics")
    found = device(fieldhub, sensor)
    assert found is not None
    assert (found["profile"], found["presence"]) == ("sensor", "online")
    # The order's features_used repeat the device's readings: not stored again.
    assert not any(key.startswith("features_used") for key in found["attributes"])
    assert [v for _, v in readings(fieldhub, sensor, "temperature")] == [25.5]
    assert [v for _, v in readings(fieldhub, sensor, "humidity")] == [61.0]
    [(_, level)] = readings(fieldhub, sensor, "sound_volume")
    assert level == pytest.approx(20 * math.log10(amplitude / math.sqrt(2) / 32_768), abs=0.05)
    assert [v for _, v in readings(fieldhub, sensor, "window_position")] == [40.0]
    # The inference request repeated readings already stored: it added none, and no dead letter.
    assert fieldhub.get("/api/v1/dead-letters", device=sensor).json()["data"] == []

    # The same clip over HTTP ingest: 85 KB is over the 64 KiB default but within the audio
    # route's limit, and lands as one more reading.
    response = httpx.post(
        f"{fieldhub.base_url}/api/v1/ingest/sensor",
        params={"topic": f"sensor/{sensor}/audio"},
        content=next(f.payload for f in frames if f.topic.endswith("/audio")),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    assert response.json()["readings"] == 1
    wait_until(lambda: len(readings(fieldhub, sensor, "sound_volume")) == 2, what="the clip")
