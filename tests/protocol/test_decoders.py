"""Decoding whole messages (topic + payload) through the built-in native and readings profiles."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.messages import (
    CommandReply,
    Decoded,
    Ignored,
    Reading,
    Rejected,
    RejectReason,
)
from fieldhub.protocol.payload import MAX_PAYLOAD_BYTES
from fieldhub.protocol.profiles import select_profiles
from fieldhub.protocol.timestamps import US_PER_S

# 2026-11-23T14:00:00Z
RECEIVED_US = 1_795_442_400 * US_PER_S
DEVICE_S = 1_795_438_800  # 2026-11-23T13:00:00Z, a device clock one hour behind receipt
MAC = "3C:E9:0E:72:12:4C"
# The Flask gateway firmware's payload, byte for byte (a space after each comma).
FIRMWARE_GATEWAY = b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":93387, "rssi":65}'

DECODER = MessageDecoder(select_profiles(["native", "readings"]))


def _decode(topic: str, payload: bytes | str | Any, received_us: int = RECEIVED_US) -> Any:
    if isinstance(payload, str):
        payload = payload.encode()
    elif not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    return DECODER.decode(topic, payload, received_us)


def _decoded(topic: str, payload: bytes | str | Any) -> Decoded:
    result = _decode(topic, payload)
    assert isinstance(result, Decoded), result
    return result


def _rejected(topic: str, payload: bytes | str | Any, reason: RejectReason) -> Rejected:
    result = _decode(topic, payload)
    assert isinstance(result, Rejected), result
    assert result.reason is reason, result
    assert result.detail
    return result


def _values(result: Decoded) -> dict[str, float]:
    return {reading.metric: reading.value for reading in result.readings}


# --- readings profile (Flask/SQLite gateway stack) -------------------------------------------


def test_flask_firmware_gateway_message() -> None:
    """The firmware's exact bytes: rssi_percent and uptime_ms at the receive time."""
    result = _decoded(f"/readings/gateway/{MAC}", FIRMWARE_GATEWAY)
    assert result.device_id == MAC
    assert result.profile == "readings"
    assert result.channel == "gateway"
    assert result.received_us == RECEIVED_US
    assert result.device_time is False
    assert sorted(result.readings, key=lambda r: r.metric) == [
        Reading("rssi_percent", RECEIVED_US, 65.0),
        Reading("uptime_ms", RECEIVED_US, 93387.0),
    ]
    assert result.attributes == {"macAddress": MAC}
    assert result.presence is None


def test_readings_topic_mac_in_another_spelling_is_canonical() -> None:
    """A lower-case dashed MAC in the topic still names the canonical device."""
    result = _decoded("/readings/gateway/3c-e9-0e-72-12-4c", FIRMWARE_GATEWAY)
    assert result.device_id == MAC


def test_readings_temperature_channel() -> None:
    """`/readings/temperature/{MAC}` gives a temperature reading and the uptime."""
    payload = b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":1835587, "temperature":21.4}'
    result = _decoded(f"/readings/temperature/{MAC}", payload)
    assert result.channel == "temperature"
    assert _values(result) == {"temperature": 21.4, "uptime_ms": 1835587.0}
    assert {r.ts_us for r in result.readings} == {RECEIVED_US}


def test_readings_without_timestamp_is_accepted() -> None:
    """Only the channel's value is required; a missing timestamp means receive time."""
    result = _decoded(f"/readings/gateway/{MAC}", {"rssi": 70})
    assert _values(result) == {"rssi_percent": 70.0}


