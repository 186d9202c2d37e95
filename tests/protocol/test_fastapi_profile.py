"""The FastAPI/RabbitMQ stack's node on `devices/{MAC}/data`, byte for byte as its firmware sends.

Every payload below is what `serializeJson` writes for the documents built in
`firmware/IoT_Platform_Node/IoT_Platform_Node.ino` of `nrn-dilanka/rnr-iot`: keys in the order the
code assigns them, no white space, booleans as `true`/`false`, a double that is whole as an integer
(`round(x * 10) / 10.0` of 37 prints `37`). `node_id` is `WiFi.macAddress()` without colons, the
topic's id level too (`data_topic = "devices/" + node_id + "/data"`).
"""

from __future__ import annotations

import pytest

from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.messages import Decoded, Reading, Rejected, RejectReason
from fieldhub.protocol.payload import MAX_PAYLOAD_BYTES
from fieldhub.protocol.profiles import DEFAULT_PROFILES, select_profiles
from fieldhub.protocol.timestamps import US_PER_S

RECEIVED_US = 1_795_442_400 * US_PER_S  # 2026-11-23T14:00:00Z, 19:30:00 on the node's UTC+5:30
NODE_ID = "3CE90E72124C"
TOPIC = f"devices/{NODE_ID}/data"
MAC = "3C:E9:0E:72:12:4C"
DECODER = MessageDecoder(select_profiles(DEFAULT_PROFILES))

# readAndPublishSensors() as it goes out: StaticJsonDocument<250> holds 14 of the 17 members the
# function assigns on an ESP32 with ArduinoJson 6 (16 bytes a member, plus the copied time and
# node_id strings), so `smart_mode`, `uptime` and `wifi_rssi` are silently left out.
FIRMWARE_DATA = (
    b'{"timestamp":"19:29:59","temperature":24.3,"humidity":55.1,"humidity_mq":37,'
    b'"humidity_mq_raw":1520,"gas_sensor":812,"status":"online","node_id":"3CE90E72124C",'
    b'"servo_angle":90,"light_state":false,"fan_state":true,"relay3_state":false,'
    b'"relay4_state":false,"real_model_state":false}'
)
# All 17 members, as the function assigns them (a document large enough to hold them all).
FIRMWARE_DATA_ALL_FIELDS = FIRMWARE_DATA[:-1] + (
    b',"smart_mode":true,"uptime":123456,"wifi_rssi":-61}'
)
# The firmware drops a sensor payload over this many bytes (`payload.length() > 300`).
FIRMWARE_DATA_LIMIT_BYTES = 300
# publishHeartbeat(), every 3 s.
FIRMWARE_HEARTBEAT = (
    b'{"type":"heartbeat","status":"online","node_id":"3CE90E72124C","uptime":123456}'
)
# testMQTTPublish(), once after the first MQTT connect in setup().
FIRMWARE_PING = b'{"test":"ping","node_id":"3CE90E72124C"}'
# Every state publishStatus() is called with: connect and STATUS_REQUEST ("online"), REBOOT,
# FIRMWARE_UPDATE and its outcomes, and a servo move (handleServoAngle).
STATES = (
    "online",
    "rebooting",
    "updating",
    "update_failed",
    "no_update_needed",
    "update_success",
    "servo_updated_wifi",
)


def firmware_status(state: str, clock: str = "2026-11-23 19:29:59") -> bytes:
    """publishStatus(state): `signal_strength` is map(-61, -100, -30, 0, 100) = 55."""
    return (
        f'{{"timestamp":"{clock}","status":"{state}","uptime":98765,"free_heap":201344,'
        f'"wifi_rssi":-61,"node_id":"{NODE_ID}","servo_angle":90,"gas_sensor":812,'
        f'"signal_strength":55}}'
    ).encode()


def decoded(payload: bytes) -> Decoded:
    result = DECODER.decode(TOPIC, payload, RECEIVED_US)
    assert isinstance(result, Decoded), result
    assert (result.device_id, result.profile, result.channel) == (MAC, "native", "telemetry")
    assert (result.command_format, result.topic_id) == ("fastapi", NODE_ID)
    # None of the node's clocks is a reading time: its readings are stamped on receipt.
    assert result.device_time is False
    assert {reading.ts_us for reading in result.readings} <= {RECEIVED_US}
    return result


