"""Payload decoders, one function per payload shape, looked up by name from profile routes.

Each decoder turns a payload into a `Decoded` (or `Ignored`) and raises `PayloadError` or
`AbsurdTimestamp` for anything it cannot store; `decode.py` turns those into dead-letter reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fieldhub.protocol.messages import Decoded, Ignored, Reading, RejectReason
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
PRESENCE_WORDS = {"online": "online", "offline": "offline"}


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
        """The fieldhub metric/attribute name for a payload field name."""
        return self.profile.renames.get(field_name, field_name)


Decoder = Callable[[bytes, DecodeContext], Decoded | Ignored]


def _object_readings(data: dict[str, Any], ctx: DecodeContext, result: Decoded) -> None:
    """Fill `result` from one telemetry object with an optional time field."""
    time_key = next((key for key in TIME_KEYS if key in data), None)
    ts_us = ctx.received_us
    if time_key is not None:
        verdict = parse_device_time(data[time_key], ctx.received_us)
        if verdict.kind == "time" and verdict.ts_us is not None:
            ts_us = verdict.ts_us
            result.device_time = True
    skip = ENVELOPE_KEYS
    if time_key is not None and result.device_time:
        skip = ENVELOPE_KEYS | {time_key}
    flat = flatten(data, skip=skip)
    for key in ENVELOPE_KEYS & data.keys():
        tag = data[key]
        result.attributes[key] = tag if isinstance(tag, str | int | float) else str(tag)
    result.readings.extend(
        Reading(ctx.name(name), ts_us, value) for name, value in flat.numbers.items()
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
    data = parse_json(payload)
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


def decode_ignore(payload: bytes, ctx: DecodeContext) -> Ignored:
    """Topics fieldhub publishes itself or that a later feature consumes."""
    return Ignored(ctx.route.channel)


DECODERS: Mapping[str, Decoder] = {
    "json_telemetry": decode_json_telemetry,
    "readings": decode_readings,
    "status": decode_status,
    "ignore": decode_ignore,
}