@pytest.mark.parametrize(
    ("topic", "payload", "field"),
    [
        (f"/readings/gateway/{MAC}", {"macAddress": MAC, "timestamp": 93387}, "rssi"),
        (f"/readings/temperature/{MAC}", {"macAddress": MAC, "rssi": 65}, "temperature"),
    ],
)
def test_readings_missing_required_field(topic: str, payload: Any, field: str) -> None:
    """The legacy schema is strict: a missing channel value is missing_field naming it."""
    assert repr(field) in _rejected(topic, payload, RejectReason.MISSING_FIELD).detail


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"macAddress": MAC, "timestamp": 93387, "rssi": "65"}, "rssi"),
        ({"macAddress": MAC, "timestamp": 93387, "rssi": None}, "rssi"),
        ({"macAddress": MAC, "timestamp": "93387", "rssi": 65}, "timestamp"),
        ({"macAddress": MAC, "timestamp": [1], "rssi": 65}, "timestamp"),
    ],
)
def test_readings_strings_for_numbers_are_expected_number(payload: Any, field: str) -> None:
    """A required or time field that is not a number is expected_number naming the field."""
    rejected = _rejected(f"/readings/gateway/{MAC}", payload, RejectReason.EXPECTED_NUMBER)
    assert repr(field) in rejected.detail
    assert rejected.device_id == MAC
    assert rejected.profile == "readings"


def test_readings_date_string_timestamp_dates_the_reading() -> None:
    """The stack's publish-test endpoint sent a date string: it is the reading's time."""
    payload = {"macAddress": MAC, "timestamp": "2026-11-23 13:00:00", "temperature": 21.5}
    result = _decoded(f"/readings/temperature/{MAC}", payload)
    assert result.device_time is True
    assert result.readings == [Reading("temperature", DEVICE_S * US_PER_S, 21.5)]


def test_readings_mac_address_must_be_text() -> None:
    """A non-string macAddress is refused rather than stored as a reading."""
    _rejected(
        f"/readings/gateway/{MAC}", {"macAddress": 12, "rssi": 65}, RejectReason.MISSING_FIELD
    )


@pytest.mark.parametrize("payload", [b"[1, 2]", b"65", b'"x"', b"null"])
def test_readings_payload_that_is_not_an_object(payload: bytes) -> None:
    """Arrays and scalars where the readings schema expects an object are not_an_object."""
    _rejected(f"/readings/gateway/{MAC}", payload, RejectReason.NOT_AN_OBJECT)


def test_readings_topics_and_status_publish_retained() -> None:
    """Readings topics and the status topic are marked retained; telemetry is not."""
    assert DECODER.publishes_retained(f"/readings/gateway/{MAC}")
    assert DECODER.publishes_retained(f"/readings/temperature/{MAC}")
    assert DECODER.publishes_retained("devices/node-1/status")
    assert not DECODER.publishes_retained("devices/node-1/telemetry")
    assert not DECODER.publishes_retained("devices/node-1/data")
    assert not DECODER.publishes_retained("/readings/other/x")


# --- native telemetry ---------------------------------------------------------------------------


def test_native_telemetry_with_ts_uses_the_device_time() -> None:
    """A plausible `ts` is the readings' time, is not itself a reading, and sets device_time."""
    result = _decoded("devices/node-1/telemetry", {"ts": DEVICE_S, "temperature": 22.5})
    assert result.device_time is True
    assert result.readings == [Reading("temperature", DEVICE_S * US_PER_S, 22.5)]
    assert result.received_us == RECEIVED_US


@pytest.mark.parametrize(
    "payload",
    [
        {"ts": DEVICE_S * 1000, "t": 1},
        {"timestamp": DEVICE_S, "t": 1},
        {"time": "2026-11-23T13:00:00Z", "t": 1},
        {"ts": "2026-11-23T14:00:00+01:00", "t": 1},
    ],
)
def test_native_time_keys_and_forms(payload: dict[str, Any]) -> None:
    """`ts`, `timestamp` and `time` in epoch s, ms or ISO all set the reading time."""
    result = _decoded("devices/node-1/telemetry", payload)
    assert result.readings == [Reading("t", DEVICE_S * US_PER_S, 1.0)]
    assert result.device_time is True
    assert result.attributes == {}