def rejected(payload: bytes, reason: RejectReason) -> Rejected:
    result = DECODER.decode(TOPIC, payload, RECEIVED_US)
    assert isinstance(result, Rejected), result
    assert result.reason is reason, result
    assert (result.device_id, result.profile) == (MAC, "native")
    return result


def values(result: Decoded) -> dict[str, float]:
    return {reading.metric: reading.value for reading in result.readings}


# --- sensor data -----------------------------------------------------------------------------


def test_sensor_data_as_the_node_publishes_it() -> None:
    result = decoded(FIRMWARE_DATA)
    assert values(result) == {
        "temperature": 24.3,
        "humidity": 55.1,
        "humidity_mq": 37.0,
        "humidity_mq_raw": 1520.0,
        "gas_sensor": 812.0,
        "servo_angle": 90.0,
        "light_state": 0.0,
        "fan_state": 1.0,
        "relay3_state": 0.0,
        "relay4_state": 0.0,
        "real_model_state": 0.0,
    }
    assert result.attributes == {"timestamp": "19:29:59", "status": "online", "node_id": NODE_ID}
    assert result.presence is None


def test_sensor_data_with_every_field_names_uptime_for_its_milliseconds() -> None:
    """`uptime` is millis(): `uptime_ms`; `wifi_rssi` (dBm) is `rssi`; `smart_mode` is 0/1."""
    assert len(FIRMWARE_DATA_ALL_FIELDS) > FIRMWARE_DATA_LIMIT_BYTES  # the node would drop it
    result = decoded(FIRMWARE_DATA_ALL_FIELDS)
    assert result.readings[-3:] == [
        Reading("smart_mode", RECEIVED_US, 1.0),
        Reading("uptime_ms", RECEIVED_US, 123456.0),
        Reading("rssi", RECEIVED_US, -61.0),
    ]
    assert "uptime_s" not in values(result)
    assert "uptime" not in values(result)
    assert result.attributes == {"timestamp": "19:29:59", "status": "online", "node_id": NODE_ID}


def test_sensor_data_before_ntp_keeps_unknown_as_an_attribute() -> None:
    result = decoded(FIRMWARE_DATA.replace(b'"19:29:59"', b'"unknown"'))
    assert result.attributes["timestamp"] == "unknown"
    assert len(result.readings) == 11


def test_native_telemetry_keeps_uptime_in_seconds() -> None:
    """The rename is the data route's: fieldhub-shaped telemetry's `uptime` is still seconds."""
    result = DECODER.decode(f"devices/{NODE_ID}/telemetry", b'{"uptime":3600}', RECEIVED_US)
    assert isinstance(result, Decoded)
    assert result.readings == [Reading("uptime_s", RECEIVED_US, 3600.0)]


def test_the_connect_ping_is_kept_as_attributes() -> None:
    """testMQTTPublish()'s one message carries no reading; it is stored as it is."""
    result = decoded(FIRMWARE_PING)
    assert result.readings == []
    assert result.attributes == {"test": "ping", "node_id": NODE_ID}
    assert result.presence is None


# --- heartbeat -------------------------------------------------------------------------------


def test_heartbeat_is_presence_and_uptime_without_its_tags() -> None:
    result = decoded(FIRMWARE_HEARTBEAT)
    assert result.presence == "online"
    assert result.readings == [Reading("uptime_ms", RECEIVED_US, 123456.0)]
    assert result.attributes == {"node_id": NODE_ID}


def test_heartbeat_with_only_its_type_still_says_online() -> None:
    result = decoded(b'{"type":"heartbeat"}')
    assert result.presence == "online"
    assert (result.readings, result.attributes) == ([], {})


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"heartbeat","status":"offline","node_id":"3CE90E72124C","uptime":1}',
        b'{"type":"heartbeat","status":"rebooting","node_id":"3CE90E72124C","uptime":1}',
        b'{"type":"heartbeat","status":1,"node_id":"3CE90E72124C","uptime":1}',
        b'{"type":"heartbeat","status":null,"node_id":"3CE90E72124C","uptime":1}',
    ],
)
def test_heartbeat_that_is_not_online_is_a_dead_letter(payload: bytes) -> None:
    """The firmware's heartbeat always says `online`; one that says otherwise contradicts itself
    and is kept for a person to read, not guessed at."""
    result = rejected(payload, RejectReason.BAD_STATUS)
    assert "heartbeat" in result.detail
    assert "online" in result.detail


