"""Each stack's command format: what it accepts, the bytes it sends, what proves success."""

from __future__ import annotations

import orjson
import pytest

from fieldhub.commands.formats import (
    FASTAPI_JSON_DOC_BYTES,
    FORMATS,
    CommandError,
    Expectation,
    FirmwareOutcome,
    NextMessage,
    Outgoing,
    Restart,
    StateEcho,
    StatusAnswer,
    StatusReply,
    Verdict,
    arduinojson_bytes,
)
from fieldhub.commands.ratelimit import RateLimiter
from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.messages import Decoded
from fieldhub.protocol.profiles import select_profiles
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
        ("fastapi", "SERVO_ANGLE", {"angle": 90.5}, "invalid_params"),
        ("fastapi", "SERVO_ANGLE", {"angle": 181}, "invalid_params"),
        ("fastapi", "SERVO_ANGLE", {"angle": -1}, "invalid_params"),
        ("fastapi", "SERVO_ANGLE", {"angle": "90"}, "invalid_params"),
        ("fastapi", "SERVO_ANGLE", {}, "invalid_params"),
        ("fastapi", "SERVO_CONTROL", {"angle": 90, "speed": 1}, "invalid_params"),
        ("fastapi", "LIGHT_CONTROL", {}, "invalid_params"),
        ("fastapi", "LIGHT_CONTROL", {"state": 1}, "invalid_params"),
        ("fastapi", "LIGHT_CONTROL", {"state": "on"}, "invalid_params"),
        ("fastapi", "FAN_CONTROL", {"state": None}, "invalid_params"),
        ("fastapi", "RELAY_CONTROL", {"relay": 0, "state": True}, "invalid_params"),
        ("fastapi", "RELAY_CONTROL", {"relay": 6, "state": True}, "invalid_params"),
        ("fastapi", "RELAY_CONTROL", {"relay": 3}, "invalid_params"),
        ("fastapi", "REAL_MODEL_CONTROL", {"state": "true"}, "invalid_params"),
        ("fastapi", "SMART_MODE", {"state": True}, "invalid_params"),
        ("fastapi", "SET_LIGHT_SCHEDULE", {"on_hour": 24, "off_hour": 6}, "invalid_params"),
        ("fastapi", "SET_LIGHT_SCHEDULE", {"on_hour": 18}, "invalid_params"),
        ("fastapi", "REBOOT", {"delay": 2}, "invalid_params"),
        ("fastapi", "STATUS_REQUEST", {"x": 1}, "invalid_params"),
        ("fastapi", "FIRMWARE_UPDATE", {}, "invalid_params"),
        ("fastapi", "FIRMWARE_UPDATE", {"url": "https://h/fw.bin"}, "invalid_params"),
        ("fastapi", "FIRMWARE_UPDATE", {"url": "http:// h/fw.bin"}, "invalid_params"),
        ("fastapi", "reboot", {}, "unknown_command"),
        ("fastapi", "LIGHT_ON", {}, "unknown_command"),
        ("fastapi", "light_on", {}, "unknown_command"),
        ("fastapi", "set_servo", {"angle": 90}, "unknown_command"),
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


# -- FastAPI/RabbitMQ stack (firmware/IoT_Platform_Node/IoT_Platform_Node.ino) -------------------

MAC = "3CE90E100001"
AT_US = 1_764_914_400_123_456  # cmd_timestamp 1764914400


def fastapi_bytes(name: str, params: dict[str, object], command_id: str = "c-1") -> bytes:
    return FORMATS["fastapi"].encode(Outgoing(command_id, name, params, MAC, AT_US))


