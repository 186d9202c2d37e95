"""Commands to the legacy stacks' devices (docs/commands.md, "Formats"): each reaches a device of
that stack in the stack's own format, and the stack's own evidence (a state echo, a status
message, the next reading) ends it as the format's rules say. A raw MQTT client on the command
topic checks the exact wire payload.

The FastAPI stack's node is played by `FirmwareNode`, a raw MQTT client that publishes the exact
objects of its firmware (IoT_Platform_Node.ino); the other stacks' by their simulators. Devices
publish only when the test says, so the test decides when the device's next report comes.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from contextlib import ExitStack
from datetime import datetime

import orjson
import pytest

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.sim.iot_node import IotNode, Led
from fieldhub.sim.window_sensor import WindowSensor, window_sensor_id
from support.commands import (
    Json,
    TopicRecorder,
    delete_command,
    device_json,
    error_code,
    get_command,
    post_command,
    recorder,
    wait_device,
    wait_state,
)
from support.fieldhub_process import FieldhubProcess, wait_until

MQTT_DEADLINE_S = 10.0

# Window node numbers must differ between this module's tests: they share one fieldhub, and a
# node number used twice finds the earlier test's device (with its extra window_position metric).
WINDOW_NODES = iter(random.sample(range(10, 100), 90))


def random_mac() -> str:
    digits = uuid.uuid4().hex[:6].upper()
    return "3C:E9:0E:" + ":".join(digits[i : i + 2] for i in range(0, 6, 2))


def sent_command(fh: FieldhubProcess, device_id: str, body: Json) -> Json:
    response = post_command(fh, device_id, body)
    assert response.status_code == 201, response.text
    command: Json = response.json()
    return command


def only_payload(wire: TopicRecorder) -> Json:
    """The one message on the command topic (the device may have it before the watcher)."""
    wait_until(wire.messages, what=f"a message on {wire.topic_filter}")
    [payload] = wire.payloads()
    return payload


def window_positions(fh: FieldhubProcess, device_id: str) -> list[Json]:
    """`window_position` readings: the sensor profile stores each control message's position."""
    response = fh.get(f"/api/v1/devices/{device_id}/readings", metric="window_position")
    rows: list[Json] = response.json()["data"] if response.status_code == 200 else []
    return rows


def around_now(epoch_s: object) -> bool:
    return isinstance(epoch_s, int) and abs(epoch_s - time.time()) < 60


# -- FastAPI/RabbitMQ stack: {"action": ...}; success by the node's data, status and uptime ------

FALLBACK_MAX_AGE_S = 300  # mqttCallback's STALE_MESSAGE_THRESHOLD_SECONDS


