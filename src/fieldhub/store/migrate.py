"""`fieldhub migrate`: copy a SQLite installation into an empty PostgreSQL database.

The target is opened through the store first (`open_store` + `open()`), so its schema, migrations
and the partitions around now exist exactly as `fieldhub up` makes them. Then one asyncpg
connection copies the tables with `COPY` (`copy_records_to_table`: binary, one streamed COPY per
table) from chunks read off SQLite in primary-key order, ids included: readings, device metrics,
presence events and commands refer to devices, metrics and commands by id, so keeping the ids
keeps every reference valid, and the id sequences are moved past the copied ids at the end.

Everything is one PostgreSQL transaction that starts by locking the tables and checking they are
empty: a migration that fails or is interrupted leaves the target as it found it, and a target
that already holds data is refused before any row is written. Each table's indexes and keys are
dropped before its rows go in and built again after (as pg_restore does), inside that same
transaction and under the same names. SQLite is read in one read
transaction (a consistent snapshot) over a read-only connection; `PRAGMA data_version` tells
afterwards whether another process wrote to it meanwhile (fieldhub still running).

Readings get a monthly partition for every month that holds some, as far back as
PARTITION_HISTORY_MONTHS; older ones (a device whose clock was never set) go to the default
partition with anything too far ahead, as they would in a running store.

Afterwards the copy is verified: row counts per table, source beside target, and for a sample of
series count, min, max and sum of their values.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import asyncpg

from fieldhub import clock
from fieldhub.store.open import open_store, sqlite_path
from fieldhub.store.postgres_partitions import (
    PARTITION_MONTHS_AHEAD,
    month_index,
    month_start_us,
    partition_ddl,
)
from fieldhub.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from fieldhub.store.types import StoreError

# Rows read from SQLite at a time: large enough that per-chunk costs vanish, small enough that a
# chunk of readings (~100 bytes a row in Python) stays a few MB.
CHUNK_ROWS = 50_000
# Monthly readings partitions are created for months with readings back to this many months
# before now; older readings go to the default partition. Bounds how many partitions a handful of
# stray timestamps (an RTC reset to 2000-01-01) can create.
PARTITION_HISTORY_MONTHS = 120
# Series whose values are compared (count, min, max, sum) after the copy.
SERIES_SAMPLE = 20
# How long to wait for a lock on the target's tables (another fieldhub using it) before giving up.
LOCK_TIMEOUT_S = 10
# Sums of float values differ in their last bits when added in another order.
SUM_REL_TOLERANCE = 1e-9
US_PER_S = 1_000_000


@dataclass(frozen=True, slots=True)
class Table:
    """One table copied as is: the same name and columns in both schemas."""

    name: str
    columns: tuple[str, ...]
    order_by: str
    # The id column whose sequence must continue after the copied ids (BIGSERIAL/SERIAL).
    serial: str | None = None


# In dependency order (devices and metrics before what refers to them). JSON columns (attributes,
# params, result) are TEXT in SQLite and JSONB in PostgreSQL: asyncpg's default jsonb codec takes
# the JSON text as is and PostgreSQL parses it, so no Python round trip.
TABLES: tuple[Table, ...] = (
    Table("metrics", ("id", "name"), "id", serial="id"),
    Table(
        "devices",
        (
            "id",
            "uid",
            "profile",
            "first_seen_us",
            "last_seen_us",
            "presence",
            "presence_changed_us",
            "stale_after_s",
            "attributes",
            "command_format",
            "topic_id",
        ),
        "id",
        serial="id",
    ),
    Table("device_metrics", ("device_id", "metric_id"), "device_id, metric_id"),
    Table(
        "readings",
        ("device_id", "metric_id", "ts", "value", "received_at"),
        "device_id, metric_id, ts",
    ),
    Table("presence_events", ("device_id", "ts", "state"), "device_id, ts"),
    Table(
        "dead_letters",
        (
            "id",
            "received_at",
            "topic",
            "reason",
            "detail",
            "payload",
            "size",
            "device_uid",
            "profile",
        ),
        "id",
        serial="id",
    ),
    Table("retained_digests", ("topic", "digest"), "topic"),
    Table(
        "commands",
        (
            "id",
            "device_id",
            "uid",
            "name",
            "params",
            "format",
            "topic",
            "state",
            "created_us",
            "updated_us",
            "timeout_s",
            "expires_us",
            "sent_us",
            "finished_us",
            "result",
            "error",
            "decided_by",
        ),
        "id",
        serial="id",
    ),
    Table("command_history", ("command_id", "seq", "state", "at_us", "detail"), "command_id, seq"),
    *(
        Table(
            name,
            (
                "device_id",
                "metric_id",
                "bucket",
                "n",
                "total",
                "lo",
                "hi",
                "first_ts",
                "first_value",
                "last_ts",
                "last_value",
            ),
            "device_id, metric_id, bucket",
        )
        for name in ("rollup_minute", "rollup_hour")
    ),
)
# Tables of either schema that are not data to copy.
NOT_COPIED = {"schema_migrations"}


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


class _Silent:
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


def check_urls(source_url: str, target_url: str) -> Path:
    """The SQLite file to read; MigrationRefused when the URLs are not SQLite -> PostgreSQL."""
    source_is_pg = source_url.startswith(("postgresql:", "postgres:"))
    target_is_sqlite = target_url.startswith("sqlite:")
    if source_is_pg and target_is_sqlite:
        raise MigrationRefused(
            "the arguments are the wrong way round: fieldhub migrate SOURCE TARGET copies "
            "from SQLite (SOURCE, sqlite:///path/to/fieldhub.db) into PostgreSQL (TARGET, "
            "postgresql://user@host:5432/database)"
        )
    if not source_url.startswith("sqlite:"):
        raise MigrationRefused(
            f"SOURCE {source_url!r} is not a SQLite URL: pass the database fieldhub used so far, "
            "e.g. sqlite:///data/fieldhub.db (relative) or sqlite:////var/lib/fieldhub/fieldhub.db"
        )
    if not target_url.startswith(("postgresql://", "postgres://")):
        raise MigrationRefused(
            f"TARGET {safe_url(target_url)!r} is not a PostgreSQL URL: pass the empty database "
            "to move to, e.g. postgresql://user@host:5432/fieldhub"
        )
    try:
        return sqlite_path(source_url)
    except StoreError as exc:
        raise MigrationRefused(str(exc)) from None


def safe_url(url: str) -> str:
    """The URL without its password."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"


