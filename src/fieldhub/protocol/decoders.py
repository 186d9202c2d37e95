"""Payload decoders, one function per payload shape, looked up by name from profile routes.

Each decoder turns a payload into a `Decoded` (or `Ignored`) and raises `PayloadError` or
`AbsurdTimestamp` for anything it cannot store; `decode.py` turns those into dead-letter reasons.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from fieldhub.protocol.audio import AudioError, measure_pcm, measure_wav
from fieldhub.protocol.messages import (
    AttributeValue,
    CommandReply,
    Decoded,
    Ignored,
    InferenceRequest,
    Reading,
    RejectReason,
)
from fieldhub.protocol.payload import (
    PayloadError,
    check_size,
    decode_text,
    flatten,
    number_of,
    parse_json,
)
from fieldhub.protocol.profiles import Profile, Route
from fieldhub.protocol.timestamps import AbsurdTimestamp, parse_device_time

# Field names a device uses for its own time; the first present wins.
TIME_KEYS = ("ts", "timestamp", "time")
# Envelope fields that describe the message, not the world: kept as attributes, never readings.
ENVELOPE_KEYS = frozenset({"v"})
# What a telemetry object's readings leave out when its time field held a date: made once, not
# per message.
SKIP_WITH_TIME = {key: ENVELOPE_KEYS | {key} for key in TIME_KEYS}
PRESENCE_WORDS = {"online": "online", "offline": "offline"}
# A bare number as firmware prints it (`25.5`, `-3`, ` 21.50`, `1e3`): Python's float() would also
# take `nan`, `inf` and `1_000`, which no sensor means.
NUMBER_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# The FastAPI/RabbitMQ stack's node (IoT_Platform_Node.ino) sends its heartbeat, its status
# message and its sensor data on one topic; these fields tell them apart (decode_fastapi_data).
FASTAPI_KIND_KEY = "type"
FASTAPI_HEARTBEAT = "heartbeat"
# Fields of a heartbeat that only tag it; neither becomes an attribute or a reading.
FASTAPI_HEARTBEAT_TAGS = frozenset({FASTAPI_KIND_KEY, "status"})
# Only publishStatus() sends ESP.getFreeHeap().
FASTAPI_STATUS_MARKER = "free_heap"
# The attribute holding a status message's `timestamp` (the node's local clock, not a time).
FASTAPI_STATUS_TIME = "status_time"
# Headerless PCM (no RIFF header) is read as this: the I2S microphones the stacks use deliver
# 16-bit mono samples.
HEADERLESS_PCM_SAMPLE_BYTES = 2


@dataclass(slots=True)
class DecodeContext:
    """What a decoder knows besides the payload."""

    device_id: str
    profile: Profile
    route: Route
    received_us: int

    def new(self) -> Decoded:
        """An empty result for this message."""
        return Decoded(
            device_id=self.device_id,
            profile=self.profile.name,
            channel=self.route.channel,
            received_us=self.received_us,
        )

    def name(self, field_name: str) -> str:
        """The fieldhub metric/attribute name for a payload field name: the route's rename, else
        the profile's, else the field's own name."""
        renamed = self.route.renames.get(field_name)
        if renamed is not None:
            return renamed
        return self.profile.renames.get(field_name, field_name)

    def metric(self) -> str:
        """The reading name of a route whose payload is a bare value."""
        if self.route.metric is None:
            raise ValueError(f"route {self.route.pattern!r} needs a metric for a bare value")
        return self.route.metric


Decoder = Callable[[bytes, DecodeContext], Decoded | Ignored | CommandReply | InferenceRequest]
# The features a window decision needs, as the backbone's models.InferenceRequest names them.
INFERENCE_FEATURES = ("temperature", "humidity", "sound_volume")
# The longest command id a device may echo back (the firmware's limit, fieldhub_node.commands).
MAX_COMMAND_ID_CHARS = 64
# A device's error text is kept up to this length; the firmware cuts its own shorter.
MAX_COMMAND_ERROR_CHARS = 500


def _device_time(
    data: dict[str, Any], ctx: DecodeContext, result: Decoded
) -> tuple[str | None, int]:
    """The object's time field name and the readings' time: the device's when the field holds a
    date (then `result.device_time` is set), the receive time otherwise."""
    # A loop, not next() over a generator: this runs for every telemetry message, and making
    # the generator costs more than the three lookups.
    time_key = None
    for key in TIME_KEYS:
        if key in data:
            time_key = key
            break
    if time_key is not None:
        verdict = parse_device_time(data[time_key], ctx.received_us)
        if verdict.kind == "time" and verdict.ts_us is not None:
            result.device_time = True
            return time_key, verdict.ts_us
    return time_key, ctx.received_us


def _object_readings(data: dict[str, Any], ctx: DecodeContext, result: Decoded) -> None:
    """Fill `result` from one telemetry object with an optional time field."""
    time_key, ts_us = _device_time(data, ctx, result)
    skip = ENVELOPE_KEYS
    if time_key is not None and result.device_time:
        skip = SKIP_WITH_TIME[time_key]
    flat = flatten(data, skip=skip)
    for key in ENVELOPE_KEYS:
        if key in data:
            tag = data[key]
            result.attributes[key] = tag if isinstance(tag, str | int | float) else str(tag)
    # A list, not a generator: cheaper, and every telemetry message comes here.
    rename = ctx.name
    result.readings.extend(
        [Reading(rename(key), ts_us, value) for key, value in flat.numbers.items()]
    )
    for name, value in flat.attributes.items():
        result.attributes[ctx.name(name)] = value


def _backfill_entry(entry: Any, ctx: DecodeContext, result: Decoded) -> None:
    """One `{"ts": <epoch ms>, "values": {...}}` entry a device sends late from its buffer."""
    if not (isinstance(entry, dict) and "ts" in entry and isinstance(entry.get("values"), dict)):
        raise PayloadError(
            RejectReason.NOT_AN_OBJECT,
            'a JSON array is accepted only as a list of {"ts": <epoch ms>, "values": {...}}'
            " entries",
        )
    verdict = parse_device_time(entry["ts"], ctx.received_us)
    if verdict.kind != "time" or verdict.ts_us is None:
        raise AbsurdTimestamp(f"buffered entry has ts {entry['ts']!r}, which is not a date")
    flat = flatten(entry["values"])
    if flat.attributes:
        name = next(iter(flat.attributes))
        raise PayloadError(
            RejectReason.EXPECTED_NUMBER,
            f"values.{name} is {flat.attributes[name]!r};"
            " buffered values must be numbers or booleans",
        )
    result.readings.extend(
        Reading(ctx.name(name), verdict.ts_us, value) for name, value in flat.numbers.items()
    )
    result.device_time = True


def decode_json_telemetry(payload: bytes, ctx: DecodeContext) -> Decoded:
    """Native telemetry: a JSON object, a `{ts, values}` backfill entry, or a list of those."""
    return _telemetry(parse_json(payload), ctx)


def _telemetry(data: Any, ctx: DecodeContext) -> Decoded:
    """`decode_json_telemetry` of a payload already parsed."""
    result = ctx.new()
    if isinstance(data, list):
        if not data:
            raise PayloadError(RejectReason.NO_READINGS, "payload is an empty JSON array")
        for entry in data:
            _backfill_entry(entry, ctx, result)
    elif isinstance(data, dict):
        if "values" in data and "ts" in data:
            _backfill_entry(data, ctx, result)
        else:
            _object_readings(data, ctx, result)
    else:
        raise PayloadError(
            RejectReason.NOT_AN_OBJECT,
            f"payload is a JSON {type(data).__name__}, expected an object",
        )
    if not result.readings and not result.attributes:
        raise PayloadError(RejectReason.NO_READINGS, "payload holds no numbers and no attributes")
    return result


def decode_readings(payload: bytes, ctx: DecodeContext) -> Decoded:
    """The Flask gateway stack: `{"macAddress": ..., "timestamp": <uptime ms>, "rssi": 65}`.

    Its schema is fixed, so a missing or non-numeric required field is an error, not an attribute.
    """
    data = parse_json(payload)
    if not isinstance(data, dict):
        raise PayloadError(
            RejectReason.NOT_AN_OBJECT,
            f"payload is a JSON {type(data).__name__}, expected an object",
        )
    for name in (*ctx.route.required, "timestamp"):
        if name not in data:
            if name == "timestamp":
                continue
            raise PayloadError(RejectReason.MISSING_FIELD, f"field {name!r} is missing")
        # The firmware sends uptime as a number; the stack's own publish-test endpoint sent a
        # date string, which dates the readings. Any other string is still refused.
        if (
            name == "timestamp"
            and isinstance(data[name], str)
            and parse_device_time(data[name], ctx.received_us).kind == "time"
        ):
            continue
        if number_of(data[name]) is None:
            raise PayloadError(
                RejectReason.EXPECTED_NUMBER, f"field {name!r} is {data[name]!r}, expected a number"
            )
    if "macAddress" in data and not isinstance(data["macAddress"], str):
        raise PayloadError(RejectReason.MISSING_FIELD, "field 'macAddress' must be a string")
    result = ctx.new()
    _object_readings(data, ctx, result)
    return result


def decode_status(payload: bytes, ctx: DecodeContext) -> Decoded | Ignored:
    """Presence: `online`/`offline` text, or JSON with `state`/`status`, or a JSON heartbeat.

    An empty payload is how a retained status is cleared, not an error. Other text (`updating`) is
    kept as the `status` attribute without changing presence.
    """
    if not payload:
        return Ignored(ctx.route.channel)
    check_size(payload)
    text = decode_text(payload).strip()
    word = PRESENCE_WORDS.get(text.lower())
    result = ctx.new()
    if word is not None:
        result.presence = "online" if word == "online" else "offline"
        return result
    if not text.startswith("{"):
        if not text:
            raise PayloadError(RejectReason.BAD_STATUS, "status payload is blank")
        result.attributes["status"] = text
        return result
    data = parse_json(payload)
    if not isinstance(data, dict):
        raise PayloadError(RejectReason.NOT_AN_OBJECT, "status JSON must be an object")
    state_key = next((key for key in ("state", "status") if isinstance(data.get(key), str)), None)
    state = PRESENCE_WORDS.get(str(data[state_key]).lower()) if state_key else None
    if state_key is not None and state is not None:
        data = {key: value for key, value in data.items() if key != state_key}
    _object_readings(data, ctx, result)
    # A JSON heartbeat without a recognised state still proves the device is talking.
    result.presence = "offline" if state == "offline" else "online"
    return result


def _attribute_of(value: Any) -> AttributeValue:
    """A JSON value kept whole as one attribute: scalars as they are, a group as its JSON text."""
    if value is None or isinstance(value, str | int | float):
        return value
    return orjson.dumps(value).decode()


def decode_fastapi_data(payload: bytes, ctx: DecodeContext) -> Decoded:
    """The FastAPI/RabbitMQ stack's node on `devices/{MAC}/data`: three kinds of JSON object.

    The firmware (`IoT_Platform_Node.ino`) publishes all of them on this one topic:

    - `publishHeartbeat()`: `{"type":"heartbeat","status":"online","node_id","uptime"}` every
      3 s. Presence online; `type` and `status` say nothing more, so neither is kept (a
      heartbeat whose `status` is not `online` contradicts itself: dead letter `bad_status`).
    - `publishStatus(state)`: `{"timestamp","status","uptime","free_heap","wifi_rssi",
      "node_id","servo_angle","gas_sensor","signal_strength"}` on connect, on a STATUS_REQUEST,
      before a reboot and around an OTA update. Told apart by `free_heap`, which only it sends.
      `status` is kept as the `status` attribute: the `fastapi` command format reads it (with
      `uptime_ms`) to end REBOOT, STATUS_REQUEST and FIRMWARE_UPDATE. A `status` that is not a
      non-blank string is `bad_status`. Presence is online when the state is `online`; other
      states leave presence alone (the node is still connected when it says `rebooting`).
    - `readAndPublishSensors()`, every second: everything else, decoded as plain telemetry.

    `uptime` is `millis()` in all three and the route renames it `uptime_ms`.
    """
    data = parse_json(payload)
    if isinstance(data, dict):
        if data.get(FASTAPI_KIND_KEY) == FASTAPI_HEARTBEAT:
            return _fastapi_heartbeat(data, ctx)
        if FASTAPI_STATUS_MARKER in data:
            return _fastapi_status(data, ctx)
    return _telemetry(data, ctx)


def _fastapi_heartbeat(data: dict[str, Any], ctx: DecodeContext) -> Decoded:
    """`{"type":"heartbeat","status":"online","node_id","uptime"}`: see decode_fastapi_data."""
    fields = {key: value for key, value in data.items() if key not in FASTAPI_HEARTBEAT_TAGS}
    if "status" in data:
        state = data["status"]
        if not (isinstance(state, str) and PRESENCE_WORDS.get(state.strip().lower()) == "online"):
            raise PayloadError(
                RejectReason.BAD_STATUS,
                f"a heartbeat's status must be 'online' (the firmware sends no other), got "
                f"{str(state)[:40]!r}",
            )
    result = ctx.new()
    _object_readings(fields, ctx, result)
    result.presence = "online"
    return result


def _fastapi_status(data: dict[str, Any], ctx: DecodeContext) -> Decoded:
    """`publishStatus(state)`'s object: see decode_fastapi_data."""
    state = data.get("status")
    if not isinstance(state, str) or not state.strip():
        raise PayloadError(
            RejectReason.BAD_STATUS,
            f"a status message (it has {FASTAPI_STATUS_MARKER!r}) needs a non-blank string "
            f"'status', got {str(state)[:40]!r}",
        )
    fields = {key: value for key, value in data.items() if key not in ("status", "timestamp")}
    result = ctx.new()
    _object_readings(fields, ctx, result)
    result.attributes["status"] = state
    if "timestamp" in data:
        # The node's local wall clock (`%Y-%m-%d %H:%M:%S` in the firmware's configured zone,
        # UTC+5:30 as shipped, with no offset written) or "unknown" before NTP. Read as UTC it
        # would date the readings hours off and still pass the one-day future check, so it is
        # never the reading time: it is kept as text, named for the message it came with
        # (`timestamp` is the sensor data's "HH:MM:SS" clock, which it would overwrite).
        result.attributes[FASTAPI_STATUS_TIME] = _attribute_of(data["timestamp"])
    if state.strip().lower() == "online":
        result.presence = "online"
    return result