def test_native_telemetry_without_ts_uses_receive_time() -> None:
    """Without a time field every reading is at the receive time and device_time is False."""
    result = _decoded(
        "devices/node-1/telemetry", {"sensors": {"temperature": 22.5, "humidity": 45}}
    )
    assert result.device_time is False
    assert _values(result) == {"temperature": 22.5, "humidity": 45.0}
    assert {r.ts_us for r in result.readings} == {RECEIVED_US}


def test_native_telemetry_with_uptime_timestamp_keeps_it_as_a_reading() -> None:
    """A `timestamp` that is uptime is kept as a reading at the receive time."""
    result = _decoded("devices/node-1/telemetry", {"timestamp": 93387, "t": 1})
    assert result.device_time is False
    assert set(result.readings) == {
        Reading("timestamp", RECEIVED_US, 93387.0),
        Reading("t", RECEIVED_US, 1.0),
    }


def test_native_telemetry_with_clock_text_timestamp_is_an_attribute() -> None:
    """A `"HH:MM:SS"` timestamp is an attribute and the readings use the receive time."""
    result = _decoded("devices/node-1/telemetry", {"timestamp": "12:34:56", "t": 1})
    assert result.device_time is False
    assert result.attributes == {"timestamp": "12:34:56"}
    assert result.readings == [Reading("t", RECEIVED_US, 1.0)]


@pytest.mark.parametrize(
    "payload",
    [
        {"ts": -1, "t": 1},
        {"ts": DEVICE_S * 1000 * 1000 * 1000 * 100, "t": 1},
        {"ts": "2300-01-01T00:00:00Z", "t": 1},
        {"ts": "1970-01-01", "t": 1},
        {"ts": None, "t": 1},
    ],
)
def test_native_absurd_ts_is_rejected(payload: dict[str, Any]) -> None:
    """A time that claims to be a date but cannot be one is absurd_timestamp for the device."""
    rejected = _rejected("devices/node-1/telemetry", payload, RejectReason.ABSURD_TIMESTAMP)
    assert rejected.device_id == "node-1"
    assert rejected.profile == "native"


def test_fastapi_stack_flat_data_object() -> None:
    """The FastAPI stack's flat object on `devices/{MAC}/data`: numbers, booleans, strings."""
    payload = {
        "temperature": 24.5,
        "humidity": 55.0,
        "gas_sensor": 312,
        "servo_angle": 90,
        "light_state": True,
        "fan_state": False,
        "wifi_rssi": -61,
        "uptime": 3600,
        "status": "active",
        "node_id": "esp32_01",
        "timestamp": "12:34:56",
    }
    result = _decoded("devices/aa-bb-cc-dd-ee-ff/data", payload)
    assert result.device_id == "AA:BB:CC:DD:EE:FF"
    assert result.channel == "telemetry"
    assert result.device_time is False
    assert _values(result) == {
        "temperature": 24.5,
        "humidity": 55.0,
        "gas_sensor": 312.0,
        "servo_angle": 90.0,
        "light_state": 1.0,
        "fan_state": 0.0,
        "rssi": -61.0,
        # The stack's `uptime` is millis() (tests/protocol/test_fastapi_profile.py).
        "uptime_ms": 3600.0,
    }
    assert {r.ts_us for r in result.readings} == {RECEIVED_US}
    assert result.attributes == {"status": "active", "node_id": "esp32_01", "timestamp": "12:34:56"}


def test_fastapi_stack_unknown_timestamp_is_an_attribute() -> None:
    """`"timestamp": "unknown"` (no NTP yet) is an attribute, not an error."""
    result = _decoded("devices/AA:BB:CC:DD:EE:FF/data", {"timestamp": "unknown", "temperature": 1})
    assert result.attributes == {"timestamp": "unknown"}
    assert result.readings == [Reading("temperature", RECEIVED_US, 1.0)]


