"""The `sensor` profile: the Go/ClickHouse window-control stack's topics and payloads."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest

from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.messages import (
    CommandReply,
    Decoded,
    Ignored,
    InferenceRequest,
    Reading,
    Rejected,
    RejectReason,
)
from fieldhub.protocol.payload import MAX_PAYLOAD_BYTES
from fieldhub.protocol.profiles import (
    AUDIO_MAX_PAYLOAD_BYTES,
    DEFAULT_PROFILES,
    Profile,
    Route,
    select_profiles,
)
from fieldhub.protocol.timestamps import US_PER_S, format_us
from support.audio import sine, wav_bytes

RECEIVED_US = 1_795_442_400 * US_PER_S  # 2026-11-23T14:00:00Z
DECODER = MessageDecoder(select_profiles(DEFAULT_PROFILES))


def decode(
    topic: str, payload: bytes | Any
) -> Decoded | Ignored | Rejected | CommandReply | InferenceRequest:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return DECODER.decode(topic, raw, RECEIVED_US)


def decoded(topic: str, payload: bytes | Any) -> Decoded:
    result = decode(topic, payload)
    assert isinstance(result, Decoded), result
    return result


def rejected(topic: str, payload: bytes | Any, reason: RejectReason) -> Rejected:
    result = decode(topic, payload)
    assert isinstance(result, Rejected), result
    assert result.reason is reason, result
    return result


def audio_message(clip: bytes, **extra: Any) -> bytes:
    """The stack's audio message: base64 WAV in JSON with its rate and duration."""
    body = {"data": base64.b64encode(clip).decode(), "sample_rate": 16_000, "duration": 2.0}
    return json.dumps(body | extra).encode()


@pytest.mark.parametrize(
    ("topic", "text", "metric", "value"),
    [
        ("sensor/esp32_001/temperature", b"25.5", "temperature", 25.5),
        ("sensor/esp32_001/humidity", b"61", "humidity", 61.0),
        ("sensor/esp32_001/temperature", b" 21.50\r\n", "temperature", 21.5),
        ("sensor/esp32_001/temperature", b"-3.2e1", "temperature", -32.0),
    ],
)
def test_a_number_as_text_is_one_reading_named_by_the_topic(
    topic: str, text: bytes, metric: str, value: float
) -> None:
    result = decoded(topic, text)
    assert (result.device_id, result.profile) == ("esp32_001", "sensor")
    assert result.channel == "telemetry"
    assert result.readings == [Reading(metric, RECEIVED_US, value)]
    assert result.attributes == {}


@pytest.mark.parametrize("text", [b"nan", b"inf", b"1_000", b"0x10", b"warm", b"25.5 C", b"{}"])
def test_text_that_is_not_a_plain_number_is_expected_number(text: bytes) -> None:
    rejected("sensor/esp32_001/temperature", text, RejectReason.EXPECTED_NUMBER)


def test_number_beyond_a_double_is_non_finite() -> None:
    rejected("sensor/esp32_001/humidity", b"1e400", RejectReason.NON_FINITE_NUMBER)


def test_empty_number_topic_is_empty_payload() -> None:
    rejected("sensor/esp32_001/temperature", b"", RejectReason.EMPTY_PAYLOAD)


def test_two_second_clip_is_stored_as_its_level_in_dbfs() -> None:
    """85 KB of base64 WAV (over the 64 KiB default) becomes one `sound_volume` reading."""
    message = audio_message(wav_bytes(sine(8_000)))
    assert MAX_PAYLOAD_BYTES < len(message) < AUDIO_MAX_PAYLOAD_BYTES
    result = decoded("sensor/esp32_001/audio", message)
    assert result.channel == "audio"
    [reading] = result.readings
    assert (reading.metric, reading.ts_us) == ("sound_volume", RECEIVED_US)
    assert reading.value == pytest.approx(20 * math.log10(8_000 / math.sqrt(2) / 32_768), abs=0.05)


def test_clip_with_a_device_date_is_stored_at_that_date() -> None:
    device_s = RECEIVED_US // US_PER_S - 5
    result = decoded(
        "sensor/esp32_001/audio", audio_message(wav_bytes([0] * 160), timestamp=device_s)
    )
    assert result.device_time is True
    assert result.readings == [Reading("sound_volume", device_s * US_PER_S, -120.0)]


