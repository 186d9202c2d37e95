"""The SQLite engine: one writer connection on its own thread, readers on a small pool; the
shared core's scripts (core.py) run on them.

WAL lets readers run while the writer commits; `synchronous=NORMAL` in WAL mode survives a crash
of fieldhub (a power cut can lose the last commits, not corrupt the file) and is 7x faster than
FULL when each row is its own commit (measured 44k vs 6.2k rows/s: docs/field-notes.md,
"Measured limits").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from fieldhub.store import writes
from fieldhub.store.core import SqlStore
from fieldhub.store.dialect import SQLITE
from fieldhub.store.ops import Bulk, Count, Many, Op, Query, Row, Script, Statements, run_sync
from fieldhub.store.sqlite_schema import MIGRATIONS
from fieldhub.store.types import StoreError, StoreUnavailable, WriteBatch, WriteResult

T = TypeVar("T")
log = logging.getLogger("fieldhub.store")

# Primary result codes (https://www.sqlite.org/rescode.html) that say the database cannot write
# now, whatever the data: full disk, I/O errors, a read-only file or directory, another
# process's lock, a file that cannot be opened, memory. Everything else (a constraint, a value
# too big, a type) may be about the data.
UNAVAILABLE_CODES = frozenset(
    (
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_PROTOCOL,
    )
)


def store_error(exc: sqlite3.Error) -> StoreError:
    """The StoreError for a driver error: StoreUnavailable when SQLite says the database cannot
    write now (UNAVAILABLE_CODES), else StoreError."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in UNAVAILABLE_CODES:
        return StoreUnavailable(f"SQLite: {exc}")
    return StoreError(f"SQLite: {exc}")


# Readers wait this long for the writer's lock instead of failing at once with "database is locked".
BUSY_TIMEOUT_MS = 5_000
# Reader threads: API requests run queries here. SQLite reads are CPU-bound under the GIL, so a
# few threads only serve to keep one slow query from queueing the rest.
READER_THREADS = 4
# Page cache per connection. Batched inserts touch one B-tree leaf per (device, metric) series; with
# SQLite's default 2 MiB the leaves of a 1,000-device fleet do not stay cached and every batch
# re-reads them. 64 MiB keeps ~16k leaf pages hot for the writer and for readers' repeated queries.
CACHE_KIB = 64 * 1024
# Checkpoints copy WAL pages back into the database file. SQLite runs them inside the commit that
# pushes the WAL past `wal_autocheckpoint` pages; copying ~32 MiB there took ~150 ms, a pause every
# 2-3 s in every commit and so in every live update at 10k readings/s (bench/live.py: p99 170 ms
# against a p50 of 13 ms). So a thread of our own (`_Checkpointer`) runs PASSIVE checkpoints,
# which never block the writer, every CHECKPOINT_INTERVAL_S. Leaving the writer's checkpoint at
# 8,192 pages beside it brought the pauses back (p99 70-139 ms): whatever the background had not
# yet copied, the writer copied inside a commit.
#
# At 10,000 msg/s the WAL grows ~200 MB a second (each reading dirties a leaf of its own series,
# whatever the batch size below a few seconds of data), so the writer's backstop (below) comes
# every second or so, and it copies what the background has not yet: up to an interval's worth.
# Every 1 s that took 50-145 ms inside a commit; every 0.1 s, 33-53 ms (bench/README.md). An
# idle WAL costs a checkpoint that has nothing to copy.
CHECKPOINT_INTERVAL_S = 0.1
# How often each device's pending readings are folded into the rollups (writes.py,
# `fold_rollups`): one slice of the devices every FOLD_INTERVAL_S / FOLD_SLICES. Longer is
# cheaper for the writer (each fold rewrites the current rollup rows of every series in the
# slice), shorter keeps less pending for series reads to scan.
FOLD_INTERVAL_S = 1.0
# Folds failing this long make health `degraded` (Store.rollups_problem): one failure (a lock
# held by an outside tool for a moment) is retried at the next slice; a minute is a cause.
FOLD_PROBLEM_AFTER_S = 60.0
# The writer still checkpoints by itself past this many WAL pages (4 KiB each). Under continuous
# writes a background checkpoint always has newer frames behind it, so the WAL cannot restart
# from its beginning and grows until this backstop, where the writer's checkpoint finds almost
# everything copied and restarts it. The price: a WAL file of up to ~300 MiB under sustained heavy
# ingest (measured: 280-330 MiB at 10k rows/s), in exchange for commits without pauses.
WAL_AUTOCHECKPOINT_PAGES = 65_536
# ...and what that backstop copies inside its commit is what the background has not copied yet.
# Within this many frames of it (~0.2 s of WAL at 10,000 msg/s) the background checkpoints every
# CHECKPOINT_NEAR_BACKSTOP_S, so the backstop finds next to nothing left: at 10,000 msg/s its
# commits went from 35-55 ms every ~1.1 s to under 40 ms at most, and publish -> commit p99 from
# 0.086-0.1 s to 0.05 s (bench/README.md). Each such checkpoint costs little: it copies 10 ms of
# WAL, off the writer's thread.
BACKSTOP_NEAR_FRAMES = 12_000
CHECKPOINT_NEAR_BACKSTOP_S = 0.01
# The background checkpointer logs when a checkpoint leaves more than this many frames behind
# (a long-running reader pins them): the WAL file grows until it can finish.
CHECKPOINT_BEHIND_WARN_FRAMES = 32_768
# Rows per multi-row statement (see _execute_rows): 5 columns x 1,000 rows stays far below
# SQLite's 32,766 bound parameters, and larger statements stopped paying off in measurements.
ROWS_PER_STATEMENT = 1_000