def test_iot_node_shaped_payload_on_native_topic_flattens() -> None:
    """Nested `sensors` flatten to leaf names next to the top-level numbers."""
    payload = {
        "node_id": "node_01",
        "timestamp": DEVICE_S,
        "sensors": {"temperature": 22.5, "humidity": 45.2},
        "wifi_rssi": -65,
        "uptime": 3600,
    }
    result = _decoded("devices/node_01/telemetry", payload)
    assert result.device_time is True
    assert _values(result) == {
        "temperature": 22.5,
        "humidity": 45.2,
        "rssi": -65.0,
        "uptime_s": 3600.0,
    }
    assert result.attributes == {"node_id": "node_01"}


def test_envelope_version_is_an_attribute_not_a_reading() -> None:
    """The payload version `v` is kept as an attribute only."""
    result = _decoded("devices/node-1/telemetry", {"v": 1, "t": 2})
    assert result.attributes == {"v": 1}
    assert _values(result) == {"t": 2.0}


def test_only_attributes_is_still_decoded() -> None:
    """A telemetry object with only strings updates attributes and has no readings."""
    result = _decoded("devices/node-1/telemetry", {"status": "booting"})
    assert result.readings == []
    assert result.attributes == {"status": "booting"}


@pytest.mark.parametrize("payload", [{}, {"a": {}}, {"a": []}, []])
def test_telemetry_with_nothing_in_it_is_no_readings(payload: Any) -> None:
    """An object or array with neither numbers nor attributes is no_readings."""
    _rejected("devices/node-1/telemetry", payload, RejectReason.NO_READINGS)


@pytest.mark.parametrize("payload", [b"42", b'"hello"', b"true", b"null", b"[1, 2]", b'[{"t": 1}]'])
def test_telemetry_that_is_not_an_object(payload: bytes) -> None:
    """Scalars and arrays that are not backfill entries are not_an_object."""
    _rejected("devices/node-1/telemetry", payload, RejectReason.NOT_AN_OBJECT)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", RejectReason.EMPTY_PAYLOAD),
        (b"{", RejectReason.MALFORMED_JSON),
        (b'{"t": NaN}', RejectReason.NON_FINITE_NUMBER),
        (b'{"t": "\xff"}', RejectReason.NOT_UTF8),
        (b'{"": 1}', RejectReason.BAD_FIELD_NAME),
        (json.dumps({f"f{i}": i for i in range(300)}).encode(), RejectReason.TOO_MANY_FIELDS),
        (b'{"t": 1}' + b" " * MAX_PAYLOAD_BYTES, RejectReason.OVERSIZE_PAYLOAD),
    ],
)
def test_payload_errors_reach_the_result_with_device_and_profile(
    payload: bytes, reason: RejectReason
) -> None:
    """Payload errors become Rejected with the reason code, the device id and the profile."""
    rejected = _rejected("devices/node-1/telemetry", payload, reason)
    assert rejected.device_id == "node-1"
    assert rejected.profile == "native"


# --- backfill ---------------------------------------------------------------------------------


def test_backfill_entry_uses_its_own_time() -> None:
    """`{"ts": <epoch ms>, "values": {...}}` stores each value at ts."""
    result = _decoded(
        "devices/node-1/telemetry", {"ts": DEVICE_S * 1000 + 250, "values": {"t": 1, "on": True}}
    )
    ts_us = DEVICE_S * US_PER_S + 250_000
    assert result.device_time is True
    assert set(result.readings) == {Reading("t", ts_us, 1.0), Reading("on", ts_us, 1.0)}


def test_backfill_list_keeps_each_entrys_time() -> None:
    """A JSON array of entries gives every reading the time of its own entry."""
    payload = [
        {"ts": (DEVICE_S + i * 60) * 1000, "values": {"temperature": 20 + i, "nested": {"h": i}}}
        for i in range(3)
    ]
    result = _decoded("devices/node-1/telemetry", payload)
    assert result.device_time is True
    expected = set()
    for i in range(3):
        ts_us = (DEVICE_S + i * 60) * US_PER_S
        expected |= {Reading("temperature", ts_us, 20.0 + i), Reading("h", ts_us, float(i))}
    assert set(result.readings) == expected
    assert len(result.readings) == 6


