"""Waiting for a condition in tests: poll with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _attempts(condition: Callable[[], T], timeout_s: float, what: str) -> Iterator[T]:
    """`condition()` once per step until the deadline, then the failure naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        yield last
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last value: {last!r})")


def wait_until(
    condition: Callable[[], T],
    *,
    timeout_s: float = 20.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `condition` until it returns a truthy value; fail with `what` after the deadline."""
    for value in _attempts(condition, timeout_s, what):
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("unreachable: _attempts raises at the deadline")


async def await_until(
    condition: Callable[[], T],
    *,
    timeout_s: float = 20.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> T:
    """`wait_until` for a condition the running event loop must make true: sleeps without
    blocking the loop's own tasks."""
    for value in _attempts(condition, timeout_s, what):
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError("unreachable: _attempts raises at the deadline")
