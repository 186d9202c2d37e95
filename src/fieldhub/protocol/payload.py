"""JSON payload parsing and flattening into named readings and attributes.

Numbers (and booleans, as 0/1) anywhere in an object become readings named by their key; a nested
group's leaves are named by their dotted path only when two leaves would otherwise share a name
(`{"sensors": {"temperature": 22.5}}` gives `temperature`). Strings and nulls are attributes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from fieldhub.protocol.messages import AttributeValue, RejectReason

# A telemetry message carries a handful of sensor values; 64 KiB is generous for JSON and still
# keeps one device from filling the disk through dead letters or the metric dictionary.
MAX_PAYLOAD_BYTES = 64 * 1024
# More fields than this in one message is a bug in the device (or an attack on the metric table).
MAX_FIELDS_PER_MESSAGE = 256
MAX_NAME_CHARS = 128
# Objects and arrays inside each other, the outermost counting 1. Telemetry nests a group or two
# (`{"sensors": {"temperature": 22.5}}` is 2); 32 is far beyond any stack's payload and far below
# where things break: Python's recursion limit (~1,000 frames: flattening) and orjson's encoder
# (255 levels: an ack's `result` stored as JSON). orjson's parser stops at 1,024 by itself.
MAX_JSON_DEPTH = 32
# orjson's message for nesting past its own limit: that is too_deep as well, not malformed_json.
_ORJSON_DEPTH_MESSAGE = "depth limit exceeded"


class PayloadError(ValueError):
    """The payload cannot be read as data; carries the dead-letter reason code."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _refuse_constant(name: str) -> float:
    raise PayloadError(RejectReason.NON_FINITE_NUMBER, f"{name} is not a number JSON can carry")


def _refuse_infinite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise PayloadError(
            RejectReason.NON_FINITE_NUMBER, f"{text[:40]} is too large for a 64-bit float"
        )
    return number


