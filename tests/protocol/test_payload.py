"""JSON payload parsing and flattening into readings and attributes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldhub.protocol.messages import RejectReason
from fieldhub.protocol.payload import (
    MAX_FIELDS_PER_MESSAGE,
    MAX_NAME_CHARS,
    MAX_PAYLOAD_BYTES,
    PayloadError,
    check_size,
    decode_text,
    flatten,
    number_of,
    parse_json,
)


def _reason(payload: bytes) -> RejectReason:
    with pytest.raises(PayloadError) as info:
        parse_json(payload)
    assert info.value.detail
    return info.value.reason


def test_nested_names_flatten_to_leaf_names() -> None:
    """`{"sensors": {"temperature": 22.5}}` gives `temperature`, not `sensors.temperature`."""
    flat = flatten({"sensors": {"temperature": 22.5, "humidity": 45.2}, "wifi_rssi": -65})
    assert flat.numbers == {"temperature": 22.5, "humidity": 45.2, "wifi_rssi": -65.0}
    assert flat.attributes == {}


def test_clashing_leaf_names_are_dotted_and_only_those() -> None:
    """Leaves that share a name keep their full path; unique leaves keep the short name."""
    flat = flatten({"indoor": {"temp": 21.0}, "outdoor": {"temp": 3.5}, "x": {"hum": 40}})
    assert flat.numbers == {"indoor.temp": 21.0, "outdoor.temp": 3.5, "hum": 40.0}


def test_top_level_leaf_clashing_with_a_nested_one() -> None:
    """A top-level key and a nested key of the same name are `temp` and `inner.temp`."""
    flat = flatten({"temp": 1, "inner": {"temp": 2}})
    assert flat.numbers == {"temp": 1.0, "inner.temp": 2.0}


def test_dotted_key_equal_to_a_dotted_path_is_refused() -> None:
    """A key `a.b` and a path a/b both named `a.b` would overwrite one value: bad_field_name."""
    with pytest.raises(PayloadError) as info:
        flatten({"a.b": 1, "a": {"b": 2}, "c": {"b": 3}})
    assert info.value.reason is RejectReason.BAD_FIELD_NAME
    assert "'a.b'" in info.value.detail


def test_booleans_are_zero_and_one() -> None:
    """true/false become readings 1.0/0.0."""
    flat = flatten({"light_state": True, "fan_state": False})
    assert flat.numbers == {"light_state": 1.0, "fan_state": 0.0}


def test_strings_and_null_are_attributes() -> None:
    """Strings and nulls are kept as attributes, not readings."""
    flat = flatten({"status": "active", "node_id": "esp32_01", "error": None, "t": 1})
    assert flat.attributes == {"status": "active", "node_id": "esp32_01", "error": None}
    assert flat.numbers == {"t": 1.0}


def test_lists_are_indexed_under_their_name() -> None:
    """List elements are named `name.index`; an index alone is never a metric name."""
    flat = flatten({"temps": [21.5, 22.0], "tags": ["a"], "grid": [[1, 2]]})
    assert flat.numbers == {"temps.0": 21.5, "temps.1": 22.0, "grid.0.0": 1.0, "grid.0.1": 2.0}
    assert flat.attributes == {"tags.0": "a"}


def test_a_single_list_is_not_named_by_bare_indexes() -> None:
    """`{"temps": [21.5, 22.0]}` gives `temps.0`/`temps.1`: bare `0`/`1` would mix series."""
    assert flatten({"temps": [21.5, 22.0], "hum": 40}).numbers == {
        "temps.0": 21.5,
        "temps.1": 22.0,
        "hum": 40.0,
    }
    assert flatten({"hums": [40]}).numbers == {"hums.0": 40.0}


def test_lists_of_objects_keep_leaf_names_unless_they_clash() -> None:
    """Objects in a list flatten like any nested group: dotted only on clash."""
    flat = flatten({"probes": [{"t": 20.0}, {"t": 21.0}], "other": {"v": 1}})
    assert flat.numbers == {"probes.0.t": 20.0, "probes.1.t": 21.0, "v": 1.0}


def test_lists_with_the_same_name_in_two_groups_are_dotted() -> None:
    """Two lists named alike in different groups get their full paths."""
    flat = flatten({"a": {"t": [1]}, "b": {"t": [2]}})
    assert flat.numbers == {"a.t.0": 1.0, "b.t.0": 2.0}


def test_empty_groups_give_nothing() -> None:
    """Empty objects and lists contribute no readings and no attributes."""
    flat = flatten({"a": {}, "b": []})
    assert flat.numbers == {}
    assert flat.attributes == {}


def test_skip_only_applies_at_the_top_level() -> None:
    """Envelope keys are skipped at the top, but the same name deeper down is a reading."""
    flat = flatten({"ts": 5, "inner": {"ts": 6}}, skip=frozenset({"ts"}))
    assert flat.numbers == {"ts": 6.0}


def test_field_limit_is_inclusive() -> None:
    """Exactly MAX_FIELDS_PER_MESSAGE fields pass; one more is too_many_fields."""
    assert len(flatten({f"f{i}": i for i in range(MAX_FIELDS_PER_MESSAGE)}).numbers) == 256
    with pytest.raises(PayloadError) as info:
        flatten({f"f{i}": i for i in range(MAX_FIELDS_PER_MESSAGE + 1)})
    assert info.value.reason is RejectReason.TOO_MANY_FIELDS


def test_field_limit_counts_nested_and_list_leaves() -> None:
    """A long list counts every element, so it cannot smuggle thousands of metrics in."""
    with pytest.raises(PayloadError) as info:
        flatten({"samples": list(range(MAX_FIELDS_PER_MESSAGE + 1))})
    assert info.value.reason is RejectReason.TOO_MANY_FIELDS


@pytest.mark.parametrize(
    "obj",
    [{"": 1}, {"n" * (MAX_NAME_CHARS + 1): 1}, {"bad\nname": 1}, {"tab\there": "x"}, {"\x00": 1}],
)
def test_bad_field_names_are_refused(obj: dict[str, Any]) -> None:
    """Empty, overlong or unprintable names are bad_field_name, quoting the name."""
    with pytest.raises(PayloadError) as info:
        flatten(obj)
    assert info.value.reason is RejectReason.BAD_FIELD_NAME
    assert str(MAX_NAME_CHARS) in info.value.detail


def test_name_at_the_length_limit_is_accepted() -> None:
    """A name of exactly MAX_NAME_CHARS characters is fine; unicode letters are printable."""
    name = "n" * MAX_NAME_CHARS
    assert flatten({name: 1, "température": 2}).numbers == {name: 1.0, "température": 2.0}


def test_dotted_name_over_the_limit_is_refused() -> None:
    """Short keys whose clash-dotted path exceeds the limit are still refused."""
    long_group = "g" * MAX_NAME_CHARS
    with pytest.raises(PayloadError) as info:
        flatten({long_group: {"t": 1}, "t": 2})
    assert info.value.reason is RejectReason.BAD_FIELD_NAME


def test_number_of() -> None:
    """Numbers are floats, booleans 0/1, anything else None; infinities are refused."""
    assert number_of(3) == 3.0
    assert number_of(-2.5) == -2.5
    assert number_of(True) == 1.0
    assert number_of("3") is None
    assert number_of(None) is None
    assert number_of([1]) is None
    with pytest.raises(PayloadError) as info:
        number_of(float("inf"))
    assert info.value.reason is RejectReason.NON_FINITE_NUMBER


@pytest.mark.parametrize(
    "payload",
    [
        b'{"t": NaN}',
        b'{"t": Infinity}',
        b'{"t": -Infinity}',
        b"[NaN]",
        b'{"t": 1e400}',
        b'{"t": -1e400}',
        b'{"t": 1' + b"0" * 400 + b"}",
    ],
)
def test_non_finite_literals_and_overflowing_numbers_are_non_finite(payload: bytes) -> None:
    """NaN/Infinity and numbers beyond a double are non_finite_number, not a syntax error."""
    assert _reason(payload) is RejectReason.NON_FINITE_NUMBER


def test_big_but_finite_integers_are_readings() -> None:
    """An integer beyond 64 bits but within a double is read as a float."""
    assert parse_json(b'{"t": 18446744073709551616}') == {"t": 18446744073709551616.0}
    assert parse_json(b'{"t": 18446744073709551615}') == {"t": 18446744073709551615}
    assert flatten(parse_json(b'{"t": 123456789012345678901234567890}')).numbers == {
        "t": 1.2345678901234568e29
    }


@pytest.mark.parametrize(
    "payload", [b"\xff\xfe{}", b'{"t": "\xe9"}', b'{"a":1}\x80', "é".encode("latin-1")]
)
def test_non_utf8_is_not_utf8_with_the_byte(payload: bytes) -> None:
    """Invalid UTF-8 is not_utf8, and the message names the offending byte's offset."""
    with pytest.raises(PayloadError) as info:
        parse_json(payload)
    assert info.value.reason is RejectReason.NOT_UTF8
    assert "byte" in info.value.detail


