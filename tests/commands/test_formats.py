"""Each stack's command format: what it accepts, the bytes it sends, what proves success."""

from __future__ import annotations

import orjson
import pytest

from fieldhub.commands.formats import (
    FORMATS,
    CommandError,
    Echo,
    NextMessage,
    Outgoing,
    StatusReply,
)
from fieldhub.commands.ratelimit import RateLimiter
from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.profiles import select_profiles
from fieldhub.sim.fastapi_node import Actuators, apply_fastapi_command
from fieldhub.sim.iot_node import Led, apply_iot_node_command
from fieldhub.sim.window_sensor import parse_window_control
from fieldhub_node.commands import parse as parse_native
from support.store_rows import T0, msg

DECODER = MessageDecoder(select_profiles(["native", "iot-node", "sensor"]))


def encode(
    fmt: str, name: str, params: dict[str, object], topic_id: str = "n1"
) -> dict[str, object]:
    payload: dict[str, object] = orjson.loads(
        FORMATS[fmt].encode(Outgoing("c-1", name, params, topic_id))
    )
    return payload


@pytest.mark.parametrize(
    ("fmt", "name", "params", "code"),
    [
        ("native", "set_window", {"position": 101}, "invalid_params"),
        ("native", "set_window", {"position": True}, "invalid_params"),
        ("native", "set_window", {}, "invalid_params"),
        ("native", "set_interval", {"seconds": 0}, "invalid_params"),
        ("native", "ping", {"extra": 1}, "invalid_params"),
        ("fastapi", "set_servo", {"angle": 90.5}, "invalid_params"),
        ("fastapi", "set_servo", {"angle": 181}, "invalid_params"),
        ("fastapi", "reboot", {}, "unknown_command"),
        ("iot-node", "set_led", {}, "invalid_params"),
        ("iot-node", "set_led", {"state": "dim"}, "invalid_params"),
        ("iot-node", "set_led", {"brightness": 256}, "invalid_params"),
        ("sensor", "set_window", {"position": -1}, "invalid_params"),
        ("sensor", "ping", {}, "unknown_command"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(
    fmt: str, name: str, params: dict[str, object], code: str
) -> None:
    with pytest.raises(CommandError) as refused:
        FORMATS[fmt].validate(name, params)
    assert refused.value.code == code
    assert name in refused.value.message


def test_native_passes_unknown_names_through_for_the_device_to_answer() -> None:
    FORMATS["native"].validate("calibrate", {"anything": [1, 2]})


def test_native_payload_is_what_the_firmware_parses() -> None:
    payload = FORMATS["native"].encode(Outgoing("c-1", "set_window", {"position": 40}, "n1"))
    assert parse_native(payload) == ("c-1", "set_window", {"position": 40}, None)
    assert FORMATS["native"].topic("n1") == "devices/n1/commands"


def test_native_size_limit_is_the_firmware_s() -> None:
    with pytest.raises(CommandError) as refused:
        FORMATS["native"].encode(Outgoing("c-1", "note", {"text": "x" * 3000}, "n1"))
    assert refused.value.code == "payload_too_large"


@pytest.mark.parametrize("value", [2**80, "\ud8fe"])
def test_params_json_cannot_carry_are_invalid(value: object) -> None:
    """Integers beyond 64 bits and lone surrogates: orjson refuses them, and so would a device."""
    with pytest.raises(CommandError) as refused:
        FORMATS["native"].encode(Outgoing("c-1", "note", {"x": value}, "n1"))
    assert refused.value.code == "invalid_params"


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("set_servo", {"angle": 120}, Actuators(servo_angle=120)),
        ("light_on", {}, Actuators(light_state=True)),
        ("fan_on", {}, Actuators(fan_state=True)),
        ("fan_off", {}, Actuators()),
    ],
)
def test_fastapi_payload_drives_the_sketch(
    name: str, params: dict[str, object], expected: Actuators
) -> None:
    """The stack's sketch (as the simulator models it) obeys what fieldhub sends."""
    fmt = FORMATS["fastapi"]
    payload = fmt.encode(Outgoing("c-1", name, params, "3CE90E100001"))
    body = orjson.loads(payload)
    assert body["message_id"] == "c-1"
    assert isinstance(body["cmd_timestamp"], int)
    assert apply_fastapi_command(Actuators(), payload) == expected
    assert fmt.topic("3CE90E100001") == "devices/3CE90E100001/commands"


def test_iot_node_payload_drives_the_node() -> None:
    payload = FORMATS["iot-node"].encode(Outgoing("c-1", "set_led", {"state": "on"}, "01"))
    assert orjson.loads(payload) == {"command": "set_led", "params": {"state": "on"}}
    outcome = apply_iot_node_command(Led(), payload)
    assert outcome is not None
    assert outcome[0].state == "on"
    assert FORMATS["iot-node"].topic("01") == "iot/node/01/command"


def test_sensor_payload_moves_the_window() -> None:
    body = encode("sensor", "set_window", {"position": 30}, "window-01")
    assert body["device_id"] == "window-01"
    assert (body["position"], body["confidence"]) == (30, 1.0)
    assert parse_window_control(orjson.dumps(body)) == 30.0
    assert FORMATS["sensor"].topic_id_of("window/window-01/control") == "window-01"


def test_echo_needs_the_value_asked_for() -> None:
    rule = FORMATS["fastapi"].expectation("set_servo", {"angle": 90})
    assert rule == Echo("servo_angle", 90.0)
    assert rule.check(msg("n1", T0, [("servo_angle", T0, 45.0)])) is None
    verdict = rule.check(msg("n1", T0, [("servo_angle", T0, 90.0)]))
    assert verdict is not None
    assert (verdict.state, verdict.decided_by) == (CommandState.SUCCEEDED, "echo:servo_angle=90")


def test_status_reply_reads_result_and_error() -> None:
    rule = StatusReply("set_led")
    assert rule.check(msg("01", T0, attributes={"last_command": "other", "result": "ok"})) is None
    ok = rule.check(msg("01", T0, attributes={"last_command": "set_led", "result": "ok"}))
    assert ok is not None
    assert ok.state is CommandState.SUCCEEDED
    failed = rule.check(
        msg("01", T0, attributes={"last_command": "set_led", "result": "error", "error": "bad"})
    )
    assert failed is not None
    assert (failed.state, failed.error) == (CommandState.FAILED, "bad")


def test_status_reply_matches_the_node_s_decoded_status() -> None:
    """The rule reads the attributes the iot-node status decoder really produces."""
    decoded = DECODER.decode(
        "iot/node/01/status",
        b'{"node_id":"node_01","status":"online","last_command":"set_led","result":"ok"}',
        T0,
    )
    verdict = StatusReply("set_led").check(decoded)  # type: ignore[arg-type]
    assert verdict is not None
    assert verdict.state is CommandState.SUCCEEDED


def test_next_message_ignores_our_own_control_message() -> None:
    """`window/{id}/control` is ingested too (the ML service's orders): seeing our own command
    there proves nothing; a reading the device published does."""
    own = DECODER.decode("window/window-01/control", b'{"position": 30, "confidence": 1.0}', T0)
    reading = DECODER.decode("sensor/window-01/temperature", b"21.5", T0)
    assert NextMessage().check(own) is None  # type: ignore[arg-type]
    verdict = NextMessage().check(reading)  # type: ignore[arg-type]
    assert verdict is not None
    assert verdict.decided_by == "next_message"


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate_per_s=2.0, burst=3)
    assert [limiter.take("d", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("d", now=0.0)
    assert wait == pytest.approx(0.5)
    assert limiter.retry_after_s(wait) == 1
    assert limiter.take("other", now=0.0) == 0.0  # per device
    assert limiter.take("d", now=0.5) == 0.0
    assert limiter.take("d", now=0.5) > 0