@pytest.mark.parametrize(
    "values", [{"t": "21.5"}, {"t": None}, {"t": 1, "status": "ok"}, {"grp": {"s": "x"}}]
)
def test_backfill_values_must_be_numbers(values: dict[str, Any]) -> None:
    """Strings or nulls in buffered values are expected_number naming the field."""
    rejected = _rejected(
        "devices/node-1/telemetry",
        {"ts": DEVICE_S * 1000, "values": values},
        RejectReason.EXPECTED_NUMBER,
    )
    assert "values." in rejected.detail


@pytest.mark.parametrize("ts", [93387, "12:00:00", -1, "2300-01-01", None, DEVICE_S * 10**12])
def test_backfill_bad_ts_is_absurd_timestamp(ts: Any) -> None:
    """A backfill entry must carry a date: uptime, text or absurd values are absurd_timestamp."""
    _rejected(
        "devices/node-1/telemetry", {"ts": ts, "values": {"t": 1}}, RejectReason.ABSURD_TIMESTAMP
    )
    _rejected(
        "devices/node-1/telemetry",
        [{"ts": DEVICE_S * 1000, "values": {"t": 1}}, {"ts": ts, "values": {"t": 2}}],
        RejectReason.ABSURD_TIMESTAMP,
    )


@pytest.mark.parametrize(
    "payload",
    [
        [{"ts": DEVICE_S * 1000}],
        [{"values": {"t": 1}}],
        [{"ts": DEVICE_S * 1000, "values": [1]}],
        [{"ts": DEVICE_S * 1000, "values": {"t": 1}}, 5],
        {"ts": DEVICE_S * 1000, "values": 5},
    ],
)
def test_malformed_backfill_entries_are_not_an_object(payload: Any) -> None:
    """Array entries without ts or with non-object values are not_an_object with the shape."""
    rejected = _rejected("devices/node-1/telemetry", payload, RejectReason.NOT_AN_OBJECT)
    assert '"values"' in rejected.detail


# --- status -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "presence"),
    [("online", "online"), ("offline", "offline"), (" Online\n", "online"), ("OFFLINE", "offline")],
)
def test_status_words(payload: str, presence: str) -> None:
    """`online`/`offline` in any case and with whitespace set presence, nothing else."""
    result = _decoded("devices/AA:BB:CC:DD:EE:FF/status", payload)
    assert result.channel == "status"
    assert result.presence == presence
    assert result.readings == []
    assert result.attributes == {}


@pytest.mark.parametrize(
    ("payload", "presence"),
    [
        ({"state": "offline"}, "offline"),
        ({"state": "Online"}, "online"),
        ({"status": "offline"}, "offline"),
    ],
)
def test_status_json_state(payload: Any, presence: str) -> None:
    """JSON `state` (or `status`) sets presence and is not kept as an attribute."""
    result = _decoded("devices/node-1/status", payload)
    assert result.presence == presence
    assert result.attributes == {}
    assert result.readings == []


def test_status_json_heartbeat_without_state_is_online_with_readings() -> None:
    """A JSON heartbeat without a state proves the device is talking: online plus its readings."""
    result = _decoded(
        "devices/node-1/status", {"uptime": 120, "wifi_rssi": -60, "status": "active"}
    )
    assert result.presence == "online"
    assert _values(result) == {"uptime_s": 120.0, "rssi": -60.0}
    assert result.attributes == {"status": "active"}
    assert {r.ts_us for r in result.readings} == {RECEIVED_US}


def test_status_json_heartbeat_with_device_time() -> None:
    """A heartbeat's own ts is used for its readings."""
    result = _decoded("devices/node-1/status", {"state": "online", "ts": DEVICE_S, "uptime": 5})
    assert result.presence == "online"
    assert result.readings == [Reading("uptime_s", DEVICE_S * US_PER_S, 5.0)]
    assert result.device_time is True