class FirmwareNode(TopicRecorder):
    """A raw MQTT client playing IoT_Platform_Node.ino: it takes commands on `commands` and the
    retained `commands/last` (dropping one there over 5 minutes old, as mqttCallback does), runs
    them as the handlers do and publishes what they publish (`publishStatus`), and publishes the
    sketch's exact data, heartbeat and status objects when the test says. Its data message is the
    one ArduinoJson 6 builds in `StaticJsonDocument<250>`: the document is full before
    `smart_mode`, `uptime` and `wifi_rssi`."""

    def __init__(self, url: str, mac: str) -> None:
        self.node_id = mac.replace(":", "")
        super().__init__(
            url, f"devices/{self.node_id}/commands/#", client_id=f"ESP32-{self.node_id}"
        )
        self.mac = mac
        self.url = url
        self.data_topic = f"devices/{self.node_id}/data"
        self.commands_topic = f"devices/{self.node_id}/commands"
        self.last_topic = f"{self.commands_topic}/last"
        self.status_topic = f"devices/{self.node_id}/status"
        self.servo_angle = 90
        self.states = {
            "light_state": False,
            "fan_state": False,
            "relay3_state": False,
            "relay4_state": False,
            "real_model_state": False,
        }
        self.smart_mode = True
        self.firmware_outcome = "no_update_needed"  # or "update_failed", or "restart"
        self.booted = time.monotonic() - 50.0
        self.runs: list[tuple[str, str]] = []  # (topic, action) of each command run
        self.deaf = False  # True: commands are not run (the test plays the node's answer)

    def uptime(self) -> int:
        return int((time.monotonic() - self.booted) * 1000)

    def data(self) -> None:
        body: Json = {
            "timestamp": time.strftime("%H:%M:%S"),
            "temperature": 21.5,
            "humidity": 50.2,
            "humidity_mq": 12,
            "humidity_mq_raw": 512,
            "gas_sensor": 48,
            "status": "online",
            "node_id": self.node_id,
            "servo_angle": self.servo_angle,
            **self.states,
        }
        self.publish(self.data_topic, orjson.dumps(body))

    def heartbeat(self) -> None:
        body = {"type": "heartbeat", "status": "online", "node_id": self.node_id}
        self.publish(self.data_topic, orjson.dumps({**body, "uptime": self.uptime()}))

    def status_body(self, word: str) -> bytes:
        # "unknown": getLocalTime() before NTP (the synced form is local time, UTC+5:30).
        return orjson.dumps(
            {
                "timestamp": "unknown",
                "status": word,
                "uptime": self.uptime(),
                "free_heap": 201_344,
                "wifi_rssi": -61,
                "node_id": self.node_id,
                "servo_angle": self.servo_angle,
                "gas_sensor": 48,
                "signal_strength": 55,
            }
        )

    def status(self, word: str) -> None:
        """publishStatus(word), waiting for the broker."""
        self.publish(self.data_topic, self.status_body(word))

    def will(self) -> None:
        """The retained `offline` will the broker publishes when the node drops."""
        self.publish(self.status_topic, b"offline", retain=True)

    def on_message(self, topic: str, payload: bytes) -> None:
        if self.deaf:
            return
        try:
            command = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return  # "JSON parsing failed" (an empty retained payload: a cleared fallback)
        if topic.endswith("/last") and time.time() - command.get("cmd_timestamp", 0) > 300:
            return
        action = command["action"]
        said: list[str] = []
        if action == "REBOOT":
            said.append("rebooting")
        elif action == "STATUS_REQUEST":
            said.append("online")
        elif action == "FIRMWARE_UPDATE":
            said.append("updating")
            if self.firmware_outcome != "restart":
                said.append(self.firmware_outcome)
        elif action in ("SERVO_CONTROL", "SERVO_ANGLE"):
            self.servo_angle = max(0, min(180, int(command["angle"])))
            said.append("servo_updated_wifi")
        elif action in ("LIGHT_CONTROL", "FAN_CONTROL", "REAL_MODEL_CONTROL"):
            key = {"LIGHT": "light", "FAN": "fan", "REAL_MODEL": "real_model"}[
                action.removesuffix("_CONTROL")
            ]
            self.states[f"{key}_state"] = bool(command["state"])
            said.append(f"{key}_{'on' if command['state'] else 'off'}")
        elif action == "RELAY_CONTROL":
            relay = int(command["relay"])
            metric = {1: "light_state", 2: "fan_state", 5: "real_model_state"}.get(
                relay, f"relay{relay}_state"
            )
            self.states[metric] = bool(command["state"])
            said.append(f"relay{relay}_{'on' if command['state'] else 'off'}")
        elif action == "SMART_MODE":
            self.smart_mode = bool(command["enabled"])
        # SET_LIGHT_SCHEDULE publishes nothing.
        for word in said:
            # Never wait for the PUBACK here: this is the network thread that would receive it.
            self.client.publish(self.data_topic, self.status_body(word), qos=1)
        if action == "REBOOT" or (
            action == "FIRMWARE_UPDATE" and self.firmware_outcome == "restart"
        ):
            self.booted = time.monotonic()  # ESP.restart()
        self.runs.append((topic, action))  # last: a test waiting for it sees the whole effect


@pytest.fixture
def firmware_node(
    fh: FieldhubProcess, broker: MosquittoProcess, closing: ExitStack
) -> FirmwareNode:
    """A FastAPI-stack node that connected (status online, a data message) and is known."""
    node = FirmwareNode(broker.url, random_mac()).start()
    closing.callback(node.stop)
    node.status("online")
    node.data()
    wait_device(fh, node.mac, presence="online", command_format="fastapi")
    return node