def _check_known(engine: str, found: dict[str, set[str]]) -> None:
    """StoreError unless a schema's tables and columns are exactly those TABLES copies: a table
    or column added by a later migration must never be left behind silently."""
    expected = {t.name: set(t.columns) for t in TABLES}
    problems = [f"table {name} is not copied" for name in sorted(found.keys() - expected.keys())]
    problems += [f"table {name} is missing" for name in sorted(expected.keys() - found.keys())]
    for name in sorted(found.keys() & expected.keys()):
        problems += [
            f"column {name}.{c} is not copied" for c in sorted(found[name] - expected[name])
        ]
        problems += [f"column {name}.{c} is missing" for c in sorted(expected[name] - found[name])]
    if problems:
        raise StoreError(
            f"the {engine} schema does not match what fieldhub migrate copies "
            f"({'; '.join(problems)}): a fieldhub bug, nothing was written; please report it"
        )


# -- months ------------------------------------------------------------------------------------


# -- the source --------------------------------------------------------------------------------


class _Source:
    """A read-only connection to the SQLite file, inside one read transaction (a snapshot)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise MigrationRefused(f"no SQLite database at {path}: SOURCE must be an existing file")
        try:
            self.conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,  # chunks are read on a worker thread, one at a time
            )
        except sqlite3.Error as exc:
            raise MigrationRefused(f"cannot open SQLite database {path}: {exc}") from exc
        self.path = path
        try:
            self._check_schema()
            self._check_tables()
            self.data_version = self._data_version()
            self.conn.execute("BEGIN")
            self.counts = {t.name: self._count(t.name) for t in TABLES}
        except sqlite3.Error as exc:
            self.conn.close()
            raise MigrationRefused(f"cannot read SQLite database {path}: {exc}") from exc
        except BaseException:
            self.conn.close()
            raise

    def _check_schema(self) -> None:
        try:
            (version,) = self.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        except sqlite3.DatabaseError as exc:
            raise MigrationRefused(
                f"{self.path} is not a fieldhub SQLite database ({exc})"
            ) from None
        known = max(v for v, _, _ in SQLITE_MIGRATIONS)
        if version != known:
            advice = (
                f"start this fieldhub on it once (fieldhub up --db sqlite:///{self.path}) to bring "
                "it up to date, stop it, then migrate"
                if (version or 0) < known
                else "use the fieldhub version that wrote it"
            )
            raise MigrationRefused(
                f"{self.path} has schema version {version}, this fieldhub migrates version "
                f"{known}: {advice}"
            )

    def _check_tables(self) -> None:
        names = [
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        found = {
            name: {r[1] for r in self.conn.execute(f"PRAGMA table_info({name})")}
            for name in names
            if name not in NOT_COPIED
        }
        _check_known("SQLite", found)

    def _data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def _count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def sequence_floors(self) -> dict[str, int]:
        """AUTOINCREMENT high-water marks: ids SQLite would never hand out again."""
        try:
            rows = self.conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall()
        except sqlite3.OperationalError:  # no AUTOINCREMENT table was ever written
            return {}
        return {str(name): int(seq) for name, seq in rows}

    def months_with_readings(self, first_month: int, end_month: int) -> set[int]:
        """The months in [first_month, end_month) holding readings, found by seeking each
        series' next reading (a primary-key seek per series and month, not a scan)."""
        months: set[int] = set()
        end_us = month_start_us(end_month)
        series = self.conn.execute("SELECT device_id, metric_id FROM device_metrics").fetchall()
        for device_pk, metric_pk in series:
            at_us = month_start_us(first_month)
            while True:
                row = self.conn.execute(
                    "SELECT ts FROM readings WHERE device_id = ? AND metric_id = ? AND ts >= ? "
                    "AND ts < ? ORDER BY ts LIMIT 1",
                    (device_pk, metric_pk, at_us, end_us),
                ).fetchone()
                if row is None:
                    break
                month = month_index(row[0])
                months.add(month)
                at_us = month_start_us(month + 1)
        return months

    def sample_series(self, n: int) -> tuple[list[tuple[int, int, str, str]], int]:
        """Up to `n` series spread evenly over all of them, as (device pk, metric pk, device,
        metric), and how many series there are."""
        rows = self.conn.execute(
            "SELECT dm.device_id, dm.metric_id, d.uid, m.name FROM device_metrics dm "
            "JOIN devices d ON d.id = dm.device_id JOIN metrics m ON m.id = dm.metric_id "
            "ORDER BY dm.device_id, dm.metric_id"
        ).fetchall()
        if len(rows) <= n:
            return rows, len(rows)
        step = len(rows) / n
        return [rows[int(i * step)] for i in range(n)], len(rows)

    def series_stats(self, device_pk: int, metric_pk: int) -> tuple[SeriesStats, float]:
        count, low, high, total, magnitude = self.conn.execute(
            "SELECT count(*), min(value), max(value), sum(value), sum(abs(value)) FROM readings "
            "WHERE device_id = ? AND metric_id = ?",
            (device_pk, metric_pk),
        ).fetchone()
        return SeriesStats(count, low, high, total), float(magnitude or 0.0)

    def finish(self) -> bool:
        """End the snapshot; True when another connection committed to the file meanwhile."""
        self.conn.execute("COMMIT")
        return self._data_version() != self.data_version

    def close(self) -> None:
        self.conn.close()