STAMP = b'"message_id":"c-1","cmd_timestamp":1764914400}'


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("SERVO_ANGLE", {"angle": 90}, b'{"action":"SERVO_ANGLE","angle":90,'),
        ("SERVO_CONTROL", {"angle": 0}, b'{"action":"SERVO_CONTROL","angle":0,'),
        ("LIGHT_CONTROL", {"state": True}, b'{"action":"LIGHT_CONTROL","state":true,'),
        ("FAN_CONTROL", {"state": False}, b'{"action":"FAN_CONTROL","state":false,'),
        (
            "RELAY_CONTROL",
            {"state": True, "relay": 3},
            b'{"action":"RELAY_CONTROL","relay":3,"state":true,',
        ),
        (
            "REAL_MODEL_CONTROL",
            {"state": True},
            b'{"action":"REAL_MODEL_CONTROL","state":true,',
        ),
        ("SMART_MODE", {"enabled": False}, b'{"action":"SMART_MODE","enabled":false,'),
        (
            "SET_LIGHT_SCHEDULE",
            {"off_hour": 6, "on_hour": 18},
            b'{"action":"SET_LIGHT_SCHEDULE","on_hour":18,"off_hour":6,',
        ),
        ("REBOOT", {}, b'{"action":"REBOOT",'),
        ("STATUS_REQUEST", {}, b'{"action":"STATUS_REQUEST",'),
        (
            "FIRMWARE_UPDATE",
            {"url": "http://10.0.0.5:8000/fw/node.bin"},
            b'{"action":"FIRMWARE_UPDATE","url":"http://10.0.0.5:8000/fw/node.bin",',
        ),
    ],
)
def test_fastapi_payload_is_the_firmware_s_action(
    name: str, params: dict[str, object], expected: bytes
) -> None:
    """mqttCallback reads `action` and the handler's fields by these names and types (JSON
    booleans for `bool state = doc["state"]`); the stamp follows, as the stack's backend sends."""
    fmt = FORMATS["fastapi"]
    fmt.validate(name, params)
    assert fastapi_bytes(name, params) == expected + STAMP
    assert fmt.topic(MAC) == f"devices/{MAC}/commands"


def test_fastapi_every_firmware_action_is_known() -> None:
    assert set(FORMATS["fastapi"].commands) == {
        "SERVO_CONTROL",
        "SERVO_ANGLE",
        "LIGHT_CONTROL",
        "FAN_CONTROL",
        "RELAY_CONTROL",
        "REAL_MODEL_CONTROL",
        "SMART_MODE",
        "SET_LIGHT_SCHEDULE",
        "REBOOT",
        "STATUS_REQUEST",
        "FIRMWARE_UPDATE",
    }


def test_fastapi_timeouts_cover_a_flash_and_a_restart() -> None:
    fmt = FORMATS["fastapi"]
    assert fmt.timeout_for("LIGHT_CONTROL") == 10.0
    assert fmt.timeout_for("REBOOT") == 30.0
    assert fmt.timeout_for("FIRMWARE_UPDATE") == 180.0


def test_fastapi_refuses_what_the_node_s_json_document_cannot_hold() -> None:
    """StaticJsonDocument<256>: a longer command fails to parse on the node and is dropped."""
    url = ("http://h/" + "f" * 200)[:200]
    FORMATS["fastapi"].validate("FIRMWARE_UPDATE", {"url": url})  # the schema takes it
    with pytest.raises(CommandError) as refused:
        fastapi_bytes("FIRMWARE_UPDATE", {"url": url})
    assert refused.value.code == "payload_too_large"
    # The longest id fieldhub takes still fits a relay command.
    body = orjson.loads(fastapi_bytes("RELAY_CONTROL", {"relay": 5, "state": True}, "i" * 64))
    assert arduinojson_bytes(body) <= FASTAPI_JSON_DOC_BYTES
    # 4 members of 16 bytes, the keys and the string values with their NULs.
    assert arduinojson_bytes({"action": "REBOOT", "message_id": "c-1", "cmd_timestamp": 1}) == (
        3 * 16 + 7 + 7 + 11 + 4 + 14
    )


def test_fastapi_fallback_only_for_state_commands() -> None:
    """A retained REBOOT or FIRMWARE_UPDATE would run again on every reconnect for 5 minutes."""
    fmt = FORMATS["fastapi"]
    assert fmt.fallback_topic(MAC, "LIGHT_CONTROL") == f"devices/{MAC}/commands/last"
    assert fmt.fallback_topic(MAC, "SET_LIGHT_SCHEDULE") == f"devices/{MAC}/commands/last"
    for name in ("REBOOT", "FIRMWARE_UPDATE", "STATUS_REQUEST"):
        assert fmt.fallback_topic(MAC, name) is None
    assert FORMATS["native"].fallback_topic("n1", "reboot") is None


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


def fastapi_rule(
    name: str, params: dict[str, object], state: dict[str, float] | None = None
) -> Expectation:
    """The rule the service builds, given the device's latest values when it was accepted."""
    fmt = FORMATS["fastapi"]
    wanted = fmt.state_metrics(name, params)
    rule = fmt.expectation(name, params, {k: v for k, v in (state or {}).items() if k in wanted})
    assert rule is not None
    return rule


