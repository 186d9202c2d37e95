"""The verification after `fieldhub migrate`'s copy: rows per table, source beside target, and
count, min, max and sum of a sample of series."""

from __future__ import annotations

import asyncio

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


async def verify(
    source: SqliteSource, conn: asyncpg.Connection, result: MigrationResult, progress: Progress
) -> None:
    """Add to `result` each table's rows in source and target and the checks of a sample of
    series, spread over all of them."""
    progress.step("verifying: rows per table and a sample of series")
    for table in TABLES:
        target = await conn.fetchval(f"SELECT count(*) FROM {table.name}")
        result.counts.append(TableCount(table.name, source.counts[table.name], int(target)))
    sample, result.series_total = await asyncio.to_thread(source.sample_series, SERIES_SAMPLE)
    for device_pk, metric_pk, device, metric in sample:
        stats, magnitude = await asyncio.to_thread(source.series_stats, device_pk, metric_pk)
        row = await conn.fetchrow(
            "SELECT count(*), min(value), max(value), sum(value) FROM readings "
            "WHERE device_id = $1 AND metric_id = $2",
            device_pk,
            metric_pk,
        )
        assert row is not None
        target = SeriesStats(row[0], row[1], row[2], row[3])
        result.series.append(SeriesCheck(device, metric, stats, target, magnitude))