def wire_of(node: FirmwareNode, closing: ExitStack) -> TopicRecorder:
    """What fieldhub publishes to the node: its command topic and the retained fallback."""
    return recorder(node.url, f"{node.commands_topic}/#", closing)


def on_commands(wire: TopicRecorder, node: FirmwareNode) -> list[Json]:
    return [orjson.loads(p) for t, p in wire.messages() if t == node.commands_topic]


def test_fastapi_servo_is_echoed_and_the_payload_is_the_firmware_s(
    fh: FieldhubProcess, closing: ExitStack, firmware_node: FirmwareNode
) -> None:
    node = firmware_node
    wire = wire_of(node, closing)
    command = sent_command(fh, node.mac, {"name": "SERVO_ANGLE", "params": {"angle": 120}})
    assert command["device"] == node.mac
    assert (command["format"], command["timeout_s"]) == ("fastapi", 10.0)
    # The node's id is the MAC without colons, in its own spelling: the topic keeps it.
    assert command["topic"] == f"devices/{node.node_id}/commands"
    wait_until(lambda: node.servo_angle == 120, what="the servo to turn to 120")
    [payload] = wait_until(lambda: on_commands(wire, node), what="the command on the wire")
    assert list(payload) == ["action", "angle", "message_id", "cmd_timestamp"]
    assert payload == {
        "action": "SERVO_ANGLE",
        "angle": 120,
        "message_id": command["id"],
        "cmd_timestamp": payload["cmd_timestamp"],
    }
    assert around_now(payload["cmd_timestamp"])
    # handleServoAngle's own status message carries the new angle: that is the echo.
    done = wait_state(fh, node.mac, command["id"], "succeeded")
    assert done["decided_by"] == "echo:servo_angle=120"
    assert done["result"] == {"servo_angle": 120.0}
    assert [step["state"] for step in done["history"]] == ["pending", "sent", "succeeded"]
    # An online node's command does not touch the retained fallback.
    assert [t for t, _ in wire.messages()] == [node.commands_topic]
    assert node.runs == [(node.commands_topic, "SERVO_ANGLE")]


@pytest.mark.parametrize(
    ("name", "params", "decided_by"),
    [
        ("LIGHT_CONTROL", {"state": True}, "echo:light_state=1"),
        ("FAN_CONTROL", {"state": True}, "echo:fan_state=1"),
        ("RELAY_CONTROL", {"relay": 4, "state": True}, "echo:relay4_state=1"),
        ("RELAY_CONTROL", {"relay": 5, "state": True}, "echo:real_model_state=1"),
        ("REAL_MODEL_CONTROL", {"state": True}, "echo:real_model_state=1"),
        ("SMART_MODE", {"enabled": False}, "next_message"),
        ("SET_LIGHT_SCHEDULE", {"on_hour": 19, "off_hour": 5}, "next_message"),
    ],
)
def test_fastapi_switches_end_by_the_next_data_message(
    fh: FieldhubProcess,
    closing: ExitStack,
    firmware_node: FirmwareNode,
    name: str,
    params: Json,
    decided_by: str,
) -> None:
    node = firmware_node
    wire = wire_of(node, closing)
    # Any spelling of the MAC names the device.
    command = sent_command(fh, node.node_id.lower(), {"name": name, "params": params})
    [payload] = wait_until(lambda: on_commands(wire, node), what="the command on the wire")
    assert payload == {
        "action": name,
        **params,
        "message_id": command["id"],
        "cmd_timestamp": payload["cmd_timestamp"],
    }
    wait_until(lambda: node.runs, what="the node to run it")
    # The handler's status message (`light_on`...) carries no state: the data message decides.
    time.sleep(0.3)
    assert get_command(fh, node.mac, command["id"])["state"] == "sent"
    node.data()
    done = wait_state(fh, node.mac, command["id"], "succeeded")
    assert done["decided_by"] == decided_by