def test_decode_text_accepts_utf8() -> None:
    """Valid UTF-8, multi-byte included, decodes."""
    assert decode_text("température".encode()) == "température"


def test_empty_payload() -> None:
    """An empty payload is empty_payload before any parsing."""
    assert _reason(b"") is RejectReason.EMPTY_PAYLOAD


def test_size_limit_is_inclusive() -> None:
    """A payload of exactly the limit parses; limit + 1 bytes is oversize_payload."""
    body = b'{"t": 1}'
    exact = body + b" " * (MAX_PAYLOAD_BYTES - len(body))
    assert parse_json(exact) == {"t": 1}
    with pytest.raises(PayloadError) as info:
        parse_json(exact + b" ")
    assert info.value.reason is RejectReason.OVERSIZE_PAYLOAD
    assert str(MAX_PAYLOAD_BYTES + 1) in info.value.detail
    check_size(b"x" * 10, limit=10)
    with pytest.raises(PayloadError):
        check_size(b"x" * 11, limit=10)


@pytest.mark.parametrize(
    "payload", [b"{", b"{'a': 1}", b'{"a": 1,}', b"abc", b"  ", b'{"a": 1} {"b": 2}', b"\x00"]
)
def test_malformed_json(payload: bytes) -> None:
    """Syntax errors are malformed_json with the parser's message."""
    with pytest.raises(PayloadError) as info:
        parse_json(payload)
    assert info.value.reason is RejectReason.MALFORMED_JSON
    assert info.value.detail.startswith("payload is not valid JSON")