def check_size(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> None:
    """Reject empty and oversize payloads before any parsing work."""
    if not payload:
        raise PayloadError(RejectReason.EMPTY_PAYLOAD, "payload is empty")
    if len(payload) > limit:
        raise PayloadError(
            RejectReason.OVERSIZE_PAYLOAD, f"payload is {len(payload)} bytes, the limit is {limit}"
        )


def decode_text(payload: bytes) -> str:
    """UTF-8 text of a payload, or PayloadError(not_utf8) naming the first bad byte."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            RejectReason.NOT_UTF8,
            f"payload is not UTF-8: byte {exc.start} is {payload[exc.start]:#04x}",
        ) from None


def parse_json(payload: bytes, limit: int = MAX_PAYLOAD_BYTES) -> Any:
    """Parse JSON with the checks a device payload needs.

    orjson is fast but reports NaN/Infinity (and numbers beyond a double, like 1e400) as a generic
    syntax error; the slow path below runs only for payloads that already failed, to give the
    device author the specific reason. Nesting deeper than `MAX_JSON_DEPTH` is too_deep, checked
    here for every decoder before anything walks the value. `limit` is the route's payload size
    limit.
    """
    check_size(payload, limit)
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith(_ORJSON_DEPTH_MESSAGE):
            raise _too_deep() from None
        decode_text(payload)
        try:
            json.loads(
                payload,
                parse_constant=_refuse_constant,
                parse_float=_refuse_infinite,
                parse_int=_refuse_infinite,
            )
        except PayloadError:
            raise
        except (ValueError, RecursionError):
            pass
        raise PayloadError(
            RejectReason.MALFORMED_JSON, f"payload is not valid JSON: {exc}"
        ) from None
    # Each level opens and closes a bracket, so a payload shorter than twice the limit, or with
    # no more opening brackets than the limit, cannot nest deeper: a length test and one pass
    # in C counting both brackets (translate: cheaper than two count() calls) spare nearly every
    # message the walk.
    if (
        len(payload) > 2 * MAX_JSON_DEPTH
        and len(payload) - len(payload.translate(None, b"{[")) > MAX_JSON_DEPTH
        and json_depth(data, stop=MAX_JSON_DEPTH + 1) > MAX_JSON_DEPTH
    ):
        raise _too_deep()
    return data


def _too_deep() -> PayloadError:
    return PayloadError(
        RejectReason.TOO_DEEP,
        f"payload nests objects and arrays more than {MAX_JSON_DEPTH} levels deep",
    )


def json_depth(value: Any, *, stop: int) -> int:
    """How many objects and arrays nest in a parsed JSON value (a scalar 0, `{}` and `[1]` 1),
    found without recursion, so any depth is safe; counting ends once it reaches `stop`."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > deepest:
            deepest = depth
            if deepest >= stop:
                return deepest
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def number_of(value: Any) -> float | None:
    """The reading value of a JSON leaf, or None when the leaf is not numeric. Booleans are 0/1."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            raise PayloadError(RejectReason.NON_FINITE_NUMBER, f"value {value!r} is not finite")
        return number
    return None


@dataclass(slots=True)
class Flattened:
    """Readings and attributes found in one JSON object."""

    numbers: dict[str, float] = field(default_factory=dict)
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


def _leaves(
    obj: Any, path: tuple[str, ...], out: list[tuple[tuple[str, ...], Any]], depth: int
) -> None:
    """Append the leaves of `obj`, found `depth` objects and arrays deep, to `out`."""
    if depth > MAX_JSON_DEPTH and isinstance(obj, dict | list):
        # parse_json refuses such payloads already; this keeps the recursion bounded for a
        # caller that built the value itself.
        raise _too_deep()
    if isinstance(obj, dict):
        for key, value in obj.items():
            _leaves(value, (*path, str(key)), out, depth + 1)
    elif isinstance(obj, list):
        # An index is no name: `{"temp": [21.5, 22.0]}` gives `temp.0`, `temp.1`, never `0`, `1`.
        for index, value in enumerate(obj):
            name = f"{path[-1]}.{index}" if path else str(index)
            _leaves(value, (*path[:-1], name), out, depth + 1)
    else:
        out.append((path, obj))
    if len(out) > MAX_FIELDS_PER_MESSAGE:
        raise PayloadError(
            RejectReason.TOO_MANY_FIELDS,
            f"more than {MAX_FIELDS_PER_MESSAGE} fields in one message",
        )


def _check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise PayloadError(
            RejectReason.BAD_FIELD_NAME,
            f"field name {name[:40]!r} must be 1..{MAX_NAME_CHARS} printable characters",
        )
    return name


def flatten(obj: dict[str, Any], *, skip: frozenset[str] = frozenset()) -> Flattened:
    """Split an object into numeric readings and attributes (see the module docstring).

    Keys in `skip` at the top level are envelope fields handled by the caller.
    """
    if len(obj) <= MAX_FIELDS_PER_MESSAGE:
        flat = _flatten_flat(obj, skip)
        if flat is not None:
            return flat
    leaves: list[tuple[tuple[str, ...], Any]] = []
    for key, value in obj.items():
        if key not in skip:
            # 2: a group directly in `obj` is the second level (obj itself is the first).
            _leaves(value, (str(key),), leaves, 2)
    name_counts: dict[str, int] = {}
    for path, _ in leaves:
        name_counts[path[-1]] = name_counts.get(path[-1], 0) + 1
    result = Flattened()
    for path, value in leaves:
        name = _check_name(path[-1] if name_counts[path[-1]] == 1 else ".".join(path))
        if name in result.numbers or name in result.attributes:
            # `{"a.b": 1, "a": {"b": 2}, "c": {"b": 3}}`: a key with a dot equals a dotted path.
            # Keeping either value would silently drop the other.
            raise PayloadError(RejectReason.BAD_FIELD_NAME, f"two fields are both named {name!r}")
        number = number_of(value)
        if number is not None:
            result.numbers[name] = number
        elif isinstance(value, str) or value is None:
            result.attributes[name] = value
    return result


def _flatten_flat(obj: dict[str, Any], skip: frozenset[str]) -> Flattened | None:
    """`flatten` for an object without nested groups (nearly every device payload): names are
    the keys, no clash is possible, no paths to build. None when a value is a group."""
    result = Flattened()
    numbers = result.numbers
    for key, value in obj.items():
        if key in skip:
            continue
        if isinstance(value, dict | list):
            return None
        name = _check_name(key)
        number = number_of(value)
        if number is not None:
            numbers[name] = number
        elif isinstance(value, str) or value is None:
            result.attributes[name] = value
    return result


PREVIEW_CHARS = 200


def payload_preview(payload: bytes, limit: int = PREVIEW_CHARS) -> str:
    """A short human-readable view of a raw payload: its text when it is UTF-8, hex otherwise.

    Dead-letter views show this; the full bytes stay in the store and the API.
    """
    head = payload[: limit * 4]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Only a character cut in two by the `head` slice itself is text; anything else is binary.
        if not (len(payload) > len(head) and exc.reason == "unexpected end of data"):
            hexed = payload[: limit // 3].hex(" ")
            return f"hex: {hexed}" + (" …" if len(payload) > limit // 3 else "")
        text = head[: exc.start].decode("utf-8")
    more = len(text) > limit or len(payload) > len(head)
    return text[:limit] + ("…" if more else "")