def test_fastapi_state_already_set_is_not_claimed_as_proof(
    fh: FieldhubProcess, closing: ExitStack, firmware_node: FirmwareNode
) -> None:
    node = firmware_node
    node.states["light_state"] = True  # switched on by hand (or smart mode) earlier
    node.data()
    wait_until(lambda: light_is(fh, node, 1.0), what="fieldhub to store the light on")
    command = sent_command(fh, node.mac, {"name": "LIGHT_CONTROL", "params": {"state": True}})
    wait_until(lambda: node.runs, what="the node to run it")
    node.data()
    done = wait_state(fh, node.mac, command["id"], "succeeded")
    assert done["decided_by"] == "echo_unchanged:light_state=1"
    assert "no proof" in done["history"][-1]["detail"]

    # The same device switched off and on again: now the echo is proof.
    off = sent_command(fh, node.mac, {"name": "LIGHT_CONTROL", "params": {"state": False}})
    wait_until(lambda: len(node.runs) == 2, what="the node to run it")
    node.data()
    assert wait_state(fh, node.mac, off["id"], "succeeded")["decided_by"] == ("echo:light_state=0")


def light_is(fh: FieldhubProcess, node: FirmwareNode, value: float) -> bool:
    body = device_json(fh, node.mac)
    metrics = {m["name"]: m for m in (body or {}).get("metrics", [])}
    light = metrics.get("light_state")
    return light is not None and light["last_value"] == value


def test_fastapi_reboot_by_its_rebooting_status(
    fh: FieldhubProcess, firmware_node: FirmwareNode
) -> None:
    node = firmware_node
    command = sent_command(fh, node.mac, {"name": "REBOOT"})
    assert command["timeout_s"] == 30.0
    done = wait_state(fh, node.mac, command["id"], "succeeded")
    assert done["decided_by"] == "status:rebooting"


def test_fastapi_reboot_by_the_uptime_reset_when_its_status_is_lost(
    fh: FieldhubProcess, broker: MosquittoProcess, closing: ExitStack
) -> None:
    node = FirmwareNode(broker.url, random_mac())
    node.start()
    closing.callback(node.stop)
    node.heartbeat()
    node.data()
    wait_device(fh, node.mac, presence="online", command_format="fastapi")
    node.deaf = True  # the test plays the restart itself
    command = sent_command(fh, node.mac, {"name": "REBOOT"})
    wait_until(node.messages, what="the command on the wire")
    wait_state(fh, node.mac, command["id"], "sent")
    node.heartbeat()  # still the old uptime
    assert get_command(fh, node.mac, command["id"])["state"] == "sent"
    node.booted = time.monotonic()  # restarted, the `rebooting` status lost
    node.status("online")
    done = wait_state(fh, node.mac, command["id"], "succeeded")
    assert done["decided_by"] == "uptime_reset"


def test_fastapi_status_request_by_the_status_message(
    fh: FieldhubProcess, firmware_node: FirmwareNode
) -> None:
    node = firmware_node
    command = sent_command(fh, node.mac, {"name": "STATUS_REQUEST"})
    done = wait_state(fh, node.mac, command["id"], "succeeded")
    assert done["decided_by"] == "status_message"
    assert node.runs == [(node.commands_topic, "STATUS_REQUEST")]


@pytest.mark.parametrize(
    ("outcome", "state", "decided_by"),
    [
        ("no_update_needed", "succeeded", "status:no_update_needed"),
        ("update_failed", "failed", "status:update_failed"),
        ("restart", "succeeded", "update_rebooted"),
    ],
)
def test_fastapi_firmware_update_by_its_outcome(
    fh: FieldhubProcess, firmware_node: FirmwareNode, outcome: str, state: str, decided_by: str
) -> None:
    node = firmware_node
    node.firmware_outcome = outcome
    url = "http://10.0.0.5:8000/firmware/node-1.2.bin"
    command = sent_command(fh, node.mac, {"name": "FIRMWARE_UPDATE", "params": {"url": url}})
    assert command["timeout_s"] == 180.0
    if outcome == "restart":
        wait_until(lambda: node.runs, what="the node to start the update")
        node.status("online")  # connectMQTT after the restart into the new image
    done = wait_state(fh, node.mac, command["id"], state)
    assert done["decided_by"] == decided_by
    assert done["error"] == ("update_failed" if state == "failed" else None)


