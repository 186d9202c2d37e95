"""Commands to the legacy stacks' devices (docs/commands.md, "Formats"): each reaches a simulated
device of that stack in the stack's own format, and the stack's own evidence (a state echo, a
status reply, the next reading) ends it `succeeded`. A raw MQTT client on the command topic checks
the exact wire payload.

The simulators publish only when the test says (`publish_data()`, `publish_cycle()`), as the
fleet's scheduler would: the test decides when the device's next report comes.
"""

from __future__ import annotations

import random
import time
import uuid
from contextlib import ExitStack

import pytest

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.sim.fastapi_node import FastApiNode
from fieldhub.sim.iot_node import IotNode, Led
from fieldhub.sim.window_sensor import WindowSensor, window_sensor_id
from support.commands import (
    Json,
    TopicRecorder,
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


# -- FastAPI/RabbitMQ stack: {"action": ...}, success by the data message's echo -----------------


@pytest.fixture
def fastapi_node(broker: MosquittoProcess, closing: ExitStack) -> FastApiNode:
    node = FastApiNode(endpoint=parse_mqtt_url(broker.url), mac=random_mac())
    node.start()
    closing.callback(node.stop)
    assert node.wait_subscribed(MQTT_DEADLINE_S), "the node did not subscribe to its commands"
    return node


def publish_data(node: FastApiNode) -> None:
    future = node.publish_data()
    assert future is not None, "the node skipped its data message"
    future.result(MQTT_DEADLINE_S)


def test_fastapi_set_servo_is_echoed_in_the_next_data_message(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack, fastapi_node: FastApiNode
) -> None:
    node = fastapi_node
    # The sketch's node id is the MAC in upper case without colons; fieldhub's id is the MAC, and
    # the command topic must keep the node's spelling.
    assert node.device_id == node.mac.replace(":", "")
    publish_data(node)
    wait_device(fh, node.mac, presence="online", command_format="fastapi")
    wire = recorder(broker.url, node.commands_topic, closing)

    command = sent_command(fh, node.mac, {"name": "set_servo", "params": {"angle": 120}})
    assert command["device"] == node.mac
    assert command["format"] == "fastapi"
    assert command["topic"] == f"devices/{node.device_id}/commands"
    wait_until(lambda: node.actuators.servo_angle == 120, what="the servo to turn to 120")
    payload = only_payload(wire)
    assert list(payload) == ["action", "angle", "message_id", "cmd_timestamp"]
    assert payload == {
        "action": "SERVO_ANGLE",
        "angle": 120,
        "message_id": command["id"],
        "cmd_timestamp": payload["cmd_timestamp"],
    }
    assert around_now(payload["cmd_timestamp"])
    # Nothing reported yet: the command waits for the echo.
    assert get_command(fh, node.mac, command["id"])["state"] == "sent"

    publish_data(node)
    done = wait_state(fh, node.mac, command["id"], "succeeded")
    assert done["decided_by"] == "echo:servo_angle=120"
    assert done["result"] == {"servo_angle": 120.0}
    assert [step["state"] for step in done["history"]] == ["pending", "sent", "succeeded"]
    assert node.commands_applied == 1


def test_fastapi_light_on_is_echoed_as_light_state_1(
    broker: MosquittoProcess, fh: FieldhubProcess, closing: ExitStack, fastapi_node: FastApiNode
) -> None:
    node = fastapi_node
    publish_data(node)
    wait_device(fh, node.mac, presence="online", command_format="fastapi")
    wire = recorder(broker.url, node.commands_topic, closing)

    # Any spelling of the MAC names the device.
    command = sent_command(fh, node.device_id.lower(), {"name": "light_on"})
    wait_until(lambda: node.actuators.light_state, what="the light relay to switch on")
    payload = only_payload(wire)
    assert payload == {
        "action": "LIGHT_ON",
        "message_id": command["id"],
        "cmd_timestamp": payload["cmd_timestamp"],
    }
    assert around_now(payload["cmd_timestamp"])
    publish_data(node)
    done = wait_state(fh, node.mac, command["id"], "succeeded")
    assert done["decided_by"] == "echo:light_state=1"
    assert node.actuators.servo_angle == 90  # untouched


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
        "features_used": ["manual"],
    }
    assert around_now(payload["timestamp"])
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
