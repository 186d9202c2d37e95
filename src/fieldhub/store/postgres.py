"""The PostgreSQL store: asyncpg, a small connection pool, readings partitioned by month.

The same `Store` interface and test suite as SQLite. Differences that matter to an operator:
several processes may write at once (devices and metrics are created with ON CONFLICT, so two
ingest workers meeting a new device both end up with its one id), and readings go in as arrays
(`unnest`) in one statement per batch, which with ON CONFLICT DO NOTHING absorbs redeliveries.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import orjson

from fieldhub import clock
from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import CommandReply
from fieldhub.store.base import (
    Aggregate,
    CommandOutcome,
    CommandRow,
    CommandTransition,
    DeadLetterRow,
    DeviceRow,
    MetricSummary,
    PresenceChange,
    PresenceEvent,
    PresenceState,
    ReadingRow,
    Store,
    StoreError,
    TimeRow,
    WriteBatch,
    WriteResult,
)
from fieldhub.store.command_rows import (
    COMMAND_COLUMNS,
    COMMAND_FROM,
    command_row,
    pending_row,
    plan_transition,
)
from fieldhub.store.postgres_schema import MIGRATIONS
from fieldhub.store.retention import Selector, Tier, delete_sql
from fieldhub.store.rollups import (
    ROLLUP_TABLES,
    Part,
    Partial,
    partial_params,
    partial_rows,
    partials_sql,
    rollup_rows,
    upsert_sql,
)

T = TypeVar("T")
# A pooled connection. asyncpg's stubs type the pool's proxy apart from Connection though it
# forwards every method; one alias keeps the signatures readable.
Conn = Any
log = logging.getLogger("fieldhub.store")

POOL_MIN = 1
# API reads, ingest's writer and command transitions share the pool; a handful of connections
# covers them without holding many idle backends on a shared server.
POOL_MAX = 8
DEAD_LETTER_MAX_BYTES = 64 * 1024
DEFAULT_STALE_AFTER_S = 120
# Series queries run their parts (up to five) at once, each on a pooled connection. At most
# this many parts are in flight across all queries, so that concurrent dashboards leave the
# rest of the pool to ingest's writer and command transitions instead of queueing them.
SERIES_PARTS_IN_FLIGHT = POOL_MAX // 2
# Monthly partitions exist this many months before and after now (created at open and by the
# maintenance job): late data of the previous month and a clock running a little ahead land in a
# partition of their own, not in the default one.
PARTITION_MONTHS_BEHIND = 1
PARTITION_MONTHS_AHEAD = 2
# Serialises migrations when several fieldhub processes start against one database.
MIGRATION_LOCK_KEY = 0x6669656C64687562  # "fieldhub"

_PRESENCE_SQL = """
    CASE
        WHEN d.presence = 'offline' THEN 'offline'
        WHEN d.last_seen_us < {now} - d.stale_after_s::bigint * 1000000 THEN 'stale'
        ELSE 'online'
    END
"""


def month_index(ts_us: int) -> int:
    """Months since year 0 of a time: year * 12 + month - 1 (exact in integers: float seconds
    would round the last microsecond of a month into the next)."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_us)
    return moment.year * 12 + moment.month - 1


def month_start_us(month: int) -> int:
    """Epoch microseconds at the start of a `month_index`."""
    return int(datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC).timestamp()) * 1_000_000


def partition_month(name: str) -> int | None:
    """The `month_index` of a readings partition's name (None for the default partition)."""
    match = re.fullmatch(r"readings_p(\d{4})(\d{2})", name)
    return None if match is None else int(match[1]) * 12 + int(match[2]) - 1


def partition_ddl(month: int) -> tuple[str, str]:
    """(name, CREATE statement) of the readings partition of a `month_index`."""
    name = f"readings_p{month // 12:04d}{month % 12 + 1:02d}"
    return name, (
        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF readings "
        f"FOR VALUES FROM ({month_start_us(month)}) TO ({month_start_us(month + 1)})"
    )


async def _init_connection(conn: Conn) -> None:
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


@dataclass(frozen=True, slots=True)
class _Caches:
    """The writer's id and state caches as a batch leaves them, applied once it committed."""

    devices: dict[str, int]
    metrics: dict[str, int]
    presence: dict[int, str]
    series: set[tuple[int, int]]
    formats: dict[int, tuple[str | None, str | None]]