def test_fastapi_offline_node_gets_the_retained_fallback_then_it_is_cleared(
    fh: FieldhubProcess, broker: MosquittoProcess, closing: ExitStack
) -> None:
    node = FirmwareNode(broker.url, random_mac()).start()
    closing.callback(node.stop)
    node.status("online")
    node.data()
    wait_device(fh, node.mac, presence="online", command_format="fastapi")
    node.will()  # as the broker would once the node dropped
    node.stop()
    wait_device(fh, node.mac, presence="offline")
    last = recorder(broker.url, node.last_topic, closing)

    command = sent_command(fh, node.mac, {"name": "LIGHT_CONTROL", "params": {"state": True}})
    assert command["state"] == "pending"
    wait_until(last.messages, what="the command on the retained fallback")
    [(_, retained)] = last.messages()
    payload = orjson.loads(retained)
    assert payload == {
        "action": "LIGHT_CONTROL",
        "state": True,
        "message_id": command["id"],
        "cmd_timestamp": payload["cmd_timestamp"],
    }
    assert around_now(payload["cmd_timestamp"])
    # A REBOOT would run again on every reconnect: it waits for the node, not on the fallback.
    reboot = sent_command(fh, node.mac, {"name": "REBOOT"})
    time.sleep(0.3)
    assert len(last.messages()) == 1

    # The node comes back: the broker hands it the retained command at once, before fieldhub
    # hears of it (the handler's `light_on` status is the first it hears); then fieldhub sends
    # both commands on the command topic and clears the fallback.
    node = FirmwareNode(broker.url, node.mac).start()
    closing.callback(node.stop)
    wait_until(lambda: node.runs, what="the node to run the retained command")
    assert node.runs[0] == (node.last_topic, "LIGHT_CONTROL")
    assert node.states["light_state"] is True
    node.status("online")  # connectMQTT's own
    wait_until(lambda: len(last.messages()) == 2, what="the fallback to be cleared")
    assert last.messages()[1][1] == b""
    assert get_command(fh, node.mac, command["id"])["state"] in ("sent", "succeeded")
    node.data()
    done = wait_state(fh, node.mac, command["id"], "succeeded")
    assert done["decided_by"] == "echo:light_state=1"
    assert wait_state(fh, node.mac, reboot["id"], "succeeded")["decided_by"] == "status:rebooting"
    # Run twice (the fallback, then the command topic): harmless for a state.
    assert node.runs == [
        (node.last_topic, "LIGHT_CONTROL"),
        (node.commands_topic, "LIGHT_CONTROL"),
        (node.commands_topic, "REBOOT"),
    ]
    # Nothing is left retained for a later reconnect.
    late = recorder(broker.url, node.last_topic, closing)
    time.sleep(0.5)
    assert late.messages() == []


def test_fastapi_fallback_of_a_cancelled_command_is_cleared(
    fh: FieldhubProcess, broker: MosquittoProcess, closing: ExitStack
) -> None:
    node = FirmwareNode(broker.url, random_mac()).start()
    closing.callback(node.stop)
    node.data()
    wait_device(fh, node.mac, presence="online", command_format="fastapi")
    node.will()  # as the broker would once the node dropped
    node.stop()
    wait_device(fh, node.mac, presence="offline")
    last = recorder(broker.url, node.last_topic, closing)
    command = sent_command(fh, node.mac, {"name": "FAN_CONTROL", "params": {"state": True}})
    wait_until(last.messages, what="the command on the retained fallback")
    response = delete_command(fh, node.mac, command["id"])
    assert response.status_code == 200, response.text
    wait_until(lambda: len(last.messages()) == 2, what="the fallback to be cleared")
    assert last.messages()[1][1] == b""


# -- Raspberry Pi/Mosquitto stack: {"command","params"}, success by the status reply -------------


