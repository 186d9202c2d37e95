"""A deadline scheduler: at most one deadline per (key, kind), the earliest first.

The command service keeps three kinds per command (`expire`, `timeout`, `publish`), thousands of
commands at a time, and moves or drops deadlines far more often than they fire. So this is one
heap with lazy deletion: scheduling a (key, kind) again supersedes its earlier entry, cancelling
forgets it, and stale entries are skipped when they reach the top (or swept out when they pile up).

Times are epoch microseconds read from a `Clock`: `run()` waits for the next deadline on the event
loop, and a test drives it with a `ManualClock`, calling `wake()` after moving the clock on
instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fieldhub.clock import US_PER_S, Clock

log = logging.getLogger("fieldhub.commands.deadlines")

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", bound=Hashable)

# Superseded and cancelled entries stay in the heap until they reach its top; once they outnumber
# the live ones by this factor (and this many), the heap is rebuilt so memory follows the live set.
STALE_SWEEP_FACTOR = 2
STALE_SWEEP_MIN_ENTRIES = 1024


@dataclass(frozen=True, slots=True)
class Due(Generic[K, T]):
    """A deadline that came: which key, which kind, and when it was set for."""

    key: K
    kind: T
    at_us: int


class Deadlines(Generic[K, T]):
    """Deadlines keyed by (key, kind): `schedule`, `cancel`, `next_due_us`, `pop_due`, `run`."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        # (at_us, sequence, key, kind); the sequence orders equal times by scheduling order and
        # tells the live entry of a (key, kind) from the ones it superseded.
        self._heap: list[tuple[int, int, K, T]] = []
        # key -> kind -> (sequence, at_us) of its live entry.
        self._live: dict[K, dict[T, tuple[int, int]]] = {}
        self._count = 0
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        """How many deadlines are scheduled (superseded and cancelled ones not counted)."""
        return self._count

    def schedule(self, key: K, kind: T, at_us: int) -> None:
        """Set `key`'s `kind` deadline to `at_us`, replacing one set before."""
        seq = next(self._seq)
        kinds = self._live.setdefault(key, {})
        if kind not in kinds:
            self._count += 1
        kinds[kind] = (seq, at_us)
        heapq.heappush(self._heap, (at_us, seq, key, kind))
        self._sweep()
        self._changed.set()

    def cancel(self, key: K, kind: T | None = None) -> int:
        """Drop `key`'s deadline of `kind`, or all of its deadlines; returns how many went."""
        kinds = self._live.get(key)
        if kinds is None:
            return 0
        if kind is None:
            dropped = len(kinds)
            del self._live[key]
        elif kinds.pop(kind, None) is not None:
            dropped = 1
            if not kinds:
                del self._live[key]
        else:
            dropped = 0
        self._count -= dropped
        return dropped

    def due_at_us(self, key: K, kind: T) -> int | None:
        """When `key`'s `kind` deadline is set for, or None when it has none."""
        live = self._live.get(key, {}).get(kind)
        return None if live is None else live[1]

    def next_due_us(self) -> int | None:
        """The earliest deadline's time, or None when nothing is scheduled."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self) -> list[Due[K, T]]:
        """Remove and return every deadline due by the clock's now, earliest first."""
        now_us = self._clock.now_us()
        due: list[Due[K, T]] = []
        while True:
            self._drop_stale_top()
            if not self._heap or self._heap[0][0] > now_us:
                return due
            at_us, _, key, kind = heapq.heappop(self._heap)
            self.cancel(key, kind)
            due.append(Due(key, kind, at_us))

    def wake(self) -> None:
        """Make `run()` look at the clock again (after a ManualClock moved on)."""
        self._changed.set()

    async def run(self, fire: Callable[[Due[K, T]], None]) -> None:
        """Call `fire` for each deadline as it comes, until cancelled.

        `fire` runs on the event loop and may schedule more deadlines (also ones due at once);
        one that raises is logged and the others still fire.
        """
        while True:
            self._changed.clear()
            for due in self.pop_due():
                try:
                    fire(due)
                except Exception:
                    log.exception("deadline %s of %r failed", due.kind, due.key)
            next_us = self.next_due_us()
            delay_s = (
                None if next_us is None else max(0.0, (next_us - self._clock.now_us()) / US_PER_S)
            )
            try:
                await asyncio.wait_for(self._changed.wait(), delay_s)
            except TimeoutError:
                pass

    def _is_live(self, entry: tuple[int, int, K, T]) -> bool:
        _, seq, key, kind = entry
        live = self._live.get(key, {}).get(kind)
        return live is not None and live[0] == seq

    def _drop_stale_top(self) -> None:
        while self._heap and not self._is_live(self._heap[0]):
            heapq.heappop(self._heap)

    def _sweep(self) -> None:
        stale = len(self._heap) - self._count
        if len(self._heap) < STALE_SWEEP_MIN_ENTRIES or stale <= STALE_SWEEP_FACTOR * self._count:
            return
        self._heap = [entry for entry in self._heap if self._is_live(entry)]
        heapq.heapify(self._heap)