def test_status_other_text_is_an_attribute_without_presence() -> None:
    """`updating` is kept as the status attribute and does not change presence."""
    result = _decoded("devices/node-1/status", "updating")
    assert result.presence is None
    assert result.attributes == {"status": "updating"}


def test_status_empty_payload_is_a_retained_clear() -> None:
    """An empty status payload (clearing the retained message) is Ignored, not an error."""
    assert _decode("devices/node-1/status", b"") == Ignored("status")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"   \n", RejectReason.BAD_STATUS),
        (b"{oops", RejectReason.MALFORMED_JSON),
        (b"\xff", RejectReason.NOT_UTF8),
        (b"o" * (MAX_PAYLOAD_BYTES + 1), RejectReason.OVERSIZE_PAYLOAD),
        (b'{"state": "online", "t": NaN}', RejectReason.NON_FINITE_NUMBER),
    ],
)
def test_status_errors(payload: bytes, reason: RejectReason) -> None:
    """Blank, malformed, non-UTF-8 and oversize status payloads are rejected with a reason."""
    _rejected("devices/node-1/status", payload, reason)


# --- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "profile"),
    [
        ("devices/x/foo", "native"),
        ("devices/x", "native"),
        ("devices/x/telemetry/extra", "native"),
        ("devices", "native"),
        ("/readings/other/3C:E9:0E:72:12:4C", "readings"),
        ("/readings/gateway", "readings"),
    ],
)
def test_unknown_topic_under_a_prefix_names_the_profile(topic: str, profile: str) -> None:
    """A topic under a profile's prefix without a route is unknown_topic naming that profile."""
    rejected = _rejected(topic, FIRMWARE_GATEWAY, RejectReason.UNKNOWN_TOPIC)
    assert rejected.profile == profile
    assert f"the {profile} profile" in rejected.detail
    assert repr(topic) in rejected.detail
    assert rejected.device_id is None


@pytest.mark.parametrize(
    "topic", ["sensor/x/temperature", "readings/gateway/x", "", "iot/node/x/telemetry"]
)
def test_topic_outside_every_profile(topic: str) -> None:
    """A topic under no enabled prefix is unknown_topic without a profile."""
    rejected = _rejected(topic, b"1", RejectReason.UNKNOWN_TOPIC)
    assert rejected.profile is None


@pytest.mark.parametrize(
    "topic",
    [
        "devices//telemetry",
        "devices/a b/telemetry",
        "devices/+/telemetry",
        "devices/#/data",
        f"devices/{'n' * 129}/telemetry",
        "/readings/gateway/",
        "devices/node\n/status",
    ],
)
def test_bad_device_id_in_topic(topic: str) -> None:
    """An id segment that cannot name a device is bad_device_id with the profile."""
    rejected = _rejected(topic, b'{"t": 1}', RejectReason.BAD_DEVICE_ID)
    assert rejected.profile in {"native", "readings"}
    assert rejected.device_id is None


@pytest.mark.parametrize(
    ("topic", "channel"),
    [
        ("devices/x/commands", "commands"),
        # The FastAPI stack's retained fallback, which fieldhub itself publishes and clears.
        ("devices/x/commands/last", "commands"),
        ("devices/x/ota", "ota"),
        ("devices/x/ota/status", "ota_status"),
        ("devices/x/audio", "audio"),
    ],
)
def test_down_link_and_later_topics_are_ignored(topic: str, channel: str) -> None:
    """Command, OTA and audio topics are Ignored with their channel, whatever the payload (the
    command ack is decoded: see test_command_ack_*)."""
    assert _decode(topic, b'{"id": "1", "name": "set_led"}') == Ignored(channel)
    assert _decode(topic, b"\xff not json") == Ignored(channel)


def test_subscriptions_cover_both_profiles() -> None:
    """The decoder subscribes to each enabled profile's prefix once."""
    assert DECODER.subscriptions == ["devices/#", "/readings/#"]


