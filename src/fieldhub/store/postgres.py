"""The PostgreSQL store: asyncpg, a small connection pool, readings partitioned by month.

The same shared core (core.py) and test suite as SQLite. Differences that matter to an operator:
several processes may write at once (devices and metrics are created with ON CONFLICT, so two
ingest workers meeting a new device both end up with its one id; rows a decision reads are
locked until commit), and bulk rows go in as arrays (`unnest`), one statement per table per
batch, which with ON CONFLICT DO NOTHING absorbs redeliveries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import asyncpg
import orjson

from fieldhub import clock
from fieldhub.store import postgres_partitions as partitions
from fieldhub.store.core import SqlStore
from fieldhub.store.dialect import POSTGRES
from fieldhub.store.ops import (
    Bulk,
    Count,
    Many,
    Op,
    Query,
    Row,
    Script,
    Staging,
    Statements,
    run_async,
)
from fieldhub.store.postgres_schema import MIGRATIONS
from fieldhub.store.types import StoreError, StoreUnavailable, Tier

T = TypeVar("T")
# A pooled connection. asyncpg's stubs type the pool's proxy apart from Connection though it
# forwards every method; one alias keeps the signatures readable.
Conn = Any
log = logging.getLogger("fieldhub.store")

# SQLSTATE classes and codes that say the server cannot do its part now, whatever the data:
# connection exceptions (08), transaction rollbacks on conflicts (40), insufficient resources
# such as a full disk (53), operator intervention such as a shutdown (57), system errors such as
# I/O (58); a read-only transaction (25006) and a lock not available (55P03). Everything else
# (a constraint: 23, a data exception: 22) may be about the data.
UNAVAILABLE_CLASSES = frozenset(("08", "40", "53", "57", "58"))
UNAVAILABLE_STATES = frozenset(("25006", "55P03", "55006"))


def store_error(exc: BaseException) -> StoreError:
    """The StoreError for a driver error: StoreUnavailable when the server cannot do its part
    now (a lost connection, an OSError, the SQLSTATEs above), else StoreError."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state[:2] in UNAVAILABLE_CLASSES or state in UNAVAILABLE_STATES:
            return StoreUnavailable(f"PostgreSQL: {exc}")
        return StoreError(f"PostgreSQL: {exc}")
    # InterfaceError (the connection closed under a query), OSError (refused, reset, timed out).
    return StoreUnavailable(f"PostgreSQL: {exc}")


POOL_MIN = 1
# API reads, ingest's writer and command transitions share the pool; a handful of connections
# covers them without holding many idle backends on a shared server.
POOL_MAX = 8
# Series queries run their parts (up to five) at once, each on a pooled connection. At most
# this many parts are in flight across all queries, so that concurrent dashboards leave the
# rest of the pool to ingest's writer and command transitions instead of queueing them.
SERIES_PARTS_IN_FLIGHT = POOL_MAX // 2
# From this many rows a Bulk that allows it (`Staging`: a batch's readings) goes through COPY:
# `./scripts/bench pg_bulk` measured COPY into a temporary table plus the same INSERT 20-28 %
# faster than unnest arrays at 5,000 rows and within the noise at 1,000 (bench/README.md).
COPY_MIN_ROWS = 2_000


async def _init_connection(conn: Conn) -> None:
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def _execute(conn: Conn, op: Op) -> list[Row]:
    """Run one operation of a script (ops.py) on `conn`."""
    try:
        match op:
            case Query(sql, args):
                return list(await conn.fetch(sql, *args))
            case Count(sql, args):
                status = await conn.execute(sql, *args)
                return [(int(str(status).rsplit(" ", 1)[-1]),)]
            case Many(sql, rows):
                await conn.executemany(sql, rows)
                return []
            case Bulk(head, tail, types, rows, staging):
                if not rows:
                    return []
                if staging is not None and len(rows) >= COPY_MIN_ROWS:
                    return await _copy_bulk(conn, head, tail, staging, rows)
                arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
                columns = [list(column) for column in zip(*rows, strict=True)]
                sql = f"{head}SELECT * FROM unnest({arrays}){tail}"
                return list(await conn.fetch(sql, *columns))
            case Statements(sql):
                await conn.execute(sql)
                return []
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise store_error(exc) from exc
    raise TypeError(f"not a store operation: {op!r}")


