"""The verification of a copy of a fieldhub database: rows per table, source beside target, and
count, min, max and sum of a sample of series.

`fieldhub migrate` runs it on SQLite beside PostgreSQL after its copy; `fieldhub backup` on the
live database's snapshot beside the backup's copy, and `fieldhub restore` on what the backup
recorded beside the restored database. A `Side` is one database as the check reads it; the
sample and the counts of the source are taken once (`sample_source`), so a backup can record
them and a restore compare against them later.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from fieldhub.store.migrate_outcome import (
    MigrationResult,
    Progress,
    SeriesCheck,
    SeriesStats,
    TableCount,
)
from fieldhub.store.migrate_source import SqliteSource
from fieldhub.store.migrate_tables import TABLES

# Series whose values are compared (count, min, max, sum) after the copy.
SERIES_SAMPLE = 20

# Every series as (device pk, metric pk, device, metric), in one order on every engine.
SERIES_SQL = (
    "SELECT dm.device_id, dm.metric_id, d.uid, m.name FROM device_metrics dm "
    "JOIN devices d ON d.id = dm.device_id JOIN metrics m ON m.id = dm.metric_id "
    "ORDER BY dm.device_id, dm.metric_id"
)
# One series' count, min, max, sum and sum of absolute values (the scale its sum is judged by).
STATS_SQL = (
    "SELECT count(*), min(value), max(value), sum(value), sum(abs(value)) FROM readings "
    "WHERE device_id = {} AND metric_id = {}"
)


class Side(Protocol):
    """One database as the verification reads it."""

    async def count(self, table: str) -> int:
        """Rows in `table`."""
        ...

    async def series(self) -> list[tuple[int, int, str, str]]:
        """Every series as (device pk, metric pk, device, metric), ordered by the pks."""
        ...

    async def series_stats(self, device_pk: int, metric_pk: int) -> tuple[SeriesStats, float]:
        """One series' count, min, max and sum, and the sum of its absolute values."""
        ...


class SqliteSide:
    """A SQLite connection as a Side (its reads on a worker thread, one at a time): open it
    with check_same_thread=False."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _one(self, sql: str, *args: object) -> tuple[object, ...]:
        row: tuple[object, ...] = self.conn.execute(sql, args).fetchone()
        return row

    async def count(self, table: str) -> int:
        (n,) = await asyncio.to_thread(self._one, f"SELECT count(*) FROM {table}")
        assert isinstance(n, int)
        return n

    async def series(self) -> list[tuple[int, int, str, str]]:
        rows = await asyncio.to_thread(lambda: self.conn.execute(SERIES_SQL).fetchall())
        return [(int(d), int(m), str(du), str(mn)) for d, m, du, mn in rows]

    async def series_stats(self, device_pk: int, metric_pk: int) -> tuple[SeriesStats, float]:
        row = await asyncio.to_thread(self._one, STATS_SQL.format("?", "?"), device_pk, metric_pk)
        return _stats(row)


class PostgresSide:
    """An asyncpg connection as a Side."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def count(self, table: str) -> int:
        return int(await self.conn.fetchval(f"SELECT count(*) FROM {table}"))

    async def series(self) -> list[tuple[int, int, str, str]]:
        return [(r[0], r[1], r[2], r[3]) for r in await self.conn.fetch(SERIES_SQL)]

    async def series_stats(self, device_pk: int, metric_pk: int) -> tuple[SeriesStats, float]:
        row = await self.conn.fetchrow(STATS_SQL.format("$1", "$2"), device_pk, metric_pk)
        assert row is not None
        return _stats(tuple(row))


def _stats(row: Sequence[object]) -> tuple[SeriesStats, float]:
    count, low, high, total, magnitude = row
    assert isinstance(count, int)
    return (
        SeriesStats(count, _float(low), _float(high), _float(total)),
        float(_float(magnitude) or 0.0),
    )


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SampledSeries:
    """One series of the sample with its stats in the source."""

    device_pk: int
    metric_pk: int
    device: str
    metric: str
    stats: SeriesStats
    magnitude: float


@dataclass(frozen=True, slots=True)
class SourceFacts:
    """What the verification compares a copy against: the source's rows per table, a sample of
    its series with their stats, and how many series there are."""

    counts: Mapping[str, int]
    sample: tuple[SampledSeries, ...]
    series_total: int


def spread(rows: Sequence[tuple[int, int, str, str]], n: int) -> list[tuple[int, int, str, str]]:
    """Up to `n` of `rows`, spread evenly over all of them."""
    if len(rows) <= n:
        return list(rows)
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


async def sample_source(
    source: Side, n: int = SERIES_SAMPLE, *, counts: Mapping[str, int] | None = None
) -> SourceFacts:
    """The source's counts (unless given, read already in the same snapshot) and a sample of
    `n` series with their stats (read in whatever snapshot `source` holds)."""
    if counts is None:
        counts = {t.name: await source.count(t.name) for t in TABLES}
    rows = await source.series()
    sample = []
    for device_pk, metric_pk, device, metric in spread(rows, n):
        stats, magnitude = await source.series_stats(device_pk, metric_pk)
        sample.append(SampledSeries(device_pk, metric_pk, device, metric, stats, magnitude))
    return SourceFacts(counts, tuple(sample), len(rows))


async def compare(facts: SourceFacts, target: Side, result: MigrationResult) -> None:
    """Add to `result` each table's rows in source and target and the checks of the sample."""
    for table in TABLES:
        result.counts.append(
            TableCount(table.name, facts.counts.get(table.name, 0), await target.count(table.name))
        )
    result.series_total = facts.series_total
    for s in facts.sample:
        stats, _ = await target.series_stats(s.device_pk, s.metric_pk)
        result.series.append(SeriesCheck(s.device, s.metric, s.stats, stats, s.magnitude))


async def verify(
    source: SqliteSource, conn: asyncpg.Connection, result: MigrationResult, progress: Progress
) -> None:
    """`fieldhub migrate`'s check: add to `result` each table's rows in source and target and the
    checks of a sample of series, spread over all of them."""
    progress.step("verifying: rows per table and a sample of series")
    # The source's counts were taken when its snapshot began, like the copy's reads.
    facts = await sample_source(SqliteSide(source.conn), counts=source.counts)
    await compare(facts, PostgresSide(conn), result)