# -- the copy ----------------------------------------------------------------------------------


async def _copy_table(
    source: _Source,
    conn: asyncpg.Connection,
    table: Table,
    progress: Progress,
    chunk_rows: int,
) -> None:
    """The table's rows in primary-key order, one COPY per chunk; the next chunk is read from
    SQLite on a worker thread while PostgreSQL takes the current one.

    One COPY per chunk of a list, not one COPY streaming an async iterator: asyncpg encodes a
    list in one tight loop, and yielding row by row cost more than the extra round trips
    (measured: 4.7 s against 7.7 s for 1M readings).
    """
    cursor = source.conn.execute(
        f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY {table.order_by}"
    )
    pending = asyncio.ensure_future(asyncio.to_thread(cursor.fetchmany, chunk_rows))
    try:
        # Shielded: cancelling (Ctrl-C) must not detach the thread still using the cursor.
        while rows := await asyncio.shield(pending):
            pending = asyncio.ensure_future(asyncio.to_thread(cursor.fetchmany, chunk_rows))
            await conn.copy_records_to_table(table.name, records=rows, columns=table.columns)
            progress.rows_copied(table.name, len(rows))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error) as exc:
        raise StoreError(f"copying {table.name} failed (nothing was committed): {exc}") from exc
    finally:
        # A failed or cancelled COPY leaves a read in flight: let it end before the cursor goes.
        await asyncio.wait([pending])
        if not pending.cancelled():
            pending.exception()  # retrieved: after a failed COPY a failed read says nothing new
        cursor.close()