def test_iot_node_set_led_is_confirmed_by_its_status_reply(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    topic_id = f"{uuid.uuid4().int % 90 + 10:02d}"
    node = IotNode(endpoint=parse_mqtt_url(broker.url), topic_id=topic_id)
    node.start()
    closing.callback(node.stop)
    assert node.wait_subscribed(MQTT_DEADLINE_S)
    wire = recorder(broker.url, node.command_topic, closing)
    # Connecting publishes its retained status: the node is known, online, commandable.
    wait_device(fh, topic_id, presence="online", command_format="iot-node")

    # Refused by fieldhub before anything is sent.
    for params in ({"state": "dim"}, {"brightness": 256}, {}, {"state": "on", "colour": "red"}):
        refused = post_command(fh, topic_id, {"name": "set_led", "params": params})
        assert refused.status_code == 422, refused.text
        assert error_code(refused) == "invalid_params"
    unknown = post_command(fh, topic_id, {"name": "reboot"})
    assert (unknown.status_code, error_code(unknown)) == (422, "unknown_command")

    params = {"state": "on", "brightness": 128}
    command = sent_command(fh, topic_id, {"name": "set_led", "params": params})
    assert command["topic"] == f"iot/node/{topic_id}/command"
    done = wait_state(fh, topic_id, command["id"], "succeeded")
    assert done["decided_by"] == "status_reply"
    assert done["error"] is None
    assert node.led == Led("on", 128)
    assert only_payload(wire) == {"command": "set_led", "params": params}


# -- Go/ClickHouse window-control stack: the ML service's control message, success by the next
# reading after delivery ---------------------------------------------------------------------


def test_window_sensor_set_window_succeeds_on_the_next_reading(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = window_sensor_id(next(WINDOW_NODES))
    sensor = WindowSensor(endpoint=parse_mqtt_url(broker.url), device_id=device_id)
    sensor.start()
    closing.callback(sensor.stop)
    assert sensor.wait_subscribed(MQTT_DEADLINE_S)
    wire = recorder(broker.url, sensor.control_topic, closing)
    assert len(sensor.publish_cycle()) == 3
    wait_device(fh, device_id, presence="online", command_format="sensor")

    command = sent_command(fh, device_id, {"name": "set_window", "params": {"position": 30}})
    # The stack reports every 10 s: the default timeout covers a period and more.
    assert command["timeout_s"] == 30.0
    assert command["topic"] == f"window/{device_id}/control"
    wait_until(lambda: sensor.window_target == 30.0, what="the window motor to head for 30 %")
    payload = only_payload(wire)
    assert list(payload) == ["device_id", "timestamp", "position", "confidence", "features_used"]
    assert payload == {
        "device_id": device_id,
        "timestamp": payload["timestamp"],
        "position": 30,
        "confidence": 1.0,
        "features_used": {},
    }
    # The backbone decodes it into models.InferenceResponse: Go's time.Time needs RFC 3339, and
    # features_used a JSON object (its map[string]interface{}).
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", payload["timestamp"])
    assert around_now(int(datetime.fromisoformat(payload["timestamp"]).timestamp()))
    # fieldhub also reads the control topic (the stack's ML service publishes there): its own
    # command must not count as the device's next message.
    wait_until(
        lambda: window_positions(fh, device_id), what="fieldhub to store its own control message"
    )
    assert get_command(fh, device_id, command["id"])["state"] == "sent"

    for future in sensor.publish_cycle():
        future.result(MQTT_DEADLINE_S)
    done = wait_state(fh, device_id, command["id"], "succeeded", timeout_s=25)
    assert done["decided_by"] == "next_message"
    assert sensor.controls_applied == 1


def test_window_sensor_is_not_kept_alive_by_fieldhubs_own_commands(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack
) -> None:
    device_id = window_sensor_id(next(WINDOW_NODES))
    sensor = WindowSensor(endpoint=parse_mqtt_url(broker.url), device_id=device_id)
    sensor.start()
    closing.callback(sensor.stop)
    assert sensor.wait_subscribed(MQTT_DEADLINE_S)
    for future in sensor.publish_cycle():
        future.result(MQTT_DEADLINE_S)
    wait_device(fh, device_id, presence="online", command_format="sensor")
    before = wait_until(
        lambda: (body := device_json(fh, device_id)) and len(body["metrics"]) == 3 and body,
        what="the cycle's three readings",
    )
    sensor.crash()  # the node dies: no will in this stack, it just goes quiet

    command = sent_command(fh, device_id, {"name": "set_window", "params": {"position": 40}})
    wait_until(
        lambda: window_positions(fh, device_id), what="fieldhub to store its own control message"
    )
    after = fh.get(f"/api/v1/devices/{device_id}").json()
    assert get_command(fh, device_id, command["id"])["state"] == "sent"
    assert after["last_seen"] == before["last_seen"]