def _execute_rows(
    conn: sqlite3.Connection, head: str, tail: str, rows: Sequence[Sequence[Any]]
) -> list[Any]:
    """Run `head (?, ...), (?, ...) tail` over `rows`, ROWS_PER_STATEMENT rows per statement.

    executemany() steps once per row, and the sqlite3 module releases and retakes the GIL around
    every step; with ingest's network thread busy, each retake waits for a thread switch, which
    made the writer 3x slower than alone. One multi-row statement is one step: SQLite then does
    the B-tree work for hundreds of rows while the network thread runs.
    """
    if not rows:
        return []
    width = len(rows[0])
    group = "(" + ", ".join("?" * width) + ")"
    out: list[Any] = []
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        sql = head + ", ".join([group] * len(chunk)) + tail
        out += conn.execute(sql, list(itertools.chain.from_iterable(chunk))).fetchall()
    return out


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        # The writer's staging table (writes.py) holds a batch at a time: never worth a file.
        conn.execute("PRAGMA temp_store = MEMORY")
    return conn


class _Checkpointer:
    """A thread that checkpoints the WAL in PASSIVE mode once per interval (more often near the
    writer's backstop, see BACKSTOP_NEAR_FRAMES)."""

    def __init__(self, path: Path, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="store.sqlite.checkpoint", daemon=True
        )
        self.checkpoints = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        conn = _connect(self.path)
        try:
            interval = self.interval_s
            while not self._stop.wait(interval):
                try:
                    _, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # the writer's backstop checkpoint still runs
                    log.warning("WAL checkpoint failed: %s", exc)
                    interval = self.interval_s
                    continue
                near = frames >= WAL_AUTOCHECKPOINT_PAGES - BACKSTOP_NEAR_FRAMES
                interval = CHECKPOINT_NEAR_BACKSTOP_S if near else self.interval_s
                self.checkpoints += 1
                if frames - done > CHECKPOINT_BEHIND_WARN_FRAMES:
                    log.warning(
                        "WAL checkpoint left %d of %d frames (a long read holds them); the WAL "
                        "file grows until it finishes",
                        frames - done,
                        frames,
                    )
        finally:
            conn.close()