async def _copy_bulk(
    conn: Conn, head: str, tail: str, staging: Staging, rows: Sequence[Sequence[object]]
) -> list[Row]:
    """A Bulk through COPY: the rows into a temporary table like the target (one per
    connection, emptied at every commit), then the Bulk's statement from it."""
    temp = f"staging_{staging.table}"
    columns = ", ".join(staging.columns)
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {staging.table}) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(temp, records=rows, columns=list(staging.columns))
    return list(await conn.fetch(f"{head}SELECT {columns} FROM {temp}{tail}"))


class PostgresStore(SqlStore):
    """PostgreSQL implementation of `Store` (see the module docstring)."""

    dialect = POSTGRES

    def __init__(self, url: str, *, stale_after_s: Mapping[str, int]) -> None:
        super().__init__(stale_after_s=stale_after_s)
        self.url = url
        self._pool: asyncpg.Pool | None = None
        self._closed = False
        self._series_parts = asyncio.Semaphore(SERIES_PARTS_IN_FLIGHT)

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate, create the partitions around now, load the writer's caches."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=POOL_MIN, max_size=POOL_MAX, init=_init_connection
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self._safe_url()}: {exc}") from exc
        await self._migrate(MIGRATIONS, "the database")
        await self.ensure_partitions(clock.now_us())
        await self._load_caches()

    def _safe_url(self) -> str:
        if "@" not in self.url:
            return self.url
        scheme, rest = self.url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"

    async def close(self) -> None:
        """Close the pool (waits for queries in flight). Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            await self._pool.close()

    # -- running scripts -----------------------------------------------------------------------

    async def _run(self, script: Script[T], *, transaction: bool) -> T:
        if self._closed or self._pool is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open")
        try:
            async with self._pool.acquire() as conn:
                if not transaction:
                    return await run_async(script, lambda op: _execute(conn, op))
                async with conn.transaction():
                    return await run_async(script, lambda op: _execute(conn, op))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise store_error(exc) from exc

    async def _read(self, script: Script[T]) -> T:
        """Run a script on a pooled connection."""
        return await self._run(script, transaction=False)

    async def _write(self, script: Script[T]) -> T:
        """Run a script in one transaction on a pooled connection."""
        return await self._run(script, transaction=True)

    async def _read_series(self, script: Script[T]) -> T:
        """One series part, at most SERIES_PARTS_IN_FLIGHT at once."""
        async with self._series_parts:
            return await self._read(script)

    # -- partitions ----------------------------------------------------------------------------

    async def ensure_partitions(self, now_us: int) -> list[str]:
        """Create the monthly readings partitions around `now_us` that do not exist yet."""
        created = []
        for month in partitions.months_around(now_us):
            name = partitions.partition_ddl(month)[0]
            try:
                await self._write(partitions.create_partition(month))
            except StoreError as exc:
                # Rows of that month already sit in the default partition (a backfill before the
                # partition existed): they stay there, correct but unpruned.
                log.warning("readings partition %s not created: %s", name, exc)
                continue
            created.append(name)
        return created

    async def drop_partitions_before(self, cutoff_us: int) -> int:
        """Drop the monthly readings partitions whose whole month ends by `cutoff_us`; returns
        how many readings they held."""
        gone = await self._write(partitions.drop_partitions_before(cutoff_us))
        for name, rows in gone:
            log.info("retention: dropped readings partition %s (%d readings)", name, rows)
        return sum(rows for _, rows in gone)

    async def _drop_before(self, tier: Tier, cutoff_us: int) -> int:
        """The raw tier's default rule first drops the monthly partitions wholly older than
        the cutoff (a DROP frees the disk at once and costs no dead rows to vacuum); the DELETE
        then takes the rest (pruned to the partitions holding older rows)."""
        return await self.drop_partitions_before(cutoff_us) if tier == "raw" else 0

    async def maintain(self, now_us: int) -> None:
        """Create the coming months' readings partitions."""
        await self.ensure_partitions(now_us)

    async def size_bytes(self) -> int:
        """pg_database_size of this database."""
        ((size,),) = await self._read(_database_size())
        return int(size)


def _database_size() -> Script[list[Row]]:
    return (yield Query("SELECT pg_database_size(current_database())"))
