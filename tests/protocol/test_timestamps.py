"""Device time fields and API time parameters."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldhub.protocol.timestamps import (
    FUTURE_TOLERANCE_US,
    MIN_PLAUSIBLE_US,
    PARAM_MAX_US,
    PARAM_MIN_US,
    US_PER_S,
    AbsurdTimestamp,
    DeviceTime,
    format_us,
    parse_device_time,
    parse_time_param,
)

# 2026-11-23T14:00:00Z, the receive time of every message in these tests.
RECEIVED_US = 1_795_442_400 * US_PER_S
EPOCH_S = 1_795_438_800  # one hour before RECEIVED_US


def _us(text: str) -> int:
    """Epoch microseconds of an ISO string, computed independently of the code under test."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def test_received_constant_is_the_date_the_comment_says() -> None:
    """RECEIVED_US is 2026-11-23T14:00:00Z (guards the other tests' arithmetic)."""
    assert format_us(RECEIVED_US) == "2026-11-23T14:00:00Z"


@pytest.mark.parametrize(
    ("value", "expected_us"),
    [
        (EPOCH_S, EPOCH_S * US_PER_S),
        (EPOCH_S + 0.25, EPOCH_S * US_PER_S + 250_000),
        (EPOCH_S * 1_000 + 123, EPOCH_S * US_PER_S + 123_000),
        (EPOCH_S * 1_000_000 + 123_456, EPOCH_S * US_PER_S + 123_456),
        (EPOCH_S * 1_000_000_000 + 123_456_789, EPOCH_S * US_PER_S + 123_457),
        (str(EPOCH_S), EPOCH_S * US_PER_S),
        (f" {EPOCH_S * 1000} ", EPOCH_S * US_PER_S),
    ],
    ids=["s", "s-fraction", "ms", "us", "ns", "s-as-text", "ms-as-text"],
)
def test_epoch_numbers_in_every_unit_become_the_reading_time(
    value: object, expected_us: int
) -> None:
    """Epoch seconds, milliseconds, microseconds and nanoseconds are told apart by magnitude."""
    assert parse_device_time(value, RECEIVED_US) == DeviceTime("time", expected_us)


def test_epoch_nanoseconds_keep_microsecond_precision() -> None:
    """An integer in ns is rounded to the nearest us exactly, not through a lossy float."""
    base_ns = 1_700_000_000_000_000_000
    assert parse_device_time(base_ns + 499, RECEIVED_US).ts_us == base_ns // 1000
    assert parse_device_time(base_ns + 501, RECEIVED_US).ts_us == base_ns // 1000 + 1


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T13:00:00",
        "2026-11-23 13:00:00",
        "2026-11-23T13:00:00Z",
        "2026-11-23T13:00:00+00:00",
        "2026-11-23T14:00:00+01:00",
        "2026-11-23T08:00:00-05:00",
        "2026-11-23T13:00:00.123456Z",
        "2026-11-23T13:00:00.5",
        "2026-11-23 13:00",
        "2026-11-23",
        "  2026-11-23T13:00:00Z\n",
    ],
)
def test_iso_strings_become_the_reading_time(text: str) -> None:
    """ISO 8601 with or without T, zone, fraction or Z is a date; naive means UTC."""
    assert parse_device_time(text, RECEIVED_US) == DeviceTime("time", _us(text.strip()))


@pytest.mark.parametrize("value", [0, 1, 93387, 1835587, 3600, 999_999_999, 93387.5, True, False])
def test_small_numbers_are_uptime(value: object) -> None:
    """Numbers below any plausible epoch (the readings firmware's uptime ms) are uptime."""
    assert parse_device_time(value, RECEIVED_US) == DeviceTime("uptime")


def test_uptime_ms_too_large_for_seconds_and_too_small_for_ms_is_uptime() -> None:
    """58 days of uptime in ms (5e9) would be year 2128 in seconds: still uptime, not absurd."""
    assert parse_device_time(5_000_000_000, RECEIVED_US) == DeviceTime("uptime")


def test_digit_strings_below_epoch_range_are_uptime() -> None:
    """A number sent as text follows the same rules as the number."""
    assert parse_device_time("93387", RECEIVED_US) == DeviceTime("uptime")


@pytest.mark.parametrize(
    "text",
    ["12:34:56", "unknown", "", "   ", "now", "2026-11", "2026-13-45", "2026-11-23X", "²", "١٢٣"],
)
def test_strings_that_are_no_date_are_text(text: str) -> None:
    """Clock times, words, partial or impossible dates and non-ASCII digits stay text."""
    assert parse_device_time(text, RECEIVED_US) == DeviceTime("text")


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -1.5,
        math.nan,
        math.inf,
        -math.inf,
        9e14,  # epoch ms in the year 30489
        RECEIVED_US // 1000 + 2 * 86_400_000,  # ms two days ahead
        10**19,  # ns in 2286
        10**400 // 10**380,
        "1970-01-01T00:00:00Z",
        "1999-12-31T23:59:59Z",
        "2300-01-01T00:00:00Z",
        "0001-01-01T00:00:00+05:00",
        "9" * 400,
        None,
        [1],
        {"s": 1},
    ],
)
def test_absurd_times_raise_with_the_value_in_the_message(value: object) -> None:
    """Values that claim to be a time but cannot be one raise AbsurdTimestamp naming the value."""
    with pytest.raises(AbsurdTimestamp, match="timestamp"):
        parse_device_time(value, RECEIVED_US)