def test_nesting_beyond_the_parser_limit_is_too_deep_not_a_crash() -> None:
    """Nesting past orjson's own limit is too_deep like any nesting past MAX_JSON_DEPTH (the
    stdlib slow path must not leak RecursionError), unclosed brackets too; a malformed payload
    within the limit stays malformed_json. tests/protocol/test_depth.py covers every route."""
    assert _reason(b"[" * 30_000 + b"]" * 30_000) is RejectReason.TOO_DEEP
    assert _reason(b"[" * 30_000) is RejectReason.TOO_DEEP
    assert _reason(b"[" * 10 + b"}") is RejectReason.MALFORMED_JSON


def test_parse_json_returns_any_json_value() -> None:
    """parse_json does not insist on objects; decoders decide (arrays, scalars pass through)."""
    assert parse_json(b"[1, 2]") == [1, 2]
    assert parse_json(b'"x"') == "x"
    assert parse_json(b"null") is None


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(alphabet="abct._", min_size=1, max_size=4), children, max_size=4),
    ),
    max_leaves=30,
)


@given(st.dictionaries(st.text(alphabet="abct._", min_size=1, max_size=4), _json, max_size=5))
def test_flatten_keeps_every_leaf_once(obj: dict[str, Any]) -> None:
    """Flatten yields each scalar leaf exactly once (or refuses the object with a reason)."""
    try:
        flat = flatten(obj)
    except PayloadError as exc:
        refused = exc.reason
    else:
        refused = None
    if refused is not None:
        assert refused in {RejectReason.BAD_FIELD_NAME, RejectReason.TOO_MANY_FIELDS}
        return
    leaves: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        else:
            leaves.append(value)

    walk(obj)
    assert len(flat.numbers) + len(flat.attributes) == len(leaves)
    assert sorted(flat.numbers.values()) == sorted(
        number_of(v) for v in leaves if number_of(v) is not None
    )
    assert not flat.numbers.keys() & flat.attributes.keys()
    for name in (*flat.numbers, *flat.attributes):
        assert 1 <= len(name) <= MAX_NAME_CHARS


@given(_json)
def test_parse_json_round_trips_what_json_dumps_writes(value: Any) -> None:
    """Anything the stdlib writes (finite numbers, unicode strings) parses back equal."""
    assert parse_json(json.dumps(value).encode()) == value