def test_receive_time_is_per_message() -> None:
    """Two messages without device time get the receive time each was given."""
    first = DECODER.decode("devices/n/data", b'{"t": 1}', RECEIVED_US)
    second = DECODER.decode("devices/n/data", b'{"t": 1}', RECEIVED_US + 1)
    assert isinstance(first, Decoded)
    assert isinstance(second, Decoded)
    assert first.readings[0].ts_us == RECEIVED_US
    assert second.readings[0].ts_us == RECEIVED_US + 1


def test_nesting_within_the_parser_limit_is_rejected_not_raised() -> None:
    """Nesting deep enough to exhaust Python's stack is a Rejected result, never an exception."""
    payload = b'{"a":' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}"
    assert isinstance(_decode("devices/n/telemetry", payload), Rejected)


def test_command_ack_ok_and_error_are_replies() -> None:
    """A native ack decodes to a CommandReply with its id, outcome, result or error text."""
    ok = _decode(
        "devices/AA:BB:CC:00:00:01/commands/ack", b'{"id":"c-1","status":"ok","result":{"p":1}}'
    )
    assert ok == CommandReply(
        "AA:BB:CC:00:00:01", "native", "c-1", True, {"p": 1}, None, ok.received_us
    )
    error = _decode("devices/n1/commands/ack", b'{"id":"c-2","status":"error","error":"jammed"}')
    assert isinstance(error, CommandReply)
    assert (error.ok, error.error, error.result) == (False, "jammed", None)
    silent = _decode("devices/n1/commands/ack", b'{"id":"c-3","status":"error"}')
    assert isinstance(silent, CommandReply)
    assert silent.error == "the device reported an error"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"id":"c-1","status":"done"}', RejectReason.BAD_COMMAND_ACK),
        (b'{"status":"ok"}', RejectReason.BAD_COMMAND_ACK),
        (b'{"id":"","status":"ok"}', RejectReason.BAD_COMMAND_ACK),
        (b'{"id":7,"status":"ok"}', RejectReason.BAD_COMMAND_ACK),
        (b'["c-1","ok"]', RejectReason.NOT_AN_OBJECT),
        (b"{ack", RejectReason.MALFORMED_JSON),
    ],
)
def test_command_ack_that_cannot_be_matched_is_a_dead_letter(
    payload: bytes, reason: RejectReason
) -> None:
    """An ack without a usable id or status goes to dead letters with the reason."""
    _rejected("devices/n1/commands/ack", payload, reason)


def test_messages_say_how_their_device_takes_commands() -> None:
    """Every message of a commandable profile carries the id as its topic spells it; the routes
    that tell a stack apart also name its command format; status says nothing about it."""
    status = _decoded("devices/a4cf12b3c4d5/status", b"online")
    assert (status.topic_id, status.command_format) == ("a4cf12b3c4d5", None)
    data = _decoded("devices/3CE90E100001/data", b'{"servo_angle": 90}')
    assert (data.topic_id, data.command_format) == ("3CE90E100001", "fastapi")
    telemetry = _decoded("devices/n1/telemetry", b'{"t": 1}')
    assert telemetry.command_format == "native"
    gateway = _decoded(
        "/readings/gateway/3C:E9:0E:72:12:4C",
        b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":93387, "rssi":65}',
    )
    assert (gateway.topic_id, gateway.command_format) == (None, None)


def test_orders_published_about_a_device_do_not_prove_it_is_alive() -> None:
    """`window/{id}/control` is the ML service's (or fieldhub's) order, not the node talking."""
    decoder = MessageDecoder(select_profiles(["sensor"]))
    order = decoder.decode("window/w1/control", b'{"position": 30, "confidence": 0.9}', RECEIVED_US)
    reading = decoder.decode("sensor/w1/temperature", b"21.5", RECEIVED_US)
    assert isinstance(order, Decoded)
    assert isinstance(reading, Decoded)
    assert not order.from_device
    assert reading.from_device