def data(*readings: tuple[str, float], **attributes: str) -> Decoded:
    """A data-topic message as the decoding contract gives it: 0/1 states, `uptime_ms`."""
    return msg(MAC, T0, [(m, T0, v) for m, v in readings], attributes=attributes)


def decided(verdict: Verdict | None) -> tuple[CommandState, str]:
    assert verdict is not None
    return verdict.state, verdict.decided_by


@pytest.mark.parametrize(
    ("name", "params", "metric", "value"),
    [
        ("SERVO_ANGLE", {"angle": 90}, "servo_angle", 90.0),
        ("SERVO_CONTROL", {"angle": 15}, "servo_angle", 15.0),
        ("LIGHT_CONTROL", {"state": True}, "light_state", 1.0),
        ("FAN_CONTROL", {"state": False}, "fan_state", 0.0),
        ("RELAY_CONTROL", {"relay": 1, "state": True}, "light_state", 1.0),
        ("RELAY_CONTROL", {"relay": 2, "state": True}, "fan_state", 1.0),
        ("RELAY_CONTROL", {"relay": 3, "state": True}, "relay3_state", 1.0),
        ("RELAY_CONTROL", {"relay": 4, "state": False}, "relay4_state", 0.0),
        ("RELAY_CONTROL", {"relay": 5, "state": True}, "real_model_state", 1.0),
        ("REAL_MODEL_CONTROL", {"state": True}, "real_model_state", 1.0),
        ("SMART_MODE", {"enabled": False}, "smart_mode", 0.0),
    ],
)
def test_fastapi_state_commands_are_echoed(
    name: str, params: dict[str, object], metric: str, value: float
) -> None:
    other = 1.0 - value if metric != "servo_angle" else value + 30
    rule = fastapi_rule(name, params, {metric: other})
    assert isinstance(rule, StateEcho)
    assert (rule.metric, rule.value, rule.before) == (metric, value, other)
    assert rule.check(data((metric, other))) is None  # not yet
    assert rule.check(data(("temperature", 21.5))) is None
    verdict = rule.check(data((metric, value)))
    shown = f"{metric}={value:g}"
    assert decided(verdict) == (CommandState.SUCCEEDED, f"echo:{shown}")
    assert verdict is not None
    assert verdict.result == {metric: value}


def test_fastapi_smart_mode_the_data_message_leaves_out() -> None:
    """readAndPublishSensors' 250-byte document has no room left for `smart_mode`: a data
    message without it ends SMART_MODE by `next_message`; one with it, by the echo."""
    rule = fastapi_rule("SMART_MODE", {"enabled": False}, {"smart_mode": 1.0})
    assert rule.check(data(("uptime_ms", 5.0), status="online", type="heartbeat")) is None
    assert decided(rule.check(data(("light_state", 0.0), ("servo_angle", 90.0)))) == (
        CommandState.SUCCEEDED,
        "next_message",
    )
    assert rule.check(data(("light_state", 0.0), ("smart_mode", 1.0))) is None
    assert decided(rule.check(data(("light_state", 0.0), ("smart_mode", 0.0)))) == (
        CommandState.SUCCEEDED,
        "echo:smart_mode=0",
    )
    light = fastapi_rule("LIGHT_CONTROL", {"state": True})
    assert light.check(data(("fan_state", 0.0), ("light_state", 0.0))) is None


def test_fastapi_unchanged_state_is_not_claimed_as_proof() -> None:
    """The light already was on when the command was accepted: the next report says on, which
    it would have said had the command never arrived."""
    rule = fastapi_rule("LIGHT_CONTROL", {"state": True}, {"light_state": 1.0, "fan_state": 0.0})
    assert rule == StateEcho("light_state", 1.0, 1.0)
    verdict = rule.check(data(("light_state", 1.0), ("fan_state", 0.0)))
    assert decided(verdict) == (CommandState.SUCCEEDED, "echo_unchanged:light_state=1")
    assert verdict is not None
    assert "no proof" in verdict.detail


def test_fastapi_state_before_follows_reports_until_sent() -> None:
    """A report from before the command went out moves the state it starts from (the device
    may have changed while the command waited)."""
    rule = fastapi_rule("FAN_CONTROL", {"state": True}, {"fan_state": 0.0})
    rule.observe(data(("fan_state", 1.0)))  # smart mode switched it on meanwhile
    assert decided(rule.check(data(("fan_state", 1.0)))) == (
        CommandState.SUCCEEDED,
        "echo_unchanged:fan_state=1",
    )
    unknown = fastapi_rule("FAN_CONTROL", {"state": True})
    assert decided(unknown.check(data(("fan_state", 1.0)))) == (
        CommandState.SUCCEEDED,
        "echo:fan_state=1",
    )


