"""SQLite-specific: batches leave their new readings pending and a fold adds them to the rollups
every second. Reads never wait for it; the rollups are whole after a fold, at close, and at the
next open after a crash; `fieldhub migrate` refuses a file with readings pending."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldhub.store import sqlite as sqlite_module
from fieldhub.store.dialect import Dialect
from fieldhub.store.migrate import migrate_sqlite_to_postgres
from fieldhub.store.migrate_outcome import MigrationRefused
from fieldhub.store.ops import Script
from fieldhub.store.rollups import HOUR_US, MINUTE_US, ROLLUP_TABLES, rollup_rows
from fieldhub.store.sqlite import SqliteStore
from fieldhub.store.types import WriteBatch
from fieldhub.store.writes import fold_rollups
from support.store_rows import H0, T0, S, msg, reference, store_shuffled
from support.waiting import await_until

STALE = {"native": 120}
NEVER_S = 3600.0  # no fold of the store's own during a test: each happens when the test says


@contextlib.asynccontextmanager
async def _opened(db: Path, fold_interval_s: float = NEVER_S) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(db, stale_after_s=STALE, fold_interval_s=fold_interval_s)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _rollups_of_every_reading(db: Path) -> None:
    """Each rollup table holds exactly the rollups of every stored reading."""
    with sqlite3.connect(db) as conn:
        readings = conn.execute("SELECT device_id, metric_id, ts, value FROM readings").fetchall()
        for size_us, table in ROLLUP_TABLES:
            stored = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
            want = rollup_rows(readings, size_us)
            assert [r[:4] + r[7:] for r in stored] == [r[:4] + r[7:] for r in want], table
            sums = [value for r in stored for value in r[4:7]]
            assert sums == pytest.approx([value for r in want for value in r[4:7]], rel=1e-12)


async def test_series_read_pending_readings_before_and_after_the_fold(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    async with _opened(db) as store:
        readings = await store_shuffled(store, seed=5)
        assert _count(db, "rollup_pending") == len(readings)  # redeliveries are not pending
        assert _count(db, "rollup_minute") == _count(db, "rollup_hour") == 0
        for state in ("pending", "folded"):
            for interval, agg in ((MINUTE_US, "avg"), (HOUR_US, "first"), (HOUR_US, "last")):
                got = await store.query_series(
                    "dev-1", "t", start_us=H0, end_us=H0 + 3 * HOUR_US, interval_us=interval,
                    agg=agg,
                )  # fmt: skip
                want = reference(readings, H0, H0 + 3 * HOUR_US, interval, agg)
                assert [(p.ts_us, p.count) for p in got] == [(b, n) for b, _, n in want], state
                assert [p.value for p in got] == pytest.approx([v for _, v, _ in want]), state
            if state == "pending":
                assert await store.fold_rollups() == len(readings)
                assert _count(db, "rollup_pending") == 0
                _rollups_of_every_reading(db)
        assert await store.fold_rollups() == 0  # nothing left: a fold of nothing


async def test_the_store_folds_every_interval(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    async with _opened(db, fold_interval_s=0.05) as store:
        await store.write_batch(WriteBatch(decoded=[msg("dev-1", T0, [("t", T0, 1.5)])]))
        await await_until(
            lambda: _count(db, "rollup_minute") == 1 and _count(db, "rollup_pending") == 0,
            timeout_s=10,
            what="the store's own fold",
        )


async def test_an_idle_store_does_not_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only slices something was stored in since their last fold are folded: an idle process
    commits no empty fold transactions (16 a second before)."""
    folds: list[int | None] = []

    def counted(d: Dialect, slice_: int | None = None) -> Script[int]:
        folds.append(slice_)
        return fold_rollups(d, slice_)

    monkeypatch.setattr(sqlite_module.writes, "fold_rollups", counted)
    db = tmp_path / "f.db"
    async with _opened(db, fold_interval_s=0.05) as store:
        await asyncio.sleep(0.5)  # ~10 rotations of the 16 slices
        assert [s for s in folds if s is not None] == []
        await store.write_batch(WriteBatch(decoded=[msg("dev-1", T0, [("t", T0, 1.5)])]))
        await await_until(
            lambda: _count(db, "rollup_pending") == 0, timeout_s=10, what="the fold of dev-1"
        )
        await asyncio.sleep(0.3)
        # Each slice once at most after the batch (the batch counts for all of them), then quiet.
        sliced = [s for s in folds if s is not None]
        assert 1 <= len(sliced) <= 16
        assert len(set(sliced)) == len(sliced)
    assert _count(db, "rollup_minute") == 1


