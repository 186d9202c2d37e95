"""Rollups: series read through them equal series computed from every reading stored, whatever
order the readings arrived in (late data into closed windows, backfill, duplicates)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from fieldhub.store import Store, WriteBatch, open_store
from fieldhub.store.rollups import (
    HOUR_US,
    MINUTE_US,
    ROLLUP_TABLES,
    plan_series,
    rollup_rows,
    rollup_select_sql,
)
from fieldhub.store.types import AGGREGATES, Aggregate
from support.store_rows import H0, T0, S, msg, reference, store_shuffled


def test_rollups_in_sql_equal_rollups_in_python() -> None:
    """SQLite's writer aggregates a batch in SQL (`rollup_select_sql`), PostgreSQL's in Python
    (`rollup_rows`): the same rows, first and last values included, for every bucket size."""
    rng = random.Random(11)
    rows = {
        (rng.randrange(1, 6), rng.randrange(1, 4), H0 + rng.randrange(3 * HOUR_US)): round(
            rng.uniform(-50, 50), 3
        )
        for _ in range(5_000)
    }
    readings = [(d, m, ts, value) for (d, m, ts), value in rows.items()]
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE batch (device_id INTEGER, metric_id INTEGER, ts INTEGER, value REAL, "
        "PRIMARY KEY (device_id, metric_id, ts)) WITHOUT ROWID"
    )
    conn.executemany("INSERT INTO batch VALUES (?, ?, ?, ?)", readings)
    for size_us, _table in ROLLUP_TABLES:
        in_sql = conn.execute(rollup_select_sql("batch", size_us) + " ORDER BY 1, 2, 3").fetchall()
        in_python = rollup_rows(readings, size_us)
        assert len(in_sql) == len(in_python) >= 45  # every series, several buckets
        for got, want in zip(in_sql, in_python, strict=True):
            assert got[:4] == want[:4]
            assert got[7:] == want[7:]
            assert got[4:7] == pytest.approx(want[4:7], rel=1e-12)


def test_plan_uses_the_largest_rollup_and_raw_edges() -> None:
    parts = plan_series(H0 + 30 * S, H0 + 2 * HOUR_US + 90 * S, HOUR_US)
    assert [(p.table, p.start_us - H0, p.end_us - H0) for p in parts] == [
        (None, 30 * S, MINUTE_US),
        ("rollup_minute", MINUTE_US, HOUR_US),
        ("rollup_hour", HOUR_US, 2 * HOUR_US),
        ("rollup_minute", 2 * HOUR_US, 2 * HOUR_US + MINUTE_US),
        (None, 2 * HOUR_US + MINUTE_US, 2 * HOUR_US + 90 * S),
    ]
    # An interval the rollups do not divide reads raw readings only.
    assert [p.table for p in plan_series(H0, H0 + HOUR_US, 90 * S)] == [None]


# SQLite folds new readings into the rollups every second: none folded (the test runs within
# the second), some folded and some pending, all folded. PostgreSQL's are always current.
FOLDS = {"pending": 0, "partly_folded": 5, "folded": 1}


@pytest.mark.parametrize("agg", AGGREGATES)
@pytest.mark.parametrize("folds", FOLDS)
async def test_series_through_rollups_equal_series_from_every_reading(
    store: Store, agg: Aggregate, folds: str
) -> None:
    readings = await store_shuffled(store, seed=7, fold_every=FOLDS[folds])
    ranges = [
        (H0, H0 + 3 * HOUR_US),  # aligned: rollups only
        (H0 - 5 * MINUTE_US + 17 * S, H0 + 2 * HOUR_US + 41 * MINUTE_US + 3 * S),  # ragged
        (H0 + 10 * MINUTE_US, H0 + 50 * MINUTE_US),  # inside one hour
    ]
    for start, end in ranges:
        for interval in (MINUTE_US, 5 * MINUTE_US, HOUR_US, 2 * HOUR_US, 90 * S):
            got = await store.query_series(
                "dev-1", "t", start_us=start, end_us=end, interval_us=interval, agg=agg
            )
            want = reference(readings, start, end, interval, agg)
            assert [(p.ts_us, p.count) for p in got] == [(b, n) for b, _, n in want], (
                start - H0,
                interval,
            )
            assert [p.value for p in got] == pytest.approx([v for _, v, _ in want], rel=1e-9)


async def test_late_data_in_a_closed_hour_updates_its_rollup(store: Store) -> None:
    await store.write_batch(
        WriteBatch(
            decoded=[msg("dev-1", T0, [("t", H0 + 10 * S, 5.0), ("t", H0 + HOUR_US + S, 9.0)])]
        )
    )
    # An hour later, a buffered reading from the first hour arrives (and one twice).
    late = msg("dev-1", T0 + HOUR_US, [("t", H0 + 5 * S, 1.0), ("t", H0 + 10 * S, 5.0)])
    await store.write_batch(WriteBatch(decoded=[late]))
    points = await store.query_series(
        "dev-1", "t", start_us=H0, end_us=H0 + 2 * HOUR_US, interval_us=HOUR_US, agg="avg"
    )
    assert [(p.ts_us - H0, p.value, p.count) for p in points] == [
        (0, 3.0, 2),
        (HOUR_US, 9.0, 1),
    ]
    first = await store.query_series(
        "dev-1", "t", start_us=H0, end_us=H0 + HOUR_US, interval_us=HOUR_US, agg="first"
    )
    assert [p.value for p in first] == [1.0]


async def test_an_installation_from_before_rollups_gets_them_built_at_upgrade(
    tmp_path: Path,
) -> None:
    """A database at schema 3 (readings, no rollups) gains rollups of all it holds."""
    url = f"sqlite:///{tmp_path}/old.db"
    store = open_store(url)
    await store.open()
    readings = await store_shuffled(store, seed=3)
    await store.close()
    with sqlite3.connect(tmp_path / "old.db") as conn:  # back to how schema 3 left it
        conn.execute("DROP TABLE rollup_minute")
        conn.execute("DROP TABLE rollup_hour")
        conn.execute("DELETE FROM schema_migrations WHERE version = 4")
    store = open_store(url)
    await store.open()
    try:
        for interval, agg in ((HOUR_US, "first"), (MINUTE_US, "avg"), (HOUR_US, "last")):
            got = await store.query_series(
                "dev-1", "t", start_us=H0, end_us=H0 + 3 * HOUR_US, interval_us=interval, agg=agg
            )
            want = reference(readings, H0, H0 + 3 * HOUR_US, interval, agg)
            assert [(p.ts_us, p.count) for p in got] == [(b, n) for b, _, n in want]
            assert [p.value for p in got] == pytest.approx([v for _, v, _ in want])
    finally:
        await store.close()
