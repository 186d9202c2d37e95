"""The simulator's legacy-stack kinds on a real Mosquitto, and a mixed fleet in a real fieldhub.

Each kind is checked on the wire as its stack's subscribers see it: topic, QoS, retain flag (the
observer subscribes with MQTT 5 retain-as-published, so a live message keeps the flag it was
published with), commands obeyed, and the last will after an unclean drop.
"""

from __future__ import annotations

import base64
import io
import random
import threading
import time
import uuid
import wave
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import MqttEndpoint, parse_mqtt_url
from fieldhub.sim import FastApiNode, IotNode, WindowSensor, mac_for_index, start_sim_in_background
from support.fieldhub_process import FieldhubProcess
from support.mqtt import connected_publisher, publish_all
from support.waiting import wait_until

# Loopback answers in milliseconds; this only bounds how long a broken test hangs.
DEADLINE_S = 10.0


@dataclass(frozen=True, slots=True)
class Seen:
    """One message as delivered: topic, payload, QoS and the retain flag it was published with."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class Observer:
    """An MQTT 5 subscriber with retain-as-published, recording everything it receives."""

    def __init__(self, endpoint: MqttEndpoint, filters: Sequence[str]) -> None:
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._granted = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"sim-mixed-observer-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        self._client.on_connect = lambda client, *_: client.subscribe(
            [(topic, options) for topic in filters]
        )
        self._client.on_subscribe = lambda *_: self._granted.set()
        self._client.on_message = self._on_message
        self._client.connect(endpoint.host, endpoint.port)
        self._client.loop_start()
        assert self._granted.wait(DEADLINE_S), "the observer's subscription was not granted"

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self._seen.append(Seen(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def on(self, topic: str) -> list[Seen]:
        """Messages received on `topic` so far, in arrival order."""
        with self._lock:
            return [seen for seen in self._seen if seen.topic == topic]

    def topics(self) -> set[str]:
        """Every topic a message arrived on."""
        with self._lock:
            return {seen.topic for seen in self._seen}

    def next_on(self, topic: str, after: int, what: str) -> Seen:
        """Wait for message number `after` (0-based) on `topic`."""
        return wait_until(
            lambda: self.on(topic)[after] if len(self.on(topic)) > after else None, what=what
        )

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def broker(mosquitto: MosquittoProcess) -> MqttEndpoint:
    """The session broker; every test below uses device ids of its own on it."""
    return parse_mqtt_url(mosquitto.url)


@pytest.fixture
def observe(broker: MqttEndpoint) -> Iterator[Callable[[Sequence[str]], Observer]]:
    """Start observers on the session broker; all stop at teardown."""
    started: list[Observer] = []

    def make(filters: Sequence[str]) -> Observer:
        observer = Observer(broker, filters)
        started.append(observer)
        return observer

    yield make
    for observer in started:
        observer.stop()


def command(broker: MqttEndpoint, topic: str, body: dict[str, object]) -> None:
    """Publish one command QoS 1, as the stack's backend does, and wait for the PUBACK."""
    publisher = connected_publisher(f"mqtt://{broker.host}:{broker.port}")
    try:
        publish_all(publisher, [(topic, orjson.dumps(body))])
    finally:
        publisher.stop()


def status_messages(watcher: Observer, topic: str) -> list[str]:
    """`status` of every status message (those with `free_heap`) on the data topic, in order."""
    found = []
    for seen in watcher.on(topic):
        body = orjson.loads(seen.payload)
        if "free_heap" in body:
            found.append(body["status"])
    return found


