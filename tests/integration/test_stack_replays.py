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


def test_flask_gateway_stack_replay(mosquitto: MosquittoProcess, fieldhub: FieldhubProcess) -> None:
    """Retained QoS 1 on a fresh connection per publish, client id = the MAC, no DISCONNECT."""
    mac = random_mac()
    dashed = mac.lower().replace(":", "-")
    frames = [
        Frame(
            f"/readings/gateway/{mac}",
            f'{{"macAddress":"{mac}", "timestamp":{uptime}, "rssi":{rssi}}}'.encode(),
            retain=True,
        )
        for uptime, rssi in ((93_387, 65), (123_391, 63))
    ]
    # The temperature topic of the same gateway, with the MAC spelled another way.
    frames.append(
        Frame(
            f"/readings/temperature/{dashed}",
            f'{{"macAddress":"{mac}", "timestamp":123400, "temperature":21.4}}'.encode(),
            retain=True,
        )
    )
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


def fastapi_data(mac_id: str, second: int, servo: int) -> bytes:
    """The stack's flat data object, once a second (Arduino firmware, no NTP yet at first)."""
    return json.dumps(
        {
            "temperature": 24.5 + second / 10,
            "humidity": 55.0,
            "gas_sensor": 312,
            "servo_angle": servo,
            "light_state": True,
            "fan_state": False,
            "wifi_rssi": -61,
            "uptime": 3_600 + second,
            "status": "active",
            "node_id": mac_id,
            "timestamp": "unknown" if second == 0 else f"12:34:{second:02d}",
        }
    ).encode()


def test_fastapi_stack_replay(mosquitto: MosquittoProcess, fieldhub: FieldhubProcess) -> None:
    """Data every second, a JSON heartbeat, and the retained `offline` will on a lost link."""
    mac = random_mac()
    bare = mac.replace(":", "")
    status_topic = f"devices/{mac}/status"
    client = device_client(
        mosquitto.url,
        f"ESP32-{bare}",
        will=Will(topic=status_topic, payload=b"offline", qos=1, retain=True),
    )
    frames = [Frame(f"devices/{bare}/data", fastapi_data(bare, s, 90 * (s % 2))) for s in range(3)]
    # The heartbeat, on the status topic with the MAC in colon form: the same device.
    heartbeat = {"status": "online", "uptime": 3_603, "wifi_rssi": -60, "free_heap": 201_344}
    frames.append(Frame(status_topic, json.dumps(heartbeat).encode()))
    replay(client, frames)

    wait_until(lambda: len(readings(fieldhub, mac, "uptime_s")) == 4, what="four uptimes")
    found = device(fieldhub, mac.lower())
    assert found is not None
    assert (found["id"], found["profile"], found["presence"]) == (mac, "native", "online")
    assert found["attributes"] == {"status": "active", "node_id": bare, "timestamp": "12:34:02"}
    assert metric_names(fieldhub, mac) == {
        "temperature",
        "humidity",
        "gas_sensor",
        "servo_angle",
        "light_state",
        "fan_state",
        "rssi",
        "uptime_s",
        "free_heap",
    }
    assert [v for _, v in readings(fieldhub, mac, "servo_angle")] == [0.0, 90.0, 0.0]
    assert {v for _, v in readings(fieldhub, mac, "light_state")} == {1.0}
    assert [v for _, v in readings(fieldhub, mac, "rssi")] == [-61.0, -61.0, -61.0, -60.0]

    # Power lost: the broker publishes the retained will.
    client.stop(disconnect=False)
    wait_until(lambda: (device(fieldhub, mac) or {}).get("presence") == "offline", what="the will")
    changes = presence_changes(fieldhub, mac)
    assert changes[-1].endswith(" offline")

    # The retained will comes again on a new session: no new presence change, no new readings.
    fresh = on_a_new_session(fieldhub, retained_copies=1)
    try:
        assert presence_changes(fresh, mac) == changes
        assert len(readings(fresh, mac, "uptime_s")) == 4
        assert (device(fresh, mac) or {}).get("presence") == "offline"
    finally:
        fresh.stop()


# --- Raspberry Pi/Mosquitto/Telegraf stack (`iot-node` profile) --------------------------------


def test_iot_node_stack_replay(mosquitto: MosquittoProcess, fieldhub: FieldhubProcess) -> None:
    """Telemetry at the node's clock, retained health on status, duplicates stored once."""
    node = f"node_{uuid.uuid4().hex[:6]}"
    node_s = int(time.time()) - 20
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


def test_window_control_stack_replay(
    mosquitto: MosquittoProcess, fieldhub: FieldhubProcess
) -> None:
    """Numbers as text, a 2 s WAV clip as its level, the ML service's window order as state."""
    sensor = f"esp32_{uuid.uuid4().hex[:6]}"
    amplitude = 6_000
    clip = wav_bytes(sine(amplitude))
    audio = {"data": base64.b64encode(clip).decode(), "sample_rate": 16_000, "duration": 2.0}
    control = {
        "device_id": sensor,
        "timestamp": time.time(),
        "position": 40,
        "confidence": 0.87,
        "features_used": ["temperature", "humidity", "sound_volume"],
    }
    request = {
        "device_id": sensor,
        "timestamp": int(time.time()),
        "temperature": 25.5,
        "humidity": 61.0,
        "sound_volume": -17.7,
    }
    frames = [
        Frame(f"sensor/{sensor}/temperature", b"25.5"),
        Frame(f"sensor/{sensor}/humidity", b"61"),
        Frame(f"sensor/{sensor}/audio", json.dumps(audio).encode()),
        Frame(f"ml/inference/request/{sensor}", json.dumps(request).encode()),
        Frame(f"window/{sensor}/control", json.dumps(control).encode()),
    ]
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
    assert found["attributes"]["features_used.2"] == "sound_volume"
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
        content=json.dumps(audio).encode(),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    assert response.json()["readings"] == 1
    wait_until(lambda: len(readings(fieldhub, sensor, "sound_volume")) == 2, what="the clip")