async def _drop_indexes(conn: asyncpg.Connection, table: str) -> list[str]:
    """Drop a table's indexes (key constraints included) and return the statements that make
    them again, as they were: building an index once over loaded rows costs a fraction of
    maintaining it row by row (pg_restore loads the same way). Partitioned tables' indexes go
    and come back with their partitions' indexes."""
    recreate: list[str] = []
    for name, definition in await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype IN ('p', 'u') ORDER BY contype, conname",
        table,
    ):
        await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        recreate.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    for name, definition in await conn.fetch(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = $1::regclass ORDER BY 1",
        table,
    ):
        await conn.execute(f"DROP INDEX {name}")
        # A partitioned table's index reads `ON ONLY parent`; made again, it must cover the
        # partitions too.
        recreate.append(definition.replace(" ON ONLY ", " ON ", 1))
    return recreate


async def _check_target_schema(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT c.relname, a.attname FROM pg_class c "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') "
        "AND NOT c.relispartition"
    )
    found: dict[str, set[str]] = {}
    for table, column in rows:
        if table not in NOT_COPIED:
            found.setdefault(table, set()).add(column)
    _check_known("PostgreSQL", found)


async def _refuse_unless_empty(conn: asyncpg.Connection) -> None:
    """Lock the tables against other writers and refuse if any of them holds rows."""
    names = ", ".join(t.name for t in TABLES)
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
    try:
        await conn.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
    except asyncpg.LockNotAvailableError:
        raise MigrationRefused(
            f"the target's tables stayed locked for {LOCK_TIMEOUT_S} s: another fieldhub is "
            "using that database; migrate into an empty database nothing else uses"
        ) from None
    checks = ", ".join(f"EXISTS (SELECT 1 FROM {t.name})" for t in TABLES)
    found = await conn.fetchrow(f"SELECT {checks}")
    assert found is not None
    filled = [t.name for t, has_rows in zip(TABLES, found, strict=True) if has_rows]
    if filled:
        raise MigrationRefused(
            f"the target database already holds fieldhub data (rows in {', '.join(filled)}); "
            "no rows were copied. Migrate into an empty database: create a new one "
            "(createdb fieldhub) or drop and recreate this one"
        )