def decode_number_text(payload: bytes, ctx: DecodeContext) -> Decoded:
    """A bare number as text (`25.5`), one reading named by the route, at the receive time."""
    check_size(payload, ctx.route.max_payload_bytes)
    text = decode_text(payload).strip()
    if not NUMBER_TEXT.fullmatch(text):
        raise PayloadError(
            RejectReason.EXPECTED_NUMBER, f"payload {text[:40]!r} is not a number as text"
        )
    value = number_of(float(text))
    assert value is not None  # float() gives a float; number_of only refuses it when infinite
    result = ctx.new()
    result.readings.append(Reading(ctx.metric(), ctx.received_us, value))
    return result


def decode_sound_level(payload: bytes, ctx: DecodeContext) -> Decoded:
    """`{"data": "<base64 WAV>", "sample_rate": 16000, "duration": 2.0}` -> its level in dBFS.

    The WAV header is authoritative; `sample_rate` is used only for headerless PCM. A device time
    field (`ts`/`timestamp`/`time`), when it holds a date, dates the reading.
    """
    data = parse_json(payload, ctx.route.max_payload_bytes)
    if not isinstance(data, dict):
        raise PayloadError(
            RejectReason.NOT_AN_OBJECT,
            f"payload is a JSON {type(data).__name__}, expected an object with base64 `data`",
        )
    encoded = data.get("data")
    if not isinstance(encoded, str):
        raise PayloadError(RejectReason.MISSING_FIELD, "field 'data' (base64 audio) is missing")
    try:
        clip = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(RejectReason.BAD_AUDIO, "field 'data' is not valid base64") from None
    try:
        if clip[:4] == b"RIFF":
            level = measure_wav(clip)
        else:
            rate = number_of(data.get("sample_rate"))
            if rate is None or rate != int(rate):
                raise AudioError("no RIFF header, and no integer `sample_rate` to read raw PCM")
            level = measure_pcm(
                clip, sample_bytes=HEADERLESS_PCM_SAMPLE_BYTES, channels=1, sample_rate=int(rate)
            )
    except AudioError as exc:
        raise PayloadError(RejectReason.BAD_AUDIO, str(exc)) from None
    result = ctx.new()
    _, ts_us = _device_time(data, ctx, result)
    result.readings.append(Reading(ctx.metric(), ts_us, level.dbfs))
    return result


