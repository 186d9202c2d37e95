"""Nesting depth: every decoder that reads JSON takes any depth without a RecursionError. Up to
MAX_JSON_DEPTH levels decode as before; deeper is a `too_deep` dead letter, all the way past
orjson's own limit (1,024) and Python's recursion limit (~1,000)."""

from __future__ import annotations

import base64
import json
import struct
import sys
from collections.abc import Callable

import pytest

from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.messages import (
    CommandReply,
    Decoded,
    InferenceRequest,
    Rejected,
    RejectReason,
)
from fieldhub.protocol.payload import MAX_JSON_DEPTH, PayloadError, flatten, json_depth, parse_json
from fieldhub.protocol.profiles import DEFAULT_PROFILES, select_profiles
from fieldhub.protocol.timestamps import US_PER_S

RECEIVED_US = 1_795_442_400 * US_PER_S
DECODER = MessageDecoder(select_profiles(DEFAULT_PROFILES))
# Around the limit, around Python's recursion limit (where RecursionError began, ~990) and
# orjson's (1,024), and well past both.
DEPTHS = sorted(
    {1, 2, 3, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH + 2}
    | {254, 255, 256, 900, 989, 990, 1000, 1023, 1024, 1025, 1026, 2000}
)
_PCM = base64.b64encode(struct.pack("<4h", 100, -100, 100, -100)).decode()


def nested(levels: int, shape: str) -> str:
    """JSON text of `levels` objects/arrays inside each other around the number 1 (`1` itself
    for 0): `{"a":{"a":1}}`, `[[1]]`, or alternating `{"a":[{"a":[1]}]}`."""
    opens, closes = [], []
    for level in range(levels):
        if shape == "object" or (shape == "mixed" and level % 2 == 0):
            opens.append('{"a":')
            closes.append("}")
        else:
            opens.append("[")
            closes.append("]")
    return "".join(opens) + "1" + "".join(reversed(closes))


def around(fields: str) -> Callable[[int, str], bytes]:
    """A payload whose outer object holds `fields` and `x`, a value nested so that the whole
    payload is `depth` levels deep."""

    def build(depth: int, shape: str) -> bytes:
        return ("{" + fields + ', "x": ' + nested(depth - 1, shape) + "}").encode()

    return build


def alone(depth: int, shape: str) -> bytes:
    """The nested value as the whole telemetry payload, wrapped in an object when it would be a
    bare array (a top-level array is the backfill shape)."""
    if shape == "object":
        return nested(depth, shape).encode()
    return ('{"x": ' + nested(depth - 1, shape) + "}").encode()


# (topic, payload builder, what a payload within the limit decodes to): every route that reads
# JSON, of every profile.
JSON_ROUTES: list[tuple[str, Callable[[int, str], bytes], type]] = [
    ("devices/d1/telemetry", alone, Decoded),
    ("devices/d1/data", alone, Decoded),
    ("devices/d1/status", around('"state": "online"'), Decoded),
    ("devices/d1/commands/ack", around('"id": "c1", "status": "ok"'), CommandReply),
    (
        "/readings/gateway/3C:E9:0E:72:12:4C",
        around('"macAddress": "3C:E9:0E:72:12:4C", "timestamp": 93387, "rssi": 65'),
        Decoded,
    ),
    (
        "/readings/temperature/3C:E9:0E:72:12:4C",
        around('"macAddress": "3C:E9:0E:72:12:4C", "timestamp": 93387, "temperature": 21.4'),
        Decoded,
    ),
    ("iot/node/01/telemetry", alone, Decoded),
    ("iot/node/01/status", around('"uptime": 3600'), Decoded),
    ("sensor/esp32_ab12/audio", around(f'"data": "{_PCM}", "sample_rate": 16000'), Decoded),
    ("window/esp32_ab12/control", around('"position": 40, "confidence": 0.9'), Decoded),
    (
        "ml/inference/request/esp32_ab12",
        around('"temperature": 25.0, "humidity": 50.0, "sound_volume": -40.0'),
        InferenceRequest,
    ),
]


@pytest.mark.parametrize("shape", ["object", "array", "mixed"])
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(("topic", "build", "kind"), JSON_ROUTES, ids=[r[0] for r in JSON_ROUTES])
def test_every_json_route_takes_any_depth(
    topic: str, build: Callable[[int, str], bytes], kind: type, depth: int, shape: str
) -> None:
    """Within the limit a payload decodes as it would flat; past it, at any depth, it is
    too_deep naming the limit. Never internal_error, never malformed_json."""
    payload = build(depth, shape)
    assert json_depth(parse_json_unchecked(payload), stop=10**6) == depth
    result = DECODER.decode(topic, payload, RECEIVED_US)
    if depth <= MAX_JSON_DEPTH:
        assert isinstance(result, kind), result
    else:
        assert isinstance(result, Rejected), result
        assert result.reason is RejectReason.TOO_DEEP, result
        assert str(MAX_JSON_DEPTH) in result.detail
        assert result.device_id is not None


def parse_json_unchecked(payload: bytes) -> object:
    """The payload parsed without the depth limit (the stdlib parser, recursion allowed for it):
    the test's own measure of how deep the payload is."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        return json.loads(payload)
    finally:
        sys.setrecursionlimit(limit)


def test_the_deepest_accepted_telemetry_keeps_its_reading() -> None:
    """At exactly the limit the leaf is still a reading, named by its key."""
    result = DECODER.decode("devices/d1/telemetry", alone(MAX_JSON_DEPTH, "object"), RECEIVED_US)
    assert isinstance(result, Decoded)
    assert [(r.metric, r.value) for r in result.readings] == [("a", 1.0)]


def test_brackets_inside_strings_do_not_count() -> None:
    """Many brackets in text (the byte count's quick pass gives way to the real walk)."""
    payload = b'{"note": "' + b"[{" * 500 + b'", "t": 1}'
    assert parse_json(payload) == {"note": "[{" * 500, "t": 1}


def test_wide_payloads_are_not_deep() -> None:
    """Hundreds of sibling groups are one level each, whatever the bracket count."""
    payload = ("{" + ", ".join(f'"g{i}": {{"v": [1]}}' for i in range(200)) + "}").encode()
    assert json_depth(parse_json(payload), stop=MAX_JSON_DEPTH + 1) == 3


def test_flatten_refuses_depth_for_values_not_from_parse_json() -> None:
    """A value built in code, deeper than the limit, is too_deep in flatten too (no recursion
    past the limit whoever calls it)."""
    value: object = 1
    for _ in range(5000):
        value = [value]
    with pytest.raises(PayloadError) as refused:
        flatten({"x": value})
    assert refused.value.reason is RejectReason.TOO_DEEP


@pytest.mark.parametrize(
    ("value", "depth"),
    [(1, 0), ("s", 0), ({}, 1), ([], 1), ([1, [2, [3]]], 3), ({"a": [], "b": {"c": [{}]}}, 4)],
)
def test_json_depth_counts_objects_and_arrays(value: object, depth: int) -> None:
    assert json_depth(value, stop=100) == depth