def test_future_tolerance_boundary() -> None:
    """Up to one day ahead of receipt is a time; one microsecond more is absurd."""
    limit_us = RECEIVED_US + FUTURE_TOLERANCE_US
    assert parse_device_time(limit_us, RECEIVED_US) == DeviceTime("time", limit_us)
    with pytest.raises(AbsurdTimestamp, match="one day after receipt"):
        parse_device_time(limit_us + 1, RECEIVED_US)
    assert parse_device_time(format_us(limit_us), RECEIVED_US).ts_us == limit_us
    with pytest.raises(AbsurdTimestamp):
        parse_device_time(format_us(limit_us + 1_000_000), RECEIVED_US)


def test_past_boundary_is_2000() -> None:
    """2000-01-01T00:00:00Z is the earliest plausible time; a microsecond earlier is absurd."""
    assert parse_device_time("2000-01-01T00:00:00Z", RECEIVED_US).ts_us == MIN_PLAUSIBLE_US
    with pytest.raises(AbsurdTimestamp, match="1999"):
        parse_device_time("1999-12-31T23:59:59.999999Z", RECEIVED_US)


@pytest.mark.parametrize(
    ("text", "expected_us"),
    [
        ("2026-11-23T14:00:00Z", RECEIVED_US),
        ("2026-11-23T14:00:00z", RECEIVED_US),
        ("2026-11-23T15:00:00+01:00", RECEIVED_US),
        ("2026-11-23 14:00", RECEIVED_US),
        ("2026-11-23T14:00:00.000001Z", RECEIVED_US + 1),
        ("2026-11-23", RECEIVED_US - 14 * 3600 * US_PER_S),
        ("1990-01-01T00:00:00Z", 631_152_000 * US_PER_S),
        ("1969-12-31T23:59:59.5Z", -500_000),
        (str(RECEIVED_US // US_PER_S), RECEIVED_US),
        (str(RECEIVED_US // 1000), RECEIVED_US),
        (str(RECEIVED_US), RECEIVED_US),
        ("1795442400.5", RECEIVED_US + 500_000),
        ("0", 0),
        (" 60 ", 60 * US_PER_S),
    ],
)
def test_parse_time_param_accepts_the_api_forms(text: str, expected_us: int) -> None:
    """ISO 8601 (Z, offsets, space, date only) and epoch s/ms/us all parse to epoch us."""
    assert parse_time_param(text) == expected_us


@pytest.mark.parametrize(
    "text",
    ["", "   ", "yesterday", "2026-11-23T25:00:00Z", "nan", "inf", "12:00", "1e30", "2026/11/23"],
)
def test_parse_time_param_rejects_garbage_with_a_message(text: str) -> None:
    """Anything that is not a time raises ValueError quoting the input and the accepted forms."""
    with pytest.raises(ValueError, match=r"is not a time|too large") as info:
        parse_time_param(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text", ["9e17", "253402300800", "-62135596801"])
def test_parse_time_param_refuses_epochs_past_the_printable_years(text: str) -> None:
    """An answer prints times as ISO 8601 (years 1-9999): an epoch beyond them is refused
    with a message instead of failing when the answer is written (it was a 500)."""
    with pytest.raises(ValueError, match="years 1-9999"):
        parse_time_param(text)


def test_format_us_examples() -> None:
    """format_us writes UTC with a Z, and a fraction only when there is one."""
    assert format_us(0) == "1970-01-01T00:00:00Z"
    assert format_us(RECEIVED_US + 1) == "2026-11-23T14:00:00.000001Z"
    assert format_us(-500_000) == "1969-12-31T23:59:59.500000Z"


@given(st.integers(PARAM_MIN_US, PARAM_MAX_US))
def test_format_us_round_trips_through_parse_time_param(ts_us: int) -> None:
    """Every representable time survives format_us -> parse_time_param unchanged."""
    assert parse_time_param(format_us(ts_us)) == ts_us


@given(st.integers(MIN_PLAUSIBLE_US, RECEIVED_US + FUTURE_TOLERANCE_US))
def test_plausible_times_round_trip_through_device_time(ts_us: int) -> None:
    """A plausible time written as ISO (format_us) is read back exactly."""
    assert parse_device_time(format_us(ts_us), RECEIVED_US) == DeviceTime("time", ts_us)


# Units are told apart by magnitude, so epoch numbers are unambiguous only from 2001-09-09 on.
_UNAMBIGUOUS_US = 1_000_000_000 * US_PER_S


@given(st.integers(_UNAMBIGUOUS_US, RECEIVED_US + FUTURE_TOLERANCE_US))
def test_plausible_epoch_numbers_round_trip_in_every_unit(ts_us: int) -> None:
    """An epoch time as integer us, ms or ns is read back to the unit's precision."""
    assert parse_device_time(ts_us, RECEIVED_US).ts_us == ts_us
    assert parse_device_time(ts_us * 1000, RECEIVED_US).ts_us == ts_us
    ms = ts_us // 1000
    if ms * 1000 >= _UNAMBIGUOUS_US:
        assert parse_device_time(ms, RECEIVED_US).ts_us == ms * 1000


@given(st.one_of(st.integers(), st.floats(), st.text(max_size=40), st.booleans(), st.none()))
def test_parse_device_time_raises_only_absurd_timestamp(value: object) -> None:
    """Any JSON scalar gets a verdict or AbsurdTimestamp, never another exception."""
    try:
        verdict = parse_device_time(value, RECEIVED_US)
    except AbsurdTimestamp:
        return
    if verdict.kind == "time":
        assert verdict.ts_us is not None
        assert MIN_PLAUSIBLE_US <= verdict.ts_us <= RECEIVED_US + FUTURE_TOLERANCE_US
    else:
        assert verdict.ts_us is None
