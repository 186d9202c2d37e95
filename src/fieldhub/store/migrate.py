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

This module checks the URLs and the target and runs the steps in order; the steps live in
migrate_tables (what is copied), migrate_source (the SQLite snapshot), migrate_copy (partitions,
COPY, indexes, sequences), migrate_verify (the verification) and migrate_outcome (the refusal,
the progress reported and the result).
"""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg

from fieldhub import clock
from fieldhub.store.migrate_copy import (
    CHUNK_ROWS,
    advance_sequences,
    copy_table,
    create_partitions,
    drop_indexes,
)
from fieldhub.store.migrate_outcome import (
    MigrationRefused,
    MigrationResult,
    Progress,
    SeriesCheck,
    SeriesStats,
    Silent,
    TableCount,
)
from fieldhub.store.migrate_source import SqliteSource
from fieldhub.store.migrate_tables import NOT_COPIED, TABLES, Table, check_known
from fieldhub.store.migrate_verify import verify
from fieldhub.store.open import open_store, sqlite_path
from fieldhub.store.types import StoreError

# The names callers use (the CLI, the tests), whichever module of the migration defines them.
__all__ = [
    "CHUNK_ROWS",
    "TABLES",
    "MigrationRefused",
    "MigrationResult",
    "Progress",
    "SeriesCheck",
    "SeriesStats",
    "Table",
    "TableCount",
    "check_urls",
    "migrate_sqlite_to_postgres",
    "safe_url",
]

# How long to wait for a lock on the target's tables (another fieldhub using it) before giving up.
LOCK_TIMEOUT_S = 10


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


async def _check_target_schema(conn: asyncpg.Connection) -> None:
    """StoreError unless the target's tables and columns are exactly those TABLES copies."""
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
    check_known("PostgreSQL", found)


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
    report: Progress = progress or Silent()
    started = time.monotonic()
    path = check_urls(source_url, target_url)
    source = SqliteSource(path)
    try:
        source.check_rollups_complete()
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
            await verify(source, conn, result, report)
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
    source: SqliteSource, conn: asyncpg.Connection, progress: Progress, chunk_rows: int
) -> MigrationResult:
    """Everything written to the target, in one transaction: refused or failed, nothing stays."""
    result = MigrationResult()
    try:
        async with conn.transaction():
            await _check_target_schema(conn)
            await _refuse_unless_empty(conn)
            created, first_month = await create_partitions(source, conn, clock.now_us())
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
                    indexes = await drop_indexes(conn, table.name)
                    await copy_table(source, conn, table, progress, chunk_rows)
                    for statement in indexes:
                        await conn.execute(statement)
                seconds = time.monotonic() - copy_started
                if table.name == "readings":
                    result.readings_seconds = seconds
                progress.table_done(table.name, rows, seconds)
            await advance_sequences(source, conn)
    except asyncpg.PostgresError as exc:
        raise StoreError(f"the migration failed and was rolled back: {exc}") from exc
    progress.committed()
    return result