class SqliteStore(SqlStore):
    """SQLite implementation of `Store` (see the module docstring): the shared core's scripts run
    on the writer thread in one transaction, or on a reader thread."""

    dialect = SQLITE

    def __init__(
        self,
        path: Path,
        *,
        stale_after_s: Mapping[str, int],
        fold_interval_s: float = FOLD_INTERVAL_S,
    ) -> None:
        super().__init__(stale_after_s=stale_after_s)
        self.path = path
        self.fold_interval_s = fold_interval_s
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="store.sqlite.writer")
        self._reader_pool = ThreadPoolExecutor(
            READER_THREADS, thread_name_prefix="store.sqlite.reader"
        )
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._closed = False
        self._checkpointer: _Checkpointer | None = None
        self._folder: asyncio.Task[None] | None = None
        # Slice -> since when (time.monotonic) and why its folds fail. Per slice: a slice with
        # nothing pending folds fine beside one that keeps failing.
        self._fold_failing: dict[int, tuple[float, str]] = {}
        # Batches that stored readings (so left some pending), and that count as each slice's
        # last successful fold began: a slice no batch has written to since is not folded (an
        # idle process would otherwise commit 16 empty folds a second, forever).
        self._batches_with_readings = 0
        self._folded_after = [0] * writes.FOLD_SLICES

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file if needed, migrate, load the writer's caches, start checkpointing."""
        await self._on_writer(self._open_writer)
        await self._migrate(MIGRATIONS, str(self.path))
        await self._load_caches()
        # What a crash left pending goes into the rollups before anything else is written.
        await self.fold_rollups()
        self._checkpointer = _Checkpointer(self.path)
        self._checkpointer.start()
        self._folder = asyncio.create_task(self._fold_every_interval(), name="store.sqlite.fold")

    async def _fold_every_interval(self) -> None:
        for slice_ in itertools.cycle(range(writes.FOLD_SLICES)):
            await asyncio.sleep(self.fold_interval_s / writes.FOLD_SLICES)
            batches = self._batches_with_readings
            if self._folded_after[slice_] == batches and slice_ not in self._fold_failing:
                continue  # nothing stored since this slice's last fold: nothing pending in it
            try:
                await self._write(writes.fold_rollups(self.dialect, slice_))
            except StoreError as exc:
                # Nothing is lost: the readings stay pending, and reads add them meanwhile.
                if not self._fold_failing:
                    log.warning(
                        "adding new readings to the rollups failed (%s); they stay pending, "
                        "series reads include them, and the fold is retried every %.0f s",
                        exc,
                        self.fold_interval_s,
                    )
                if slice_ not in self._fold_failing:
                    self._fold_failing[slice_] = (time.monotonic(), str(exc)[:300])
            else:
                self._folded_after[slice_] = batches
                if self._fold_failing.pop(slice_, None) is not None and not self._fold_failing:
                    log.warning("adding new readings to the rollups succeeds again")

    async def write_batch(self, batch: WriteBatch) -> WriteResult:
        """See `Store.write_batch`; counts the batches that left readings pending."""
        result = await super().write_batch(batch)
        if result.readings_written:
            self._batches_with_readings += 1
        return result

    def rollups_problem(self) -> str | None:
        """See `Store.rollups_problem`: folds failing for FOLD_PROBLEM_AFTER_S or longer."""
        if not self._fold_failing:
            return None
        since_s, why = min(self._fold_failing.values())
        failing_s = time.monotonic() - since_s
        if failing_s < FOLD_PROBLEM_AFTER_S:
            return None
        return (
            f"new readings have not reached the rollups for {failing_s:.0f} s ({why}); "
            "nothing is lost and series reads include them, but those reads slow down as they "
            "pile up: see the log for the cause"
        )

    def _open_writer(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Finish queued writes, then close every connection. Closing again does nothing."""
        if self._closed:
            return
        # Set first: calls made from now on get StoreError instead of queueing behind the close.
        self._closed = True
        if self._folder is not None:
            self._folder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._folder
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
        await asyncio.get_running_loop().run_in_executor(self._writer_pool, self._close_writer)
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)

    def _close_writer(self) -> None:
        if self._writer is not None:
            # Queued after every write: the rollups are complete in the file that is left.
            try:
                self._in_transaction(writes.fold_rollups(self.dialect))
            except StoreError as exc:  # the next open folds them
                log.warning("adding the last readings to the rollups failed at close: %s", exc)
            self._writer.close()
            self._writer = None

    async def _on_writer(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, fn)

    # -- running scripts -----------------------------------------------------------------------

    async def _read(self, script: Script[T]) -> T:
        """Run a script on this thread's read-only connection (one per reader thread)."""

        def run() -> T:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = _connect(self.path, readonly=True)
                self._local.conn = conn
            return run_sync(script, lambda op: _execute(conn, op))

        if self._closed:
            raise StoreError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, run)

    async def _write(self, script: Script[T]) -> T:
        """Run a script on the writer thread inside BEGIN IMMEDIATE ... COMMIT."""
        return await self._on_writer(lambda: self._in_transaction(script))

    def _in_transaction(self, script: Script[T]) -> T:
        conn = self._writer
        if conn is None:
            raise StoreError("the store is not open")
        try:
            conn.execute("BEGIN IMMEDIATE")
            value = run_sync(script, lambda op: _execute(conn, op))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback:  # a full disk can fail it too: report the cause
                    log.warning("SQLite: rolling back after %s failed: %s", exc, rollback)
            if isinstance(exc, sqlite3.Error):
                raise store_error(exc) from exc
            raise
        return value

    # -- engine upkeep -------------------------------------------------------------------------

    async def maintain(self, now_us: int) -> None:
        """Nothing to prepare ahead of time: SQLite tables are not partitioned."""

    async def size_bytes(self) -> int:
        """The database file and its WAL."""
        return sum(
            path.stat().st_size
            for path in (self.path, self.path.with_name(self.path.name + "-wal"))
            if path.exists()
        )


def _statements(sql: str) -> list[str]:
    """The statements of a migration's text. Comments may hold semicolons: dropped first."""
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [statement for statement in code.split(";") if statement.strip()]


def _execute(conn: sqlite3.Connection, op: Op) -> list[Row]:
    """Run one operation of a script (ops.py) on `conn`."""
    try:
        match op:
            case Query(sql, args):
                return conn.execute(sql, args).fetchall()
            case Count(sql, args):
                return [(conn.execute(sql, args).rowcount,)]
            case Many(sql, rows):
                conn.executemany(sql, rows)
                return []
            case Bulk(head, tail, _, rows):
                return _execute_rows(conn, head + "VALUES ", tail, rows)
            case Statements(sql):
                for statement in _statements(sql):
                    conn.execute(statement)
                return []
    except sqlite3.Error as exc:
        raise store_error(exc) from exc
    raise TypeError(f"not a store operation: {op!r}")