def test_fastapi_reboot_by_its_status_or_the_uptime_reset() -> None:
    rule = fastapi_rule("REBOOT", {}, {"uptime_ms": 50_000.0, "light_state": 1.0})
    assert rule == Restart(50_000.0)
    # The data message and heartbeat carry `status: online` too: not the node's answer.
    assert rule.check(data(("light_state", 1.0), ("uptime_ms", 51_000.0), status="online")) is None
    assert rule.check(data(("uptime_ms", 52_000.0), status="online", type="heartbeat")) is None
    said = rule.check(data(("uptime_ms", 52_500.0), ("servo_angle", 90.0), status="rebooting"))
    assert decided(said) == (CommandState.SUCCEEDED, "status:rebooting")

    lost = fastapi_rule("REBOOT", {}, {"uptime_ms": 50_000.0})
    assert lost.check(data(("uptime_ms", 51_000.0), status="online", type="heartbeat")) is None
    assert decided(lost.check(data(("uptime_ms", 4_100.0), status="online"))) == (
        CommandState.SUCCEEDED,
        "uptime_reset",
    )
    # millis() wrapping after 49.7 days is no restart.
    wrap = Restart(2.0**32 - 1_000)
    assert wrap.check(data(("uptime_ms", 500.0))) is None
    # A restart before the command went out (the node was offline) is not its answer.
    early = fastapi_rule("REBOOT", {}, {"uptime_ms": 50_000.0})
    early.observe(data(("uptime_ms", 3_000.0)))
    assert early.check(data(("uptime_ms", 4_000.0))) is None


def test_fastapi_status_request_by_the_status_message() -> None:
    rule = fastapi_rule("STATUS_REQUEST", {})
    assert rule == StatusAnswer()
    assert rule.check(data(("light_state", 0.0), ("uptime_ms", 1.0), status="online")) is None
    assert rule.check(data(("uptime_ms", 1.0), status="online", type="heartbeat")) is None
    assert rule.check(data(("uptime_ms", 1.0), status="light_on")) is None
    status = data(("uptime_ms", 9_000.0), ("servo_angle", 90.0), status="online")
    assert decided(rule.check(status)) == (CommandState.SUCCEEDED, "status_message")


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        ("no_update_needed", CommandState.SUCCEEDED),
        ("update_success", CommandState.SUCCEEDED),
        ("update_failed", CommandState.FAILED),
    ],
)
def test_fastapi_firmware_update_by_its_outcome(outcome: str, state: CommandState) -> None:
    rule = fastapi_rule("FIRMWARE_UPDATE", {"url": "http://h/fw.bin"}, {"uptime_ms": 9_000.0})
    assert rule == FirmwareOutcome(9_000.0)
    assert rule.check(data(("uptime_ms", 9_500.0), status="updating")) is None
    verdict = rule.check(data(("uptime_ms", 30_000.0), status=outcome))
    assert decided(verdict) == (state, f"status:{outcome}")
    assert verdict is not None
    assert verdict.error == (outcome if state is CommandState.FAILED else None)


def test_fastapi_firmware_update_succeeds_by_the_restart_into_the_new_image() -> None:
    rule = fastapi_rule("FIRMWARE_UPDATE", {"url": "http://h/fw.bin"}, {"uptime_ms": 9_000.0})
    assert rule.check(data(("uptime_ms", 2_000.0))) is None  # no `updating` seen: not the update
    rule = fastapi_rule("FIRMWARE_UPDATE", {"url": "http://h/fw.bin"}, {"uptime_ms": 9_000.0})
    assert rule.check(data(("uptime_ms", 9_500.0), status="updating")) is None
    assert decided(rule.check(data(("uptime_ms", 3_000.0), status="online"))) == (
        CommandState.SUCCEEDED,
        "update_rebooted",
    )


def test_fastapi_light_schedule_by_the_next_message() -> None:
    """The node reports no schedule: only that it kept reporting after the command."""
    rule = fastapi_rule("SET_LIGHT_SCHEDULE", {"on_hour": 18, "off_hour": 6})
    assert rule == NextMessage()
    assert decided(rule.check(data(("temperature", 21.0)))) == (
        CommandState.SUCCEEDED,
        "next_message",
    )


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