def test_fastapi_node_on_the_wire(
    broker: MqttEndpoint, observe: Callable[[Sequence[str]], Observer]
) -> None:
    """The firmware's connect sequence, everything QoS 0 unretained on the data topic, commands
    on both command topics, the retained will on a lost link, and a REBOOT on its persistent
    session (a command sent while it is down arrives after it is back)."""
    node = FastApiNode(
        endpoint=broker,
        mac=mac_for_index(random.randrange(0x200000, 0xFFFFFF)),
        boot_s=0.5,
    )
    watcher = observe([f"devices/{node.device_id}/#"])
    node.start()
    try:
        assert node.wait_subscribed(DEADLINE_S)
        hello = watcher.next_on(node.data_topic, 0, "the status message sent on connect")
        assert (hello.qos, hello.retain) == (0, False)
        status = orjson.loads(hello.payload)
        assert list(status) == [
            "timestamp",
            "status",
            "uptime",
            "free_heap",
            "wifi_rssi",
            "node_id",
            "servo_angle",
            "gas_sensor",
            "signal_strength",
        ]
        assert (status["status"], status["node_id"]) == ("online", node.device_id)
        first = orjson.loads(watcher.next_on(node.data_topic, 1, "the first data").payload)
        assert list(first)[-1] == "real_model_state"
        assert (first["servo_angle"], first["light_state"], first["fan_state"]) == (
            90,
            False,
            False,
        )
        ping = watcher.next_on(node.data_topic, 2, "the test ping")
        assert orjson.loads(ping.payload) == {"test": "ping", "node_id": node.device_id}
        assert node.publish_heartbeat() is not None
        beat = orjson.loads(watcher.next_on(node.data_topic, 3, "a heartbeat").payload)
        assert list(beat) == ["type", "status", "node_id", "uptime"]

        command(broker, node.commands_topic, {"action": "SMART_MODE", "enabled": False})
        command(
            broker,
            node.commands_topic,
            {
                "action": "SERVO_ANGLE",
                "angle": 135,
                "message_id": str(uuid.uuid4()),
                "cmd_timestamp": int(time.time()),
            },
        )
        command(broker, node.last_topic, {"action": "LIGHT_CONTROL", "state": True})
        wait_until(lambda: node.commands_applied == 3, what="the three commands to arrive")
        # The node publishes each status message right after applying its command (QoS 0, so
        # the observer may see it a moment later): wait for both before counting messages.
        wait_until(
            lambda: (
                status_messages(watcher, node.data_topic)[-2:] == ["servo_updated_wifi", "light_on"]
            ),
            what="the servo and light status messages",
        )
        seen = len(watcher.on(node.data_topic))
        assert node.publish_data() is not None
        echoed = orjson.loads(watcher.next_on(node.data_topic, seen, "the next data").payload)
        assert (echoed["servo_angle"], echoed["light_state"]) == (135, True)
        # Nothing but the will ever goes to the status topic; no acknowledgement topic exists.
        assert watcher.on(node.status_topic) == []

        # REBOOT: `rebooting`, then the connection drops without DISCONNECT (the will), and the
        # node boots with its defaults and resumes its session.
        command(broker, node.commands_topic, {"action": "REBOOT"})
        will = watcher.next_on(node.status_topic, 0, "the will after the restart")
        assert (will.payload, will.qos, will.retain) == (b"offline", 1, True)
        assert "rebooting" in status_messages(watcher, node.data_topic)
        command(broker, node.commands_topic, {"action": "FAN_CONTROL", "state": True})
        wait_until(lambda: node.boots == 2 and node.connected, what="the node back")
        wait_until(lambda: node.actuators.fan_state, what="the command queued while down")
        assert node.actuators.servo_angle == 90  # back to its default

        node.crash()
        wait_until(lambda: len(watcher.on(node.status_topic)) == 2, what="the will after the crash")
    finally:
        node.close()
        # The persistent session outlives the node on the broker: end it.
        ender = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=node.client_id,
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        ender.connect(broker.host, broker.port)
        ender.disconnect()


def test_iot_node_on_the_wire(
    broker: MqttEndpoint, observe: Callable[[Sequence[str]], Observer]
) -> None:
    """Status on connect (retained), telemetry QoS 0, set_led answered by a status, JSON will."""
    node = IotNode(endpoint=broker, topic_id=f"t{uuid.uuid4().hex[:8]}")
    watcher = observe([f"iot/node/{node.device_id}/+"])
    node.start()
    try:
        assert node.wait_subscribed(DEADLINE_S)
        hello = watcher.next_on(node.status_topic, 0, "the status sent on connect")
        assert (hello.qos, hello.retain) == (0, True)
        assert orjson.loads(hello.payload)["led"] == {"state": "off", "brightness": 0}

        assert node.publish_telemetry() is not None
        telemetry = watcher.next_on(node.telemetry_topic, 0, "telemetry")
        assert (telemetry.qos, telemetry.retain) == (0, False)
        body = orjson.loads(telemetry.payload)
        assert list(body) == ["node_id", "timestamp", "sensors", "wifi_rssi", "uptime"]
        assert body["node_id"] == node.node_id
        assert abs(body["timestamp"] - time.time()) < 60

        command(
            broker,
            node.command_topic,
            {"command": "set_led", "params": {"state": "on", "brightness": 128}},
        )
        reply = watcher.next_on(node.status_topic, 1, "the status reply to set_led")
        assert (reply.qos, reply.retain) == (0, True)
        status = orjson.loads(reply.payload)
        assert status["led"] == {"state": "on", "brightness": 128}
        assert (status["last_command"], status["result"]) == ("set_led", "ok")

        node.crash()
        will = watcher.next_on(node.status_topic, 2, "the will")
        assert (will.qos, will.retain) == (1, True)
        assert orjson.loads(will.payload) == {"node_id": node.node_id, "status": "offline"}
    finally:
        node.close()