def decode_command_ack(payload: bytes, ctx: DecodeContext) -> CommandReply:
    """`{"id","status":"ok","result":{...}}` or `{"id","status":"error","error":"..."}`."""
    data = parse_json(payload)
    if not isinstance(data, dict):
        raise PayloadError(RejectReason.NOT_AN_OBJECT, "a command ack must be a JSON object")
    command_id = data.get("id")
    if not isinstance(command_id, str) or not 1 <= len(command_id) <= MAX_COMMAND_ID_CHARS:
        raise PayloadError(
            RejectReason.BAD_COMMAND_ACK,
            f"ack id must be a string of 1..{MAX_COMMAND_ID_CHARS} characters, got {command_id!r}",
        )
    status = data.get("status")
    if status not in ("ok", "error"):
        raise PayloadError(
            RejectReason.BAD_COMMAND_ACK, f"ack status must be 'ok' or 'error', got {status!r}"
        )
    error = data.get("error")
    if status == "error":
        text = error if isinstance(error, str) and error else "the device reported an error"
        error = text[:MAX_COMMAND_ERROR_CHARS]
    else:
        error = None
    return CommandReply(
        device_id=ctx.device_id,
        profile=ctx.profile.name,
        command_id=command_id,
        ok=status == "ok",
        result=data.get("result"),
        error=error,
        received_us=ctx.received_us,
    )