class PostgresStore(Store):
    """PostgreSQL implementation of `Store` (see the module docstring)."""

    def __init__(self, url: str, *, stale_after_s: Mapping[str, int]) -> None:
        self.url = url
        self._stale_after_s = dict(stale_after_s)
        self._pool: asyncpg.Pool | None = None
        self._device_ids: dict[str, int] = {}
        self._metric_ids: dict[str, int] = {}
        self._series: set[tuple[int, int]] = set()
        self._presence: dict[int, str] = {}
        self._formats: dict[int, tuple[str | None, str | None]] = {}
        self._closed = False
        self._series_parts = asyncio.Semaphore(SERIES_PARTS_IN_FLIGHT)

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate, create the partitions around now, load the id caches."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=POOL_MIN, max_size=POOL_MAX, init=_init_connection
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self._safe_url()}: {exc}") from exc
        await self._run(self._migrate)
        await self.ensure_partitions(clock.now_us())
        await self._run(self._load_caches)

    def _safe_url(self) -> str:
        if "@" not in self.url:
            return self.url
        scheme, rest = self.url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"

    async def _migrate(self, conn: Conn) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL, applied_us BIGINT NOT NULL)"
            )
            done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, description, sql in MIGRATIONS:
                if version in done:
                    continue
                try:
                    await conn.execute(sql)
                except asyncpg.PostgresError as exc:
                    raise StoreError(f"migration {version} ({description}) failed: {exc}") from exc
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                    version,
                    description,
                    clock.now_us(),
                )
            known = max(v for v, _, _ in MIGRATIONS)
            if max(done, default=0) > known:
                raise StoreError(
                    f"the database has schema version {max(done)}, newer than this fieldhub "
                    f"knows ({known}); upgrade fieldhub"
                )

    async def ensure_partitions(self, now_us: int) -> list[str]:
        """Create the monthly readings partitions around `now_us` that do not exist yet."""
        now = month_index(now_us)
        created = []
        for month in range(now - PARTITION_MONTHS_BEHIND, now + PARTITION_MONTHS_AHEAD + 1):
            name, sql = partition_ddl(month)

            async def create(conn: Conn, sql: str = sql) -> None:
                # Under the migration lock: workers starting together would otherwise race to
                # create the same partition ("already exists" despite IF NOT EXISTS).
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
                    await conn.execute(sql)

            try:
                await self._run(create)
            except StoreError as exc:
                # Rows of that month already sit in the default partition (a backfill before the
                # partition existed): they stay there, correct but unpruned.
                log.warning("readings partition %s not created: %s", name, exc)
                continue
            created.append(name)
        return created

    async def _load_caches(self, conn: Conn) -> None:
        rows = await conn.fetch("SELECT id, uid, presence, command_format, topic_id FROM devices")
        self._device_ids = {r["uid"]: r["id"] for r in rows}
        self._presence = {r["id"]: r["presence"] for r in rows}
        self._formats = {r["id"]: (r["command_format"], r["topic_id"]) for r in rows}
        self._metric_ids = {
            r["name"]: r["id"] for r in await conn.fetch("SELECT id, name FROM metrics")
        }
        self._series = {
            (r[0], r[1])
            for r in await conn.fetch("SELECT device_id, metric_id FROM device_metrics")
        }

    async def close(self) -> None:
        """Close the pool (waits for queries in flight). Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            await self._pool.close()

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        if self._closed or self._pool is None:
            raise StoreError("the store is closed" if self._closed else "the store is not open")
        try:
            async with self._pool.acquire() as conn:
                return await fn(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"PostgreSQL query failed: {exc}") from exc

    # -- writes --------------------------------------------------------------------------------

    async def write_batch(self, batch: WriteBatch) -> WriteResult:
        """Store a batch in one transaction (see `Store.write_batch`)."""

        async def run(conn: Conn) -> tuple[WriteResult, _Caches]:
            async with conn.transaction():
                return await self._write(conn, batch)

        try:
            result, caches = await self._run(run)
        except StoreError as exc:
            raise StoreError(f"writing a batch of {len(batch)} messages failed: {exc}") from exc
        # The caches follow only what committed.
        self._device_ids, self._metric_ids, self._presence = (
            caches.devices,
            caches.metrics,
            caches.presence,
        )
        self._series |= caches.series
        self._formats.update(caches.formats)
        return result

    async def _write(self, conn: Conn, batch: WriteBatch) -> tuple[WriteResult, _Caches]:
        result = WriteResult()
        device_ids = dict(self._device_ids)
        metric_ids = dict(self._metric_ids)
        presence = dict(self._presence)
        # Devices and metrics first seen in this batch, created in order of appearance.
        new_devices: dict[str, tuple[str, int]] = {}
        for item in batch.decoded:
            if item.device_id not in device_ids and item.device_id not in new_devices:
                new_devices[item.device_id] = (item.profile, item.received_us)
        if new_devices:
            uids = list(new_devices)
            inserted = await conn.fetch(
                "INSERT INTO devices (uid, profile, first_seen_us, last_seen_us, stale_after_s) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $3::bigint[], "
                "$4::int[]) ON CONFLICT (uid) DO NOTHING RETURNING id, uid",
                uids,
                [new_devices[u][0] for u in uids],
                [new_devices[u][1] for u in uids],
                [self._stale_after_s.get(new_devices[u][0], DEFAULT_STALE_AFTER_S) for u in uids],
            )
            mine = {r["uid"] for r in inserted}
            for row in await conn.fetch(
                "SELECT id, uid, presence FROM devices WHERE uid = ANY($1::text[])", uids
            ):
                device_ids[row["uid"]] = row["id"]
                presence[row["id"]] = row["presence"]
            result.new_devices = [u for u in uids if u in mine]
        # A reply's device may be one another process created (ingest workers beside an API
        # process): look it up rather than count the reply as late for want of a cached id.
        unknown = sorted({r.device_id for r in batch.command_replies} - device_ids.keys())
        if unknown:
            for row in await conn.fetch(
                "SELECT id, uid, presence FROM devices WHERE uid = ANY($1::text[])", unknown
            ):
                device_ids[row["uid"]] = row["id"]
                presence[row["id"]] = row["presence"]
        new_metrics = sorted(
            {r.metric for item in batch.decoded for r in item.readings} - metric_ids.keys()
        )
        if new_metrics:
            await conn.execute(
                "INSERT INTO metrics (name) SELECT unnest($1::text[]) "
                "ON CONFLICT (name) DO NOTHING",
                new_metrics,
            )
            for row in await conn.fetch(
                "SELECT id, name FROM metrics WHERE name = ANY($1::text[])", new_metrics
            ):
                metric_ids[row["name"]] = row["id"]
        with_presence = {
            device_ids[item.device_id] for item in batch.decoded if item.presence is not None
        }
        if with_presence:
            # Another ingest worker (shared subscription) may have changed it since this one
            # last looked: compare with the database, not with this process's memory.
            for row in await conn.fetch(
                "SELECT id, presence FROM devices WHERE id = ANY($1::bigint[]) FOR UPDATE",
                sorted(with_presence),
            ):
                presence[row["id"]] = row["presence"]
        r_dev: list[int] = []
        r_met: list[int] = []
        r_ts: list[int] = []
        r_val: list[float] = []
        r_rec: list[int] = []
        last_seen: dict[int, int] = {}
        new_series: set[tuple[int, int]] = set()
        attributes: dict[int, dict[str, Any]] = {}
        presence_events: list[tuple[int, int, str]] = []
        formats: dict[int, tuple[str | None, str | None]] = {}
        for item in batch.decoded:
            device_pk = device_ids[item.device_id]
            if item.from_device and last_seen.get(device_pk, 0) < item.received_us:
                last_seen[device_pk] = item.received_us
            for metric, ts_us, value in item.readings:
                metric_pk = metric_ids[metric]
                r_dev.append(device_pk)
                r_met.append(metric_pk)
                r_ts.append(ts_us)
                r_val.append(value)
                r_rec.append(item.received_us)
                if (device_pk, metric_pk) not in self._series:
                    new_series.add((device_pk, metric_pk))
            if item.attributes:
                attributes.setdefault(device_pk, {}).update(item.attributes)
            if item.topic_id is not None:
                known = formats.get(device_pk) or self._formats.get(device_pk, (None, None))
                spoken = (item.command_format or known[0], item.topic_id)
                if spoken != known:
                    formats[device_pk] = spoken
            if item.presence is not None and presence.get(device_pk) != item.presence:
                presence[device_pk] = item.presence
                presence_events.append((device_pk, item.received_us, item.presence))
                result.presence_changes.append(
                    PresenceChange(item.device_id, item.presence, item.received_us)
                )
        if r_dev:
            # RETURNING gives only the rows inserted, not the duplicates: what the rollups add.
            inserted = await conn.fetch(
                "INSERT INTO readings (device_id, metric_id, ts, value, received_at) "
                "SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::float8[], "
                "$5::bigint[]) ON CONFLICT DO NOTHING RETURNING device_id, metric_id, ts, value",
                r_dev,
                r_met,
                r_ts,
                r_val,
                r_rec,
            )
            result.readings_written = len(inserted)
            result.readings_duplicate = len(r_dev) - result.readings_written
            for size_us, table in ROLLUP_TABLES:
                rollups = rollup_rows(inserted, size_us)
                if not rollups:
                    continue
                head, tail = upsert_sql(table, "LEAST", "GREATEST")
                await conn.execute(
                    head + "SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], "
                    "$4::bigint[], $5::float8[], $6::float8[], $7::float8[], $8::bigint[], "
                    "$9::float8[], $10::bigint[], $11::float8[])" + tail,
                    *(list(column) for column in zip(*rollups, strict=True)),
                )
        if new_series:
            pairs = sorted(new_series)
            await conn.execute(
                "INSERT INTO device_metrics (device_id, metric_id) "
                "SELECT * FROM unnest($1::bigint[], $2::int[]) ON CONFLICT DO NOTHING",
                [p[0] for p in pairs],
                [p[1] for p in pairs],
            )
        if last_seen:
            await conn.execute(
                "UPDATE devices d SET last_seen_us = GREATEST(d.last_seen_us, v.ts) "
                "FROM unnest($1::bigint[], $2::bigint[]) AS v(id, ts) WHERE d.id = v.id",
                list(last_seen),
                list(last_seen.values()),
            )
        if attributes:
            # `||` merges; stripping nulls afterwards makes it RFC 7396's merge patch, as in
            # SQLite's json_patch: a null attribute value removes the attribute.
            await conn.executemany(
                "UPDATE devices SET attributes = jsonb_strip_nulls(attributes || $1::jsonb) "
                "WHERE id = $2",
                [(attrs, pk) for pk, attrs in attributes.items()],
            )
        if presence_events:
            await conn.executemany(
                "INSERT INTO presence_events (device_id, ts, state) VALUES ($1, $2, $3) "
                "ON CONFLICT (device_id, ts) DO UPDATE SET state = excluded.state",
                presence_events,
            )
            await conn.executemany(
                "UPDATE devices SET presence = $1, presence_changed_us = $2 WHERE id = $3",
                [(state, ts, pk) for pk, ts, state in presence_events],
            )
        if batch.dead_letters:
            await conn.executemany(
                "INSERT INTO dead_letters "
                "(received_at, topic, reason, detail, payload, size, device_uid, profile) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [
                    (
                        d.received_us,
                        d.topic,
                        d.reason,
                        d.detail,
                        d.payload[:DEAD_LETTER_MAX_BYTES],
                        len(d.payload),
                        d.device_id,
                        d.profile,
                    )
                    for d in batch.dead_letters
                ],
            )
            result.dead_letters = len(batch.dead_letters)
        if batch.retained_digests:
            await conn.executemany(
                "INSERT INTO retained_digests (topic, digest) VALUES ($1, $2) "
                "ON CONFLICT (topic) DO UPDATE SET digest = excluded.digest",
                list(batch.retained_digests.items()),
            )
        if formats:
            await conn.executemany(
                "UPDATE devices SET command_format = $1, topic_id = $2 WHERE id = $3",
                [(fmt, topic_id, pk) for pk, (fmt, topic_id) in formats.items()],
            )
        for reply in batch.command_replies:
            ended = await self._apply_reply(conn, device_ids.get(reply.device_id), reply)
            if ended is None:
                result.late_replies += 1
            else:
                result.command_transitions.append(ended)
        return result, _Caches(device_ids, metric_ids, presence, new_series, formats)

    async def _apply_reply(
        self, conn: Conn, device_pk: int | None, reply: CommandReply
    ) -> CommandRow | None:
        if device_pk is None:
            return None
        if reply.ok:
            target, detail = CommandState.SUCCEEDED, "the device acknowledged it: ok"
        else:
            target, detail = CommandState.FAILED, f"the device answered error: {reply.error}"
        return await self._transition(
            conn,
            device_pk,
            reply.command_id,
            target,
            reply.received_us,
            CommandOutcome(detail, "ack", reply.result, reply.error),
        )

    async def retained_digests(self) -> dict[str, bytes]:
        """Topic -> digest of the last stored payload on retained-publishing topics."""
        rows = await self._run(
            lambda conn: conn.fetch("SELECT topic, digest FROM retained_digests")
        )
        return {r[0]: bytes(r[1]) for r in rows}

    # -- commands ------------------------------------------------------------------------------

    async def insert_command(self, command: CommandRow, detail: str) -> CommandRow | None:
        """Store a new pending command (see `Store.insert_command`)."""
        row = pending_row(command, detail)
        (entry,) = row.history

        async def run(conn: Conn) -> CommandRow | None:
            async with conn.transaction():
                command_pk = await conn.fetchval(
                    "INSERT INTO commands (device_id, uid, name, params, format, topic, state, "
                    "created_us, updated_us, timeout_s, expires_us) "
                    "SELECT d.id, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10 FROM devices d "
                    "WHERE d.uid = $1 ON CONFLICT (device_id, uid) DO NOTHING RETURNING id",
                    command.device_id,
                    command.command_id,
                    command.name,
                    command.params,
                    command.format,
                    command.topic,
                    CommandState.PENDING.value,
                    command.created_us,
                    command.timeout_s,
                    command.expires_us,
                )
                if command_pk is None:
                    return None
                await conn.execute(
                    "INSERT INTO command_history (command_id, seq, state, at_us, detail) "
                    "VALUES ($1, 1, $2, $3, $4)",
                    command_pk,
                    entry.state.value,
                    entry.at_us,
                    entry.detail,
                )
                return row

        return await self._run(run)

    async def transition_command(
        self,
        device_id: str,
        command_id: str,
        target: CommandState,
        at_us: int,
        outcome: CommandOutcome,
    ) -> CommandRow | None:
        """Move a command on if the transition table allows it (see `Store.transition_command`)."""

        async def run(conn: Conn) -> CommandRow | None:
            async with conn.transaction():
                device_pk = await conn.fetchval("SELECT id FROM devices WHERE uid = $1", device_id)
                if device_pk is None:
                    return None
                return await self._transition(conn, device_pk, command_id, target, at_us, outcome)

        return await self._run(run)

    async def _transition(
        self,
        conn: Conn,
        device_pk: int,
        command_id: str,
        target: CommandState,
        at_us: int,
        outcome: CommandOutcome,
    ) -> CommandRow | None:
        # FOR UPDATE: two writers (an ack in an ingest batch, a timeout) read the same state
        # one after the other, so only one of them can move it on.
        found = await conn.fetchrow(
            f"SELECT c.id, {COMMAND_COLUMNS} {COMMAND_FROM} "
            "WHERE c.device_id = $1 AND c.uid = $2 FOR UPDATE OF c",
            device_pk,
            command_id,
        )
        if found is None:
            return None
        row = plan_transition(command_row(tuple(found)[1:]), target, at_us, outcome)
        if row is None:
            return None
        command_pk = found[0]
        await conn.execute(
            "UPDATE commands SET state = $1, updated_us = $2, sent_us = $3, finished_us = $4, "
            "result = $5, error = $6, decided_by = $7 WHERE id = $8",
            row.state.value,
            row.updated_us,
            row.sent_us,
            row.finished_us,
            row.result,
            row.error,
            row.decided_by,
            command_pk,
        )
        last_seq = await conn.fetchval(
            "SELECT coalesce(max(seq), 0) FROM command_history WHERE command_id = $1", command_pk
        )
        await conn.executemany(
            "INSERT INTO command_history (command_id, seq, state, at_us, detail) "
            "VALUES ($1, $2, $3, $4, $5)",
            [
                (command_pk, last_seq + i + 1, step.state.value, step.at_us, step.detail)
                for i, step in enumerate(row.history)
            ],
        )
        return row

    async def get_command(self, device_id: str, command_id: str) -> CommandRow | None:
        """One command with its history."""

        async def run(conn: Conn) -> CommandRow | None:
            found = await conn.fetchrow(
                f"SELECT c.id, {COMMAND_COLUMNS} {COMMAND_FROM} WHERE d.uid = $1 AND c.uid = $2",
                device_id,
                command_id,
            )
            if found is None:
                return None
            history = tuple(
                CommandTransition(CommandState(r[0]), r[1], r[2])
                for r in await conn.fetch(
                    "SELECT state, at_us, detail FROM command_history WHERE command_id = $1 "
                    "ORDER BY seq",
                    found[0],
                )
            )
            return command_row(tuple(found)[1:], history)

        return await self._run(run)

    async def list_commands(
        self,
        device_id: str,
        *,
        state: CommandState | None,
        limit: int,
        before: tuple[int, str] | None,
    ) -> list[CommandRow]:
        """A device's commands, newest first."""
        sql = f"SELECT {COMMAND_COLUMNS} {COMMAND_FROM} WHERE d.uid = $1"
        args: list[Any] = [device_id]
        if state is not None:
            args.append(state.value)
            sql += f" AND c.state = ${len(args)}"
        if before is not None:
            args += list(before)
            sql += f" AND (c.created_us, c.uid) < (${len(args) - 1}, ${len(args)})"
        args.append(limit)
        sql += f" ORDER BY c.created_us DESC, c.uid DESC LIMIT ${len(args)}"
        rows = await self._run(lambda conn: conn.fetch(sql, *args))
        return [command_row(tuple(r)) for r in rows]

    async def active_commands(self) -> list[CommandRow]:
        """Commands not yet final, oldest first."""
        rows = await self._run(
            lambda conn: conn.fetch(
                f"SELECT {COMMAND_COLUMNS} {COMMAND_FROM} "
                "WHERE c.state IN ('pending', 'sent') ORDER BY c.created_us, c.id"
            )
        )
        return [command_row(tuple(r)) for r in rows]

    # -- reads ---------------------------------------------------------------------------------

    @staticmethod
    def _device_filters(
        profile: str | None, presence: PresenceState | None, search: str | None, args: list[Any]
    ) -> str:
        """WHERE clauses over `devices d`; `args` already holds $1 = now."""
        clauses = []
        if profile is not None:
            args.append(profile)
            clauses.append(f"d.profile = ${len(args)}")
        if presence is not None:
            args.append(presence)
            clauses.append(f"({_PRESENCE_SQL.format(now='$1')}) = ${len(args)}")
        if search:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args.append(f"%{escaped}%")
            n = len(args)
            clauses.append(
                f"(d.uid LIKE ${n} ESCAPE '\\' OR d.attributes::text LIKE ${n} ESCAPE '\\')"
            )
        return " AND ".join(clauses) or "TRUE"

    @staticmethod
    def _device_row(row: asyncpg.Record) -> DeviceRow:
        return DeviceRow(
            device_id=row["uid"],
            profile=row["profile"],
            first_seen_us=row["first_seen_us"],
            last_seen_us=row["last_seen_us"],
            presence=row["presence_now"],
            presence_changed_us=row["presence_changed_us"],
            attributes=row["attributes"],
            stale_after_s=row["stale_after_s"],
            command_format=row["command_format"],
            topic_id=row["topic_id"],
        )

    async def list_devices(
        self,
        *,
        profile: str | None,
        presence: PresenceState | None,
        search: str | None,
        limit: int,
        after: str | None,
        now_us: int,
    ) -> list[DeviceRow]:
        """Devices ordered by id (see `Store.list_devices`)."""
        args: list[Any] = [now_us]
        where = self._device_filters(profile, presence, search, args)
        args += [after or "", limit]
        sql = (
            f"SELECT d.*, {_PRESENCE_SQL.format(now='$1')} AS presence_now FROM devices d "
            f'WHERE {where} AND d.uid > ${len(args) - 1} COLLATE "C" '
            f'ORDER BY d.uid COLLATE "C" LIMIT ${len(args)}'
        )
        rows = await self._run(lambda conn: conn.fetch(sql, *args))
        return [self._device_row(r) for r in rows]

    async def count_devices(
        self,
        *,
        profile: str | None,
        presence: PresenceState | None,
        search: str | None,
        now_us: int,
    ) -> int:
        """How many devices match (see `Store.count_devices`)."""
        args: list[Any] = [now_us]
        where = self._device_filters(profile, presence, search, args)
        sql = f"SELECT count(*) FROM devices d WHERE {where} AND $1::bigint IS NOT NULL"
        return int(await self._run(lambda conn: conn.fetchval(sql, *args)))

    async def get_device(self, device_id: str, *, now_us: int) -> DeviceRow | None:
        """One device by canonical id."""
        sql = (
            f"SELECT d.*, {_PRESENCE_SQL.format(now='$2')} AS presence_now FROM devices d "
            "WHERE d.uid = $1"
        )
        row = await self._run(lambda conn: conn.fetchrow(sql, device_id, now_us))
        return None if row is None else self._device_row(row)

    _LATEST_SQL = (
        "SELECT d.uid, m.name, r.ts, r.value FROM device_metrics dm "
        "JOIN devices d ON d.id = dm.device_id JOIN metrics m ON m.id = dm.metric_id "
        "JOIN LATERAL (SELECT x.ts, x.value FROM readings x WHERE x.device_id = dm.device_id "
        "AND x.metric_id = dm.metric_id ORDER BY x.ts DESC LIMIT 1) r ON TRUE "
    )

    async def device_metrics(self, device_id: str) -> list[MetricSummary]:
        """Metrics of a device with their latest values, by name."""
        rows = await self._run(
            lambda conn: conn.fetch(
                self._LATEST_SQL + 'WHERE d.uid = $1 ORDER BY m.name COLLATE "C"', device_id
            )
        )
        return [MetricSummary(r[1], r[2], r[3]) for r in rows]

    async def latest_values(self, device_ids: Sequence[str]) -> dict[str, list[MetricSummary]]:
        """Latest value of every metric of several devices, in one query."""
        ids = list(device_ids)
        out: dict[str, list[MetricSummary]] = {device_id: [] for device_id in ids}
        if not ids:
            return out
        rows = await self._run(
            lambda conn: conn.fetch(
                self._LATEST_SQL
                + 'WHERE d.uid = ANY($1::text[]) ORDER BY d.uid, m.name COLLATE "C"',
                ids,
            )
        )
        for uid, name, ts, value in rows:
            out[uid].append(MetricSummary(name, ts, value))
        return out

    async def presence_history(
        self, device_id: str, *, start_us: int, end_us: int, limit: int
    ) -> list[PresenceEvent]:
        """Presence changes in the window, with the state it opens in (see the interface)."""

        async def run(conn: Conn) -> list[PresenceEvent]:
            rows = await conn.fetch(
                "SELECT p.ts, p.state FROM presence_events p JOIN devices d ON d.id = p.device_id "
                "WHERE d.uid = $1 AND p.ts < $2 ORDER BY p.ts DESC LIMIT 1",
                device_id,
                start_us,
            )
            newest = await conn.fetch(
                "SELECT p.ts, p.state FROM presence_events p JOIN devices d ON d.id = p.device_id "
                "WHERE d.uid = $1 AND p.ts >= $2 AND p.ts < $3 ORDER BY p.ts DESC LIMIT $4",
                device_id,
                start_us,
                end_us,
                limit,
            )
            if len(newest) == limit:
                rows = []  # truncated: the opening state is not the one before the oldest shown
            return [PresenceEvent(r[0], r[1]) for r in [*rows, *reversed(newest)]]

        return await self._run(run)

    async def query_readings(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start_us: int | None,
        end_us: int | None,
        limit: int,
        after: tuple[str, int] | None,
        descending: bool,
    ) -> list[ReadingRow]:
        """Raw readings ordered by metric name, then time (see `Store.query_readings`)."""
        args: list[Any] = [device_id]
        clauses = ["d.uid = $1"]
        if metrics:
            args.append(list(metrics))
            clauses.append(f"m.name = ANY(${len(args)}::text[])")
        if start_us is not None:
            args.append(start_us)
            clauses.append(f"r.ts >= ${len(args)}")
        if end_us is not None:
            args.append(end_us)
            clauses.append(f"r.ts < ${len(args)}")
        cmp = "<" if descending else ">"
        if after is not None:
            args += [after[0], after[1]]
            m, t = len(args) - 1, len(args)
            clauses.append(f'(m.name > ${m} COLLATE "C" OR (m.name = ${m} AND r.ts {cmp} ${t}))')
        order = "DESC" if descending else "ASC"
        args.append(limit)
        sql = (
            "SELECT m.name, r.ts, r.value, r.received_at FROM readings r "
            "JOIN devices d ON d.id = r.device_id JOIN metrics m ON m.id = r.metric_id "
            f"WHERE {' AND '.join(clauses)} "
            f'ORDER BY m.name COLLATE "C" ASC, r.ts {order} LIMIT ${len(args)}'
        )
        rows = await self._run(lambda conn: conn.fetch(sql, *args))
        return [ReadingRow(r[0], r[1], r[2], r[3]) for r in rows]

    async def series_partials(
        self,
        device_ids: Sequence[str] | None,
        metric: str,
        part: Part,
        interval_us: int,
        *,
        agg: Aggregate,
    ) -> list[tuple[int, Partial]]:
        """One part of a series query over a set of devices, from raw readings or a rollup."""
        values = partial_params(part, interval_us, metric)
        # Positional parameters numbered as the statement first uses them: PostgreSQL refuses
        # one the statement never uses (it cannot type it), so only those used are passed.
        names: list[str] = []

        def ph(name: str) -> str:
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        if device_ids is None:
            # device_metrics lists who reported the metric.
            devices = (
                "SELECT device_id FROM device_metrics "
                f"WHERE metric_id = (SELECT id FROM metrics WHERE name = {ph('metric')})"
            )
        else:
            values["uids"] = list(device_ids)
            devices = f"SELECT id FROM devices WHERE uid = ANY({ph('uids')}::text[])"
        sql = partials_sql(
            part,
            interval_us,
            ph,
            # ANY(ARRAY(...)): the ids become one array that the (device, metric, bucket|ts)
            # primary key is searched with, once per id, whatever the planner would estimate
            # for a join with the device set.
            lambda column: f"{column} = ANY(ARRAY({devices}))",
            agg=agg,
            collate=' COLLATE "C"',
        )
        args = [values[name] for name in names]
        async with self._series_parts:
            rows = await self._run(lambda conn: conn.fetch(sql, *args))
        return partial_rows(rows)

    async def list_dead_letters(
        self,
        *,
        limit: int,
        before_id: int | None,
        reason: str | None,
        device_id: str | None,
    ) -> list[DeadLetterRow]:
        """Dead letters, newest first."""
        args: list[Any] = []
        clauses = []
        for column, op, value in (
            ("id", "<", before_id),
            ("reason", "=", reason),
            ("device_uid", "=", device_id),
        ):
            if value is not None:
                args.append(value)
                clauses.append(f"{column} {op} ${len(args)}")
        args.append(limit)
        sql = (
            "SELECT id, received_at, topic, reason, detail, payload, size, device_uid, profile "
            f"FROM dead_letters WHERE {' AND '.join(clauses) or 'TRUE'} "
            f"ORDER BY id DESC LIMIT ${len(args)}"
        )
        rows = await self._run(lambda conn: conn.fetch(sql, *args))
        return [
            DeadLetterRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], r[7], r[8]) for r in rows
        ]

    async def count_dead_letters(self, *, since_us: int) -> int:
        """Dead letters received since `since_us`."""
        return int(
            await self._run(
                lambda conn: conn.fetchval(
                    "SELECT count(*) FROM dead_letters WHERE received_at >= $1", since_us
                )
            )
        )

    async def query_time_rows(
        self,
        device_id: str,
        metric: str,
        *,
        with_metrics: Sequence[str],
        start_us: int | None,
        end_us: int | None,
        limit: int,
        before_us: int | None,
    ) -> list[TimeRow]:
        """Rows of `metric` newest first, other metrics joined at the same time."""
        args: list[Any] = [device_id, metric]
        joins = []
        columns = []
        for i, name in enumerate(with_metrics):
            args.append(name)
            joins.append(
                f"LEFT JOIN readings w{i} ON w{i}.device_id = p.device_id AND w{i}.ts = p.ts "
                f"AND w{i}.metric_id = (SELECT id FROM metrics WHERE name = ${len(args)})"
            )
            columns.append(f", w{i}.value")
        clauses = [
            "p.device_id = (SELECT id FROM devices WHERE uid = $1)",
            "p.metric_id = (SELECT id FROM metrics WHERE name = $2)",
        ]
        for op, value in ((">=", start_us), ("<", end_us), ("<", before_us)):
            if value is not None:
                args.append(value)
                clauses.append(f"p.ts {op} ${len(args)}")
        args.append(limit)
        sql = (
            f"SELECT p.ts, p.received_at, p.value{''.join(columns)} FROM readings p "
            f"{' '.join(joins)} WHERE {' AND '.join(clauses)} "
            f"ORDER BY p.ts DESC LIMIT ${len(args)}"
        )
        rows = await self._run(lambda conn: conn.fetch(sql, *args))
        out = []
        for r in rows:
            values = {metric: r[2]}
            for i, name in enumerate(with_metrics):
                if r[3 + i] is not None:
                    values[name] = r[3 + i]
            out.append(TimeRow(r[0], r[1], values))
        return out

    # -- retention -----------------------------------------------------------------------------

    async def delete_older(
        self,
        tier: Tier,
        cutoff_us: int,
        *,
        selector: Selector,
        keep: Sequence[Selector],
    ) -> int:
        """One retention sweep. The raw tier's default rule, with no more specific rule beside
        it, first drops the monthly partitions wholly older than the cutoff (a DROP frees the
        disk at once and costs no dead rows to vacuum); a DELETE then takes the rest (on a
        partitioned table PostgreSQL prunes it to the partitions holding older rows)."""
        dropped = 0
        if tier == "raw" and selector == Selector() and not keep:
            dropped = await self.drop_partitions_before(cutoff_us)
        params: list[object] = []

        def ph(value: object) -> str:
            params.append(value)
            return f"${len(params)}"

        sql = delete_sql(tier, cutoff_us, selector, keep, ph)
        status = await self._run(lambda conn: conn.execute(sql, *params))
        return dropped + int(str(status).rsplit(" ", 1)[-1])

    async def drop_partitions_before(self, cutoff_us: int) -> int:
        """Drop the monthly readings partitions whose whole month ends by `cutoff_us`; returns
        how many readings they held. Under the partition lock: workers create partitions too."""

        async def drop(conn: Conn) -> list[tuple[str, int]]:
            gone: list[tuple[str, int]] = []
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
                names = await conn.fetch(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'readings'::regclass ORDER BY c.relname"
                )
                for (name,) in names:
                    month = partition_month(name)
                    if month is None or month_start_us(month + 1) > cutoff_us:
                        continue
                    rows = int(await conn.fetchval(f"SELECT count(*) FROM {name}"))
                    await conn.execute(f"DROP TABLE {name}")
                    gone.append((name, rows))
            return gone

        gone = await self._run(drop)
        for name, rows in gone:
            log.info("retention: dropped readings partition %s (%d readings)", name, rows)
        return sum(rows for _, rows in gone)

    async def maintain(self, now_us: int) -> None:
        """Create the coming months' readings partitions."""
        await self.ensure_partitions(now_us)

    async def size_bytes(self) -> int:
        """pg_database_size of this database."""
        return int(
            await self._run(
                lambda conn: conn.fetchval("SELECT pg_database_size(current_database())")
            )
        )

    async def ping(self) -> None:
        """A trivial query on a pooled connection."""
        await self._run(lambda conn: conn.fetchval("SELECT 1"))
