"""The one clock: wall time as integer epoch microseconds, and a monotonic clock for deadlines.

Every stored time in fieldhub is epoch microseconds (exact in integers, the same in SQLite and
PostgreSQL); `now_us()` is the only place that reads the wall clock for them. Parts that schedule
(command deadlines, retention, the live hub's stats) take a `Clock` so a test can hand them a
`ManualClock` and move time on instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

US_PER_S = 1_000_000
US_PER_MS = 1_000


def now_us() -> int:
    """The wall clock in epoch microseconds."""
    return time.time_ns() // US_PER_MS


class Clock(Protocol):
    """What a part that keeps time needs: the wall clock for stored times, a monotonic one for
    intervals (the wall clock steps under NTP; intervals must not)."""

    def now_us(self) -> int:
        """Epoch microseconds."""
        ...

    def monotonic_s(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...


class SystemClock:
    """The real clocks."""

    def now_us(self) -> int:
        """Epoch microseconds from the system's wall clock."""
        return now_us()

    def monotonic_s(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """A clock that moves only when told to (tests): both readings advance together."""

    def __init__(self, start_us: int = 1_700_000_000 * US_PER_S) -> None:
        self._now_us = start_us
        self._monotonic_s = 0.0

    def now_us(self) -> int:
        """The current manual time, epoch microseconds."""
        return self._now_us

    def monotonic_s(self) -> float:
        """Seconds advanced since this clock was made."""
        return self._monotonic_s

    def advance(self, seconds: float) -> None:
        """Move both clocks on by `seconds` (never back)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        self._now_us += round(seconds * US_PER_S)
        self._monotonic_s += seconds


async def run_every(
    interval_s: float, step: Callable[[], Awaitable[object]], log: logging.Logger, what: str
) -> None:
    """Await `step` every `interval_s` until cancelled. A step that raises is logged and the
    next one runs: a timer must not stop for good because of one bad tick."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await step()
        except Exception:
            log.exception("%s failed", what)