def test_headerless_pcm_uses_the_sample_rate_field() -> None:
    samples = sine(4_000, seconds=0.1)
    raw = b"".join(value.to_bytes(2, "little", signed=True) for value in samples)
    from_pcm = decoded("sensor/esp32_001/audio", audio_message(raw)).readings[0].value
    from_wav = decoded("sensor/esp32_001/audio", audio_message(wav_bytes(samples))).readings[0]
    assert from_pcm == from_wav.value


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"sample_rate": 16_000}, RejectReason.MISSING_FIELD),
        ({"data": 12}, RejectReason.MISSING_FIELD),
        ({"data": "not base64!"}, RejectReason.BAD_AUDIO),
        ({"data": base64.b64encode(b"RIFF....WAVEfmt ").decode()}, RejectReason.BAD_AUDIO),
        ({"data": base64.b64encode(b"\x01\x02\x03\x04").decode()}, RejectReason.BAD_AUDIO),
        ([1, 2], RejectReason.NOT_AN_OBJECT),
        (b"UklGRg==", RejectReason.MALFORMED_JSON),
    ],
)
def test_audio_that_cannot_be_measured_says_why(payload: Any, reason: RejectReason) -> None:
    result = rejected("sensor/esp32_001/audio", payload, reason)
    assert result.device_id == "esp32_001"
    assert result.detail


def test_audio_over_its_route_limit_is_oversize() -> None:
    clip = wav_bytes([1_000] * (AUDIO_MAX_PAYLOAD_BYTES // 2))
    result = rejected("sensor/esp32_001/audio", audio_message(clip), RejectReason.OVERSIZE_PAYLOAD)
    assert str(AUDIO_MAX_PAYLOAD_BYTES) in result.detail


def test_the_audio_limit_applies_to_its_route_only() -> None:
    """A telemetry message of the audio clip's size is still refused on a number topic."""
    big = b"1" * (MAX_PAYLOAD_BYTES + 1)
    rejected("sensor/esp32_001/temperature", big, RejectReason.OVERSIZE_PAYLOAD)
    assert DECODER.max_payload_bytes("sensor/x/audio") == AUDIO_MAX_PAYLOAD_BYTES
    assert DECODER.max_payload_bytes("sensor/x/temperature") == MAX_PAYLOAD_BYTES
    assert DECODER.max_payload_bytes("no/such/topic") == MAX_PAYLOAD_BYTES


def test_window_control_is_the_actuator_state_with_its_confidence() -> None:
    device_s = RECEIVED_US // US_PER_S - 1
    control = {
        "device_id": "esp32_001",
        "timestamp": device_s,
        "position": 75,
        "confidence": 0.92,
        "features_used": {"temperature": 25.5, "humidity": 61.0, "sound_volume": -40.0},
    }
    result = decoded("window/esp32_001/control", control)
    assert (result.device_id, result.channel) == ("esp32_001", "actuator")
    ts = device_s * US_PER_S
    assert sorted(result.readings) == [
        Reading("window_confidence", ts, 0.92),
        Reading("window_position", ts, 75.0),
    ]
    assert result.attributes == {"device_id": "esp32_001"}
    # Its features are the device's own readings again: never stored as readings of the order.
    for features_used in (["temperature"], {"temperature": 1.0}, "x", None):
        again = decoded("window/esp32_001/control", {**control, "features_used": features_used})
        assert sorted(again.readings) == sorted(result.readings)


def test_inference_requests_go_to_the_ml_loop_never_to_the_readings() -> None:
    at = format_us(RECEIVED_US - US_PER_S)
    request = {
        "device_id": "esp32_001",
        "timestamp": at,
        "temperature": 25.5,
        "humidity": 60,
        "sound_volume": -38.7,
    }
    result = decode("ml/inference/request/esp32_001", request)
    assert result == InferenceRequest(
        device_id="esp32_001",
        profile="sensor",
        received_us=RECEIVED_US,
        at_us=RECEIVED_US - US_PER_S,
        features={"temperature": 25.5, "humidity": 60.0, "sound_volume": -38.7},
        raw=request,
    )
    # A missing or unusable feature or time still makes a request (the loop refuses it, counted).
    bad = {"device_id": "esp32_001", "timestamp": 1, "temperature": "hot", "humidity": True}
    result = decode("ml/inference/request/esp32_001", bad)
    assert isinstance(result, InferenceRequest)
    assert result.at_us is None
    assert result.features == {"temperature": None, "humidity": None, "sound_volume": None}
    # Only what is not a JSON object is a dead letter.
    rejected("ml/inference/request/esp32_001", b"[1, 2]", RejectReason.NOT_AN_OBJECT)


def test_other_sensor_types_are_unknown_topics_not_silence() -> None:
    result = rejected("sensor/esp32_001/pressure", b"1013", RejectReason.UNKNOWN_TOPIC)
    assert result.profile == "sensor"


def test_a_bare_value_route_without_a_metric_is_refused_at_startup() -> None:
    broken = Profile(
        name="broken",
        subscriptions=("x/#",),
        routes=(Route("x/+/t", "telemetry", "number_text"),),
        stale_after_s=60,
    )
    with pytest.raises(ValueError, match="needs `metric`"):
        MessageDecoder([broken])