def test_window_sensor_on_the_wire(
    broker: MqttEndpoint, observe: Callable[[Sequence[str]], Observer]
) -> None:
    """Numbers as text and a WAV clip, QoS 0 not retained; window control moves the window."""
    sensor = WindowSensor(endpoint=broker, device_id=f"window-t{uuid.uuid4().hex[:8]}", seed=9)
    watcher = observe([f"sensor/{sensor.device_id}/+"])
    sensor.start()
    try:
        assert sensor.wait_subscribed(DEADLINE_S)
        assert len(sensor.publish_cycle()) == 3
        temperature = watcher.next_on(sensor.temperature_topic, 0, "temperature")
        humidity = watcher.next_on(sensor.humidity_topic, 0, "humidity")
        audio = watcher.next_on(sensor.audio_topic, 0, "audio")
        for seen in (temperature, humidity, audio):
            assert (seen.qos, seen.retain) == (0, False)
        assert float(temperature.payload.decode()) == pytest.approx(21, abs=4)
        assert float(humidity.payload.decode()) == pytest.approx(50, abs=10)
        clip = orjson.loads(audio.payload)
        assert (clip["sample_rate"], clip["duration"]) == (16_000, 2.0)
        with wave.open(io.BytesIO(base64.b64decode(clip["data"]))) as wav:
            assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16_000)
            assert wav.getnframes() == 32_000

        command(
            broker,
            sensor.control_topic,
            {
                "device_id": sensor.device_id,
                "timestamp": int(time.time()),
                "position": 75,
                "confidence": 0.9,
                "features_used": ["temperature", "humidity", "sound_volume"],
            },
        )
        wait_until(lambda: sensor.window_target == 75, what="the window to head for 75 %")
    finally:
        sensor.close()


def test_mixed_fleet_devices_show_up_in_fieldhub(
    mosquitto_factory: Callable[..., MosquittoProcess], tmp_path: Path
) -> None:
    """A mixed fleet's native, readings, fastapi and iot-node devices appear in a real fieldhub.

    The `sensor` kind publishes too, but whether fieldhub stores it is that profile's business.
    """
    broker = mosquitto_factory()  # a broker of its own: the fleet's ids are fixed
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url).start()
    thread, stop = start_sim_in_background(
        endpoint=parse_mqtt_url(broker.url),
        profile="mixed",
        devices=5,
        rate_hz=2.0,
        log=lambda line: None,
    )
    try:
        expected = {
            "sim-0001": "native",
            "3C:E9:0E:00:00:01": "readings",
            # The fastapi node's `3CE90E100001` canonicalised; its topics are native aliases.
            "3C:E9:0E:10:00:01": "native",
            "01": "iot-node",
        }

        def known() -> dict[str, str]:
            found = {}
            for device_id in expected:
                response = fh.get(f"/api/v1/devices/{device_id}")
                if response.status_code == 200:
                    found[device_id] = response.json()["profile"]
            return found if found == expected else {}

        wait_until(known, timeout_s=30, what="the mixed fleet's devices in fieldhub")

        def fastapi_detail() -> dict[str, object] | None:
            body: dict[str, object] = fh.get("/api/v1/devices/3C:E9:0E:10:00:01").json()
            metrics = body.get("metrics")
            return body if isinstance(metrics, list) and "servo_angle" in str(metrics) else None

        detail = wait_until(fastapi_detail, what="the fastapi node's readings")
        attributes = detail["attributes"]
        assert isinstance(attributes, dict)
        assert attributes["node_id"] == "3CE90E100001"
    finally:
        stop.set()
        thread.join(DEADLINE_S)
        assert fh.stop() == 0
    assert not thread.is_alive()