# --- status message --------------------------------------------------------------------------


@pytest.mark.parametrize("state", STATES)
def test_status_message_keeps_the_state_and_the_node_clock_as_attributes(state: str) -> None:
    result = decoded(firmware_status(state))
    assert result.attributes == {
        "status": state,
        "status_time": "2026-11-23 19:29:59",
        "node_id": NODE_ID,
    }
    assert values(result) == {
        "uptime_ms": 98765.0,
        "free_heap": 201344.0,
        "rssi": -61.0,
        "servo_angle": 90.0,
        "gas_sensor": 812.0,
        "signal_strength": 55.0,
    }
    # Online says presence; the other states leave it to the heartbeat and the last will.
    assert result.presence == ("online" if state == "online" else None)


def test_status_message_before_ntp() -> None:
    result = decoded(firmware_status("online", clock="unknown"))
    assert result.attributes["status_time"] == "unknown"
    assert result.presence == "online"


def test_status_clock_is_never_the_reading_time() -> None:
    """The node's local time, 5 h 30 ahead of UTC with no offset written: read as UTC it would
    pass the one-day future check and misdate every reading."""
    result = decoded(firmware_status("online", clock="2026-11-24 01:00:00"))
    assert {reading.ts_us for reading in result.readings} == {RECEIVED_US}
    assert result.attributes["status_time"] == "2026-11-24 01:00:00"


def test_status_clock_that_is_not_text_is_kept_whole() -> None:
    result = decoded(firmware_status("online").replace(b'"2026-11-23 19:29:59"', b'{"h":19}'))
    assert result.attributes["status_time"] == '{"h":19}'
    assert "h" not in values(result)


@pytest.mark.parametrize(
    "payload",
    [
        firmware_status("online").replace(b'"status":"online",', b""),
        firmware_status("online").replace(b'"online"', b"1"),
        firmware_status("online").replace(b'"online"', b'"  "'),
        firmware_status("online").replace(b'"online"', b"null"),
    ],
)
def test_status_message_without_a_state_is_a_dead_letter(payload: bytes) -> None:
    """`free_heap` marks a status message; its state is what commands wait for, so one without a
    usable state is refused rather than stored half-understood."""
    result = rejected(payload, RejectReason.BAD_STATUS)
    assert "status" in result.detail


# --- hostile bytes on the data topic ---------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", RejectReason.EMPTY_PAYLOAD),
        (FIRMWARE_DATA[:120], RejectReason.MALFORMED_JSON),  # cut off mid-publish
        (FIRMWARE_HEARTBEAT[:-1], RejectReason.MALFORMED_JSON),
        (FIRMWARE_HEARTBEAT.replace(b"123456", b"NaN"), RejectReason.NON_FINITE_NUMBER),
        (firmware_status("online").replace(b"201344", b"1e999"), RejectReason.NON_FINITE_NUMBER),
        (FIRMWARE_DATA.replace(b"19:29:59", b"19:29:\xff9"), RejectReason.NOT_UTF8),
        (b'"heartbeat"', RejectReason.NOT_AN_OBJECT),
        (b"[1, 2]", RejectReason.NOT_AN_OBJECT),
        (b"{}", RejectReason.NO_READINGS),
        (b"{" + b'"x":1,' * (MAX_PAYLOAD_BYTES // 6) + b'"y":1}', RejectReason.OVERSIZE_PAYLOAD),
        (b'{"type":"heartbeat","":1}', RejectReason.BAD_FIELD_NAME),
    ],
)
def test_hostile_bytes_are_dead_letters_with_a_reason(payload: bytes, reason: RejectReason) -> None:
    result = rejected(payload, reason)
    assert result.detail