def decode_window_control(payload: bytes, ctx: DecodeContext) -> Decoded:
    """The window-control stack's ML order (`window/{id}/control`): its position and confidence
    are the window's state. `features_used` is left out: it repeats the decision's inputs (window
    means the device's own readings already gave), which stored again would be readings the
    device never made, at the order's time."""
    data = parse_json(payload)
    if not isinstance(data, dict):
        raise PayloadError(
            RejectReason.NOT_AN_OBJECT,
            f"payload is a JSON {type(data).__name__}, expected an object",
        )
    data.pop("features_used", None)
    return _telemetry(data, ctx)


def decode_ml_request(payload: bytes, ctx: DecodeContext) -> InferenceRequest:
    """The backbone's inference request. Only a payload that is not a JSON object is a dead
    letter; a missing, non-numeric or non-finite feature, or an unreadable timestamp, still makes
    a request, which the ML loop refuses and counts with the reason (the backbone is told
    nothing either way: it never hears back about a refusal)."""
    data = parse_json(payload)
    if not isinstance(data, dict):
        raise PayloadError(
            RejectReason.NOT_AN_OBJECT,
            f"payload is a JSON {type(data).__name__}, expected an object",
        )
    features: dict[str, float | None] = {}
    for name in INFERENCE_FEATURES:
        value = data.get(name)
        number = (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
        features[name] = number if number is not None and math.isfinite(number) else None
    at_us: int | None = None
    try:
        when = parse_device_time(data.get("timestamp"), ctx.received_us)
        at_us = when.ts_us if when.kind == "time" else None
    except AbsurdTimestamp:
        at_us = None
    return InferenceRequest(
        device_id=ctx.device_id,
        profile=ctx.profile.name,
        received_us=ctx.received_us,
        at_us=at_us,
        features=features,
        raw=data,
    )


def decode_ignore(payload: bytes, ctx: DecodeContext) -> Ignored:
    """Topics fieldhub publishes itself or that a later feature consumes."""
    return Ignored(ctx.route.channel)


# Decoders of payloads that carry a bare value: their routes must name the reading (`metric`).
BARE_VALUE_DECODERS = frozenset({"number_text", "sound_level"})

DECODERS: Mapping[str, Decoder] = {
    "json_telemetry": decode_json_telemetry,
    "fastapi_data": decode_fastapi_data,
    "readings": decode_readings,
    "status": decode_status,
    "number_text": decode_number_text,
    "sound_level": decode_sound_level,
    "command_ack": decode_command_ack,
    "window_control": decode_window_control,
    "ml_request": decode_ml_request,
    "ignore": decode_ignore,
}
