"""How a device's own time field becomes a reading time.

Devices send epoch seconds, epoch milliseconds, ISO 8601 strings, or a number that is no date at
all (uptime since boot, as the readings-profile firmware does). The rules, in order:

- a plausible date (2000-01-01 up to one day past the receive time) becomes the reading time;
- a number too small to be such a date is device uptime or a counter: kept as a reading, and the
  reading time is the receive time;
- a string that is not a date ("12:04:55", "unknown") is kept as an attribute;
- a value that claims to be a date but cannot be one (negative, non-finite, epoch milliseconds far
  in the future, an ISO date in 1970 or 2200) is absurd: the message goes to dead letters, because
  storing it under a wrong time would corrupt the series silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

US_PER_S = 1_000_000
# Before this no ESP32 existed; anything earlier is not a real reading time.
MIN_PLAUSIBLE_US = 946_684_800 * US_PER_S  # 2000-01-01T00:00:00Z
# A device clock slightly ahead of ours is normal (NTP steps, time zones set wrong by an hour);
# a day ahead is the most we accept before calling the time absurd.
FUTURE_TOLERANCE_US = 86_400 * US_PER_S

# Magnitude bands that tell the unit of an epoch number. Uptime in milliseconds reaches 1e12 only
# after 31 years, so anything at or above it must be a date in ms, us or ns.
_SECONDS_FLOOR = 1e9  # 2001-09-09 in seconds
_MILLIS_FLOOR = 1e12
_MICROS_FLOOR = 1e15
_NANOS_FLOOR = 1e18
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


class AbsurdTimestamp(ValueError):
    """The value claims to be a time but cannot be one; the message says which value and why."""


TimeKind = Literal["time", "uptime", "text"]


@dataclass(frozen=True, slots=True)
class DeviceTime:
    """The verdict on a time field: a reading time, an uptime-like number, or plain text."""

    kind: TimeKind
    ts_us: int | None = None


def _datetime_us(parsed: datetime) -> int:
    """Epoch microseconds of an aware datetime, exactly.

    `int(parsed.timestamp())` would truncate towards zero (1969-12-31T23:59:59.5 became +0.5 s) and
    the float loses the microseconds of distant dates (a .999999 rounds up into the next second).
    """
    return (parsed - _EPOCH) // _ONE_US


def _check_range(ts_us: int, received_us: int, shown: object) -> int:
    if ts_us < MIN_PLAUSIBLE_US or ts_us > received_us + FUTURE_TOLERANCE_US:
        when = datetime.fromtimestamp(ts_us / US_PER_S, tz=UTC) if -6e16 < ts_us < 2.5e17 else None
        raise AbsurdTimestamp(
            f"timestamp {shown!r}"
            + (f" is {when.isoformat()}" if when else "")
            + ", outside 2000-01-01 .. one day after receipt"
        )
    return ts_us


def parse_device_time(value: object, received_us: int) -> DeviceTime:
    """Classify a device's time field (see the module docstring for the rules)."""
    if isinstance(value, bool):
        return DeviceTime("uptime")
    if isinstance(value, int | float):
        return _from_number(value, value, received_us)
    if isinstance(value, str):
        return _from_string(value, received_us)
    raise AbsurdTimestamp(f"timestamp {value!r} is neither a number nor a string")


def _from_number(number: int | float, shown: object, received_us: int) -> DeviceTime:
    # Integers stay integers: a float holds epoch nanoseconds only to ~256 ns.
    if (isinstance(number, float) and not math.isfinite(number)) or number < 0:
        raise AbsurdTimestamp(f"timestamp {shown!r} is negative or not finite")
    if number < _SECONDS_FLOOR:
        return DeviceTime("uptime")
    if number < _MILLIS_FLOOR:
        ts_us = round(number * US_PER_S)
        if MIN_PLAUSIBLE_US <= ts_us <= received_us + FUTURE_TOLERANCE_US:
            return DeviceTime("time", ts_us)
        # Too far ahead for seconds, too small for milliseconds: an uptime counter in ms.
        return DeviceTime("uptime")
    if number < _MICROS_FLOOR:
        ts_us = round(number * 1_000)
    elif number < _NANOS_FLOOR:
        ts_us = round(number)
    elif isinstance(number, int):
        ts_us = (number + 500) // 1_000
    else:
        ts_us = round(number / 1_000)
    return DeviceTime("time", _check_range(ts_us, received_us, shown))


def _from_string(text: str, received_us: int) -> DeviceTime:
    stripped = text.strip()
    # isdigit() alone is true for "²" and other digits float() refuses.
    if stripped.isascii() and stripped.isdigit():
        return _from_number(float(stripped), text, received_us)
    # fromisoformat (3.11) reads "2026-11-23 14:00:00", "...T14:00:00.123+01:00" and a final "Z".
    # Strings that are not a full date ("14:00:00", "unknown") stay text.
    if len(stripped) < 10 or not stripped[:4].isdigit() or stripped[4] != "-":
        return DeviceTime("text")
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        return DeviceTime("text")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return DeviceTime("time", _check_range(_datetime_us(parsed), received_us, text))


PARAM_MIN_US = -62_135_596_800 * US_PER_S  # 0001-01-01T00:00:00Z
PARAM_MAX_US = 253_402_300_799 * US_PER_S + 999_999  # 9999-12-31T23:59:59.999999Z


def parse_time_param(text: str) -> int:
    """Parse a time given by a person or client (API query): ISO 8601 or epoch s/ms/us -> epoch us.

    Unlike device times there is no plausibility window: a query for 1990 is valid, merely empty.
    Raises ValueError with a message meant for the caller.
    """
    stripped = text.strip()
    try:
        number = float(stripped)
    except ValueError:
        number = math.nan
    if math.isfinite(number):
        if abs(number) < _MILLIS_FLOOR:
            value = round(number * US_PER_S)
        elif abs(number) < _MICROS_FLOOR:
            value = round(number * 1_000)
        elif abs(number) < _NANOS_FLOOR:
            value = round(number)
        else:
            raise ValueError(f"{text!r} is too large to be an epoch time")
        # An answer prints times as ISO 8601, which ends with year 9999.
        if not PARAM_MIN_US <= value <= PARAM_MAX_US:
            raise ValueError(f"{text!r} is out of the supported time range (years 1-9999)")
        return value
    candidate = stripped[:-1] + "+00:00" if stripped.endswith(("Z", "z")) else stripped
    try:
        parsed = datetime.fromisoformat(candidate)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-23T14:00:00Z, 2026-11-23 14:00) "
            "or epoch seconds/milliseconds"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return _datetime_us(parsed)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{text!r} is out of the supported time range") from None


def format_us(ts_us: int) -> str:
    """Epoch microseconds as an ISO 8601 UTC string with a Z."""
    seconds, micros = divmod(ts_us, US_PER_S)
    return (
        datetime.fromtimestamp(seconds, tz=UTC)
        .replace(microsecond=micros)
        .isoformat()
        .replace("+00:00", "Z")
    )
