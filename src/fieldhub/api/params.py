"""Parsing of time and interval query parameters, with messages meant for the caller."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Query

from fieldhub.errors import Invalid
from fieldhub.protocol.timestamps import US_PER_S, parse_time_param

# A series request may ask for at most this many buckets: enough for a 4K-wide chart, few
# enough that a mistyped interval (1s over a year) cannot make the server build 31M points.
MAX_SERIES_BUCKETS = 10_000
# Longest interval: beyond it the bucket arithmetic leaves the stores' 64-bit integers (a 500).
MAX_INTERVAL_US = 3660 * 86400 * US_PER_S
# Default window for series without start: the last day, what a dashboard shows first.
DEFAULT_SERIES_WINDOW_US = 24 * 3600 * US_PER_S
# Automatic interval picks about this many buckets, rounded up to a step a person reads easily.
AUTO_BUCKETS = 300
NICE_STEPS_S = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
)

_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_US = {
    "ms": 1_000,
    "s": US_PER_S,
    "m": 60 * US_PER_S,
    "h": 3600 * US_PER_S,
    "d": 86400 * US_PER_S,
}


def parse_time(name: str, value: str | None) -> int | None:
    """An optional time parameter in epoch microseconds; 422 naming the parameter if invalid."""
    if value is None or value == "":
        return None
    try:
        return parse_time_param(value)
    except ValueError as exc:
        raise Invalid(f"{name}: {exc}") from None


def parse_range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    """start/end as epoch microseconds; 422 when start is not before end."""
    start_us = parse_time("start", start)
    end_us = parse_time("end", end)
    if start_us is not None and end_us is not None and start_us >= end_us:
        raise Invalid(f"start ({start}) must be before end ({end})")
    return start_us, end_us


def parse_interval(value: str) -> int:
    """`90`, `90s`, `5m`, `1h`, `1d`, `500ms` -> microseconds (a bare number is seconds)."""
    match = _INTERVAL.match(value)
    if match is None:
        raise Invalid(f"interval {value!r} is not a duration: use e.g. 30s, 5m, 1h, 1d")
    interval_us = int(float(match.group(1)) * _UNIT_US[match.group(2) or "s"])
    if interval_us < 1_000:
        raise Invalid(f"interval {value!r} is below the 1 ms minimum")
    if interval_us > MAX_INTERVAL_US:
        raise Invalid(f"interval {value!r} is over the 3660-day maximum")
    return interval_us


def series_window(
    start: str | None, end: str | None, interval: str | None, now_us: int
) -> tuple[int, int, int]:
    """(start, end, interval) in microseconds as a series request means them: end defaults to
    now, start to a day before end, the interval to ~300 buckets; 422 with a message when the
    range is empty or would need more than MAX_SERIES_BUCKETS buckets."""
    start_us, end_us = parse_range(start, end)
    end_us = end_us if end_us is not None else now_us + 1
    start_us = start_us if start_us is not None else end_us - DEFAULT_SERIES_WINDOW_US
    if start_us >= end_us:
        raise Invalid("start must be before end (end defaults to now)")
    interval_us = parse_interval(interval) if interval else auto_interval(end_us - start_us)
    buckets = (end_us - start_us) // interval_us
    if buckets > MAX_SERIES_BUCKETS:
        raise Invalid(
            f"{buckets} buckets requested; at most {MAX_SERIES_BUCKETS}: widen the interval or "
            "narrow the range"
        )
    return start_us, end_us, interval_us


def auto_interval(span_us: int) -> int:
    """A readable interval giving about AUTO_BUCKETS buckets over the span."""
    target_s = span_us / US_PER_S / AUTO_BUCKETS
    for step in NICE_STEPS_S:
        if step >= target_s:
            return step * US_PER_S
    days = int(target_s // 86400) + 1
    return days * 86400 * US_PER_S


# Query parameters the device, fleet and export endpoints share.
TimeParam = Annotated[
    str | None, Query(min_length=1, max_length=64, description="ISO 8601 or epoch s/ms/us")
]
IntervalParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=32,
        description="Bucket width: 30s, 5m, 1h, 1d; default ~300 buckets",
    ),
]
