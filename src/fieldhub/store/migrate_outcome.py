"""What a migration tells its caller: the refusal, the progress it reports while it runs, and
the result with the verification's counts and series checks (fieldhub.store.migrate)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from fieldhub.store.types import StoreError

# Sums of float values differ in their last bits when added in another order.
SUM_REL_TOLERANCE = 1e-9


class MigrationRefused(StoreError):
    """The migration was not started and nothing was written; the message says what to pass."""


class Progress(Protocol):
    """What the migration reports while it runs (the CLI draws it)."""

    def step(self, text: str) -> None:
        """A phase begins or ended (partitions, sequences, verification)."""

    def table_started(self, table: str, rows: int) -> None:
        """Copying `table` (`rows` rows in the source) begins."""

    def rows_copied(self, table: str, rows: int) -> None:
        """`rows` more rows of `table` were sent."""

    def table_done(self, table: str, rows: int, seconds: float) -> None:
        """`table` is copied (not yet committed: the whole migration commits at once)."""

    def committed(self) -> None:
        """The copy is committed: from here on the target holds it, verified or not."""


class Silent:
    """The Progress of a caller that gave none: reports nothing."""

    def step(self, text: str) -> None:
        pass

    def table_started(self, table: str, rows: int) -> None:
        pass

    def rows_copied(self, table: str, rows: int) -> None:
        pass

    def table_done(self, table: str, rows: int, seconds: float) -> None:
        pass

    def committed(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class TableCount:
    """Rows of one table in the source and in the target after the copy."""

    table: str
    source: int
    target: int

    @property
    def ok(self) -> bool:
        return self.source == self.target


@dataclass(frozen=True, slots=True)
class SeriesStats:
    """count, min, max and sum of one series' values (min/max/sum None when empty)."""

    count: int
    min: float | None
    max: float | None
    sum: float | None


@dataclass(frozen=True, slots=True)
class SeriesCheck:
    """One sampled series in the source and in the target."""

    device: str
    metric: str
    source: SeriesStats
    target: SeriesStats
    # sum(|value|) in the source: the scale the sums' rounding differences are judged against.
    magnitude: float

    @property
    def ok(self) -> bool:
        s, t = self.source, self.target
        if (s.count, s.min, s.max) != (t.count, t.min, t.max):
            return False
        if s.sum is None or t.sum is None or not math.isfinite(s.sum):
            # Empty, or infinite values in the series: nothing to round, the same result or not.
            return repr(s.sum) == repr(t.sum)
        return abs(s.sum - t.sum) <= SUM_REL_TOLERANCE * max(1.0, self.magnitude)


@dataclass(slots=True)
class MigrationResult:
    """What was copied and how the verification went."""

    counts: list[TableCount] = field(default_factory=list)
    series: list[SeriesCheck] = field(default_factory=list)
    series_total: int = 0
    partitions_created: list[str] = field(default_factory=list)
    # Another connection committed to the SQLite file while it was being copied.
    source_changed: bool = False
    seconds: float = 0.0
    readings_seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(c.source for c in self.counts)

    @property
    def ok(self) -> bool:
        return (
            all(c.ok for c in self.counts)
            and all(s.ok for s in self.series)
            and not self.source_changed
        )