async def test_folds_failing_for_a_while_are_a_health_problem_until_they_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches go on while folds fail (their readings stay pending); past the limit the store
    says why for /healthz, and says nothing once a fold succeeds again."""
    monkeypatch.setattr(sqlite_module, "FOLD_PROBLEM_AFTER_S", 0.3)
    db = tmp_path / "f.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")  # the store's own mode; a test trigger beside it
    async with _opened(db, fold_interval_s=0.05) as store:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TRIGGER refuse_minutes BEFORE INSERT ON rollup_minute "
                "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
            )
        await store.write_batch(WriteBatch(decoded=[msg("dev-1", T0, [("t", T0, 1.5)])]))
        assert store.rollups_problem() is None  # failing, but not for long yet
        await await_until(
            lambda: store.rollups_problem() is not None, timeout_s=10, what="the problem"
        )
        problem = store.rollups_problem() or ""
        assert "refused by a test trigger" in problem
        assert "new readings have not reached the rollups" in problem
        await store.write_batch(WriteBatch(decoded=[msg("dev-1", T0 + 1, [("t", T0 + 1, 2.5)])]))
        assert _count(db, "rollup_pending") == 2
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER refuse_minutes")
        await await_until(
            lambda: store.rollups_problem() is None and _count(db, "rollup_pending") == 0,
            timeout_s=10,
            what="the fold succeeding again",
        )
    _rollups_of_every_reading(db)


async def test_close_folds_and_open_folds_what_a_crash_left(tmp_path: Path) -> None:
    db, crashed = tmp_path / "f.db", tmp_path / "crashed" / "f.db"
    crashed.parent.mkdir()
    async with _opened(db) as store:
        await store_shuffled(store, seed=9)
        # The files as a crash would leave them: committed readings, pending in the WAL.
        for suffix in ("", "-wal"):
            shutil.copy(db.with_name(db.name + suffix), crashed.with_name(crashed.name + suffix))
    assert _count(db, "rollup_pending") == 0
    _rollups_of_every_reading(db)

    assert _count(crashed, "rollup_pending") > 0
    async with _opened(crashed):
        assert _count(crashed, "rollup_pending") == 0
        _rollups_of_every_reading(crashed)


async def test_migrate_refuses_a_file_with_readings_pending(tmp_path: Path) -> None:
    """Checked before the target is touched: no PostgreSQL needed to see the refusal."""
    db = tmp_path / "f.db"
    async with _opened(db):
        pass
    with sqlite3.connect(db) as conn:  # what a crash leaves
        conn.execute("INSERT INTO rollup_pending VALUES (1, 1, 1, ?, 2.5)", (T0 + S,))
    with pytest.raises(MigrationRefused, match=r"1 readings not yet added to the rollups.*start"):
        await migrate_sqlite_to_postgres(f"sqlite:///{db}", "postgresql://u@127.0.0.1:9/none")


@pytest.mark.parametrize("folded", ["dev-a", "dev-b"])
async def test_a_fleet_tie_goes_to_the_smaller_device_folded_or_pending(
    tmp_path: Path, folded: str
) -> None:
    """Two devices' readings at the same time, one folded and one pending: the fleet's first
    and last value are dev-a's either way, as when both are folded."""
    async with _opened(tmp_path / "f.db") as store:
        value = {"dev-a": 1.0, "dev-b": 2.0}
        pending = "dev-b" if folded == "dev-a" else "dev-a"
        for device in (folded, pending):
            await store.write_batch(
                WriteBatch(decoded=[msg(device, T0, [("t", H0 + S, value[device])])])
            )
            if device == folded:
                await store.fold_rollups()
        for agg in ("first", "last"):
            got = await store.query_fleet_series(
                "t", device_ids=None, start_us=H0, end_us=H0 + HOUR_US, interval_us=HOUR_US, agg=agg
            )
            assert [(p.value, p.count) for p in got] == [(1.0, 2)], agg