async def _create_partitions(
    source: _Source, conn: asyncpg.Connection, now_us: int
) -> tuple[list[str], int]:
    """Monthly partitions for the source's months of readings; returns the names created and
    the first month covered."""
    now_month = month_index(now_us)
    first = now_month - PARTITION_HISTORY_MONTHS
    months = await asyncio.to_thread(
        source.months_with_readings, first, now_month + PARTITION_MONTHS_AHEAD + 1
    )
    existing = {
        r[0]
        for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'readings'::regclass"
        )
    }
    created = []
    for month in sorted(months):
        name, ddl = partition_ddl(month)
        if name in existing:
            continue
        await conn.execute(ddl)
        created.append(name)
    return created, first


async def _advance_sequences(source: _Source, conn: asyncpg.Connection) -> None:
    """Set each id sequence so the next id follows the copied ones (and SQLite's AUTOINCREMENT
    high-water mark: ids of deleted dead letters are not handed out again either)."""
    floors = source.sequence_floors()
    for table in TABLES:
        if table.serial is None:
            continue
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table.name}', '{table.serial}'), "
            f"GREATEST(coalesce(max({table.serial}), 0), $1::bigint) + 1, false) "
            f"FROM {table.name}",
            floors.get(table.name, 0),
        )


async def _verify(
    source: _Source, conn: asyncpg.Connection, result: MigrationResult, progress: Progress
) -> None:
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


async def migrate_sqlite_to_postgres(
    source_url: str,
    target_url: str,
    *,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> MigrationResult:
    """Copy the SQLite database at `source_url` into the empty PostgreSQL database at
    `target_url` and verify the copy (see the module docstring).

    Raises MigrationRefused (nothing written) for URLs of the wrong kinds, a missing or
    out-of-date source, or a target that holds data; StoreError when the copy fails (rolled
    back). Verification failures are in the result (`ok` False), the copy being committed.
    """
    report: Progress = progress or _Silent()
    started = time.monotonic()
    path = check_urls(source_url, target_url)
    source = _Source(path)
    try:
        store = open_store(target_url)
        try:
            await store.open()  # schema, migrations and the partitions around now
        finally:
            await store.close()
        try:
            conn = await asyncpg.connect(target_url)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {safe_url(target_url)}: {exc}"
            ) from exc
        try:
            result = await _copy_all(source, conn, report, chunk_rows)
            await _verify(source, conn, result, report)
            result.source_changed = source.finish()
            report.step("analyzing the copied tables for the query planner")
            await conn.execute(f"ANALYZE {', '.join(t.name for t in TABLES)}")
        finally:
            await conn.close()
    finally:
        source.close()
    result.seconds = time.monotonic() - started
    return result


async def _copy_all(
    source: _Source, conn: asyncpg.Connection, progress: Progress, chunk_rows: int
) -> MigrationResult:
    result = MigrationResult()
    try:
        async with conn.transaction():
            await _check_target_schema(conn)
            await _refuse_unless_empty(conn)
            created, first_month = await _create_partitions(source, conn, clock.now_us())
            result.partitions_created = created
            progress.step(
                f"readings partitions: {len(created)} monthly created for the source's months "
                f"(readings before {first_month // 12:04d}-{first_month % 12 + 1:02d} go to the "
                "default partition)"
            )
            for table in TABLES:
                rows = source.counts[table.name]
                progress.table_started(table.name, rows)
                copy_started = time.monotonic()
                if rows:
                    indexes = await _drop_indexes(conn, table.name)
                    await _copy_table(source, conn, table, progress, chunk_rows)
                    for statement in indexes:
                        await conn.execute(statement)
                seconds = time.monotonic() - copy_started
                if table.name == "readings":
                    result.readings_seconds = seconds
                progress.table_done(table.name, rows, seconds)
            await _advance_sequences(source, conn)
    except asyncpg.PostgresError as exc:
        raise StoreError(f"the migration failed and was rolled back: {exc}") from exc
    progress.committed()
    return result
