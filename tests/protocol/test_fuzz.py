"""Property tests: MessageDecoder.decode never raises and its results keep their promises."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.ids import canonical_device_id
from fieldhub.protocol.messages import Decoded, Ignored, Rejected, RejectReason
from fieldhub.protocol.payload import MAX_NAME_CHARS
from fieldhub.protocol.profiles import select_profiles
from fieldhub.protocol.timestamps import FUTURE_TOLERANCE_US, MIN_PLAUSIBLE_US, US_PER_S

DECODER = MessageDecoder(select_profiles(["native", "readings"]))
NOW_US = 1_795_442_400 * US_PER_S

_ids = st.one_of(
    st.sampled_from(
        [
            "3C:E9:0E:72:12:4C",
            "3ce90e72124c",
            "aa-bb-cc-dd-ee-ff",
            "esp32_01",
            "",
            "+",
            "#",
            "a b",
            "n\n",
            "x" * 129,
        ]
    ),
    st.text(max_size=12),
)
_shapes = st.sampled_from(
    [
        "devices/{}/telemetry",
        "devices/{}/data",
        "devices/{}/status",
        "devices/{}/commands",
        "devices/{}/commands/ack",
        "devices/{}/ota",
        "devices/{}/ota/status",
        "devices/{}/audio",
        "/readings/gateway/{}",
        "/readings/temperature/{}",
        "devices/{}/foo",
        "/readings/{}/x",
        "{}",
        "devices/{}",
        "sensor/{}/temperature",
    ]
)
_random_topics = st.lists(
    st.one_of(
        st.sampled_from(["devices", "readings", "", "status", "data", "+", "#"]),
        st.text(max_size=6),
    ),
    min_size=1,
    max_size=5,
).map("/".join)
_topics = st.one_of(st.builds(lambda shape, raw: shape.format(raw), _shapes, _ids), _random_topics)

_keys = st.one_of(
    st.sampled_from(
        [
            "ts",
            "timestamp",
            "time",
            "values",
            "state",
            "status",
            "v",
            "rssi",
            "temperature",
            "macAddress",
            "uptime",
            "a.b",
            "",
            "t",
        ]
    ),
    st.text(max_size=6),
)
_times = st.one_of(
    st.integers(0, 2 * 10**19),
    st.floats(),
    st.sampled_from(["2026-11-23T13:00:00Z", "12:34:56", "unknown", "2300-01-01", "1970-01-01"]),
    st.integers(MIN_PLAUSIBLE_US // 1000, NOW_US // 1000),
)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6), _times
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=5)
    ),
    max_leaves=25,
)
_backfill = st.lists(
    st.fixed_dictionaries({"ts": _times, "values": st.dictionaries(_keys, _scalars, max_size=4)}),
    max_size=3,
)


def _encode(value: Any) -> bytes:
    # json.dumps writes NaN/Infinity and huge integers on purpose: the decoder must refuse them.
    return json.dumps(value).encode()


_payloads = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"online", b" Offline\n", b"updating", b"{", b"[]", b"\xff\xfe"]),
    _json_values.map(_encode),
    st.dictionaries(_keys, _json_values, max_size=6).map(_encode),
    _backfill.map(_encode),
)
_received = st.integers(MIN_PLAUSIBLE_US, NOW_US + 10 * 365 * 86_400 * US_PER_S)


def _check(topic: str, payload: bytes, received_us: int) -> None:
    result = DECODER.decode(topic, payload, received_us)
    assert isinstance(result, Decoded | Rejected | Ignored)
    if isinstance(result, Rejected):
        assert isinstance(result.reason, RejectReason)
        assert result.reason is not RejectReason.INTERNAL_ERROR, result
        assert result.detail
        return
    if isinstance(result, Ignored):
        return
    assert canonical_device_id(result.device_id) == result.device_id
    assert result.received_us == received_us
    assert result.readings or result.attributes or result.presence is not None
    for reading in result.readings:
        assert math.isfinite(reading.value)
        assert 1 <= len(reading.metric) <= MAX_NAME_CHARS
        if result.device_time:
            assert MIN_PLAUSIBLE_US <= reading.ts_us <= received_us + FUTURE_TOLERANCE_US
        else:
            assert reading.ts_us == received_us
    for name in result.attributes:
        assert 1 <= len(name) <= MAX_NAME_CHARS


@settings(max_examples=400)
@given(_topics, _payloads, _received)
def test_decode_never_raises_and_results_are_well_formed(
    topic: str, payload: bytes, received_us: int
) -> None:
    """Arbitrary topics and payloads give Decoded | Rejected | Ignored with kept promises."""
    _check(topic, payload, received_us)


_data_topics = st.builds(
    lambda shape, raw: shape.format(raw),
    st.sampled_from(
        [
            "devices/{}/telemetry",
            "devices/{}/data",
            "devices/{}/status",
            "/readings/gateway/{}",
            "/readings/temperature/{}",
        ]
    ),
    st.sampled_from(["3c-e9-0e-72-12-4c", "node-1"]),
)


@settings(max_examples=400)
@given(
    _data_topics,
    st.one_of(
        st.dictionaries(_keys, _json_values, max_size=6).map(_encode), _backfill.map(_encode)
    ),
    _received,
)
def test_decode_of_json_on_data_topics(topic: str, payload: bytes, received_us: int) -> None:
    """JSON objects and backfill lists on routed data topics are never an internal error."""
    _check(topic, payload, received_us)


@given(
    st.dictionaries(
        st.sampled_from(["t", "h", "rssi", "temperature", "x"]),
        st.floats(allow_nan=False, allow_infinity=False) | st.integers(-1000, 1000),
        min_size=1,
    ),
    _received,
)
def test_numeric_objects_decode_to_exactly_their_values(
    values: dict[str, Any], received_us: int
) -> None:
    """A flat object of finite numbers decodes to one reading per key at the receive time."""
    result = DECODER.decode("devices/node-1/telemetry", _encode(values), received_us)
    assert isinstance(result, Decoded)
    assert {r.metric: r.value for r in result.readings} == {k: float(v) for k, v in values.items()}
    assert {r.ts_us for r in result.readings} == {received_us}
