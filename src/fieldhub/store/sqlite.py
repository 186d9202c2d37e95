"""The SQLite store: one writer connection on its own thread, readers on a small pool.

WAL lets readers run while the writer commits; `synchronous=NORMAL` in WAL mode survives a crash
of fieldhub (a power cut can lose the last commits, not corrupt the file) and is 7x faster than
FULL for batched commits (NOTES.md). The writer keeps device and metric ids cached because it is
the only connection that creates them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from fieldhub import clock
from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import CommandReply
from fieldhub.store import sqlite_commands
from fieldhub.store.base import (
    Aggregate,
    CommandOutcome,
    CommandRow,
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
from fieldhub.store.sqlite_schema import MIGRATIONS

T = TypeVar("T")
log = logging.getLogger("fieldhub.store")

# Readers wait this long for the writer's lock instead of failing at once with "database is locked".
BUSY_TIMEOUT_MS = 5_000
# Dead letters keep at most this much of a payload: enough to see what was wrong, bounded so an
# attacker cannot fill the disk with oversize messages. The true size is kept beside it.
DEAD_LETTER_MAX_BYTES = 64 * 1024
# Reader threads: API requests run queries here. SQLite reads are CPU-bound under the GIL, so a
# few threads only serve to keep one slow query from queueing the rest.
READER_THREADS = 4
DEFAULT_STALE_AFTER_S = 120
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
CHECKPOINT_INTERVAL_S = 1.0
# The writer still checkpoints by itself past this many WAL pages (4 KiB each). Under continuous
# writes a background checkpoint always has newer frames behind it, so the WAL cannot restart
# from its beginning and grows until this backstop, where the writer's checkpoint finds almost
# everything copied and restarts it. The price: a WAL file of up to ~300 MiB under sustained heavy
# ingest (measured: 280-330 MiB at 10k rows/s), in exchange for commits without pauses.
WAL_AUTOCHECKPOINT_PAGES = 65_536
# The background checkpointer logs when a checkpoint leaves more than this many frames behind
# (a long-running reader pins them): the WAL file grows until it can finish.
CHECKPOINT_BEHIND_WARN_FRAMES = 32_768
# Rows per multi-row statement (see _execute_rows): 5 columns x 1,000 rows stays far below
# SQLite's 32,766 bound parameters, and larger statements stopped paying off in measurements.
ROWS_PER_STATEMENT = 1_000

_PRESENCE_SQL = """
    CASE
        WHEN d.presence = 'offline' THEN 'offline'
        WHEN d.last_seen_us < :now_us - d.stale_after_s * 1000000 THEN 'stale'
        ELSE 'online'
    END
"""


def _execute_rows(
    conn: sqlite3.Connection, head: str, tail: str, rows: Sequence[tuple[Any, ...]]
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
    return conn


class _Checkpointer:
    """A thread that checkpoints the WAL in PASSIVE mode once per interval."""

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
            while not self._stop.wait(self.interval_s):
                try:
                    _, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # the writer's backstop checkpoint still runs
                    log.warning("WAL checkpoint failed: %s", exc)
                    continue
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


class SqliteStore(Store):
    """SQLite implementation of `Store` (see the module docstring)."""

    def __init__(self, path: Path, *, stale_after_s: Mapping[str, int]) -> None:
        self.path = path
        self._stale_after_s = dict(stale_after_s)
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="store.sqlite.writer")
        self._reader_pool = ThreadPoolExecutor(
            READER_THREADS, thread_name_prefix="store.sqlite.reader"
        )
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._device_ids: dict[str, int] = {}
        self._metric_ids: dict[str, int] = {}
        self._metric_names: dict[int, str] = {}
        self._series: set[tuple[int, int]] = set()
        self._presence: dict[int, str] = {}
        self._formats: dict[int, tuple[str | None, str | None]] = {}
        self._closed = False
        self._checkpointer: _Checkpointer | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file if needed, migrate, load the id caches, start checkpointing."""
        await self._on_writer(self._open_writer)
        self._checkpointer = _Checkpointer(self.path)
        self._checkpointer.start()

    def _open_writer(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_us INTEGER NOT NULL)"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, description, sql in MIGRATIONS:
            if version in done:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Comments may hold semicolons: drop them before splitting into statements.
                code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
                for statement in code.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (version, description, clock.now_us()),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"migration {version} ({description}) failed: {exc}") from exc
        known = max(v for v, _, _ in MIGRATIONS)
        newest = max(done, default=0)
        if newest > known:
            raise StoreError(
                f"{self.path} has schema version {newest}, newer than this fieldhub knows "
                f"({known}); upgrade fieldhub"
            )
        self._device_ids = dict(conn.execute("SELECT uid, id FROM devices").fetchall())
        self._presence = dict(conn.execute("SELECT id, presence FROM devices").fetchall())
        self._formats = {
            pk: (fmt, topic_id)
            for pk, fmt, topic_id in conn.execute(
                "SELECT id, command_format, topic_id FROM devices"
            )
        }
        self._metric_ids = dict(conn.execute("SELECT name, id FROM metrics").fetchall())
        self._metric_names = {v: k for k, v in self._metric_ids.items()}
        self._series = set(
            conn.execute("SELECT device_id, metric_id FROM device_metrics").fetchall()
        )
        self._writer = conn

    async def close(self) -> None:
        """Finish queued writes, then close every connection. Closing again does nothing."""
        if self._closed:
            return
        # Set first: calls made from now on get StoreError instead of queueing behind the close.
        self._closed = True
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
        await asyncio.get_running_loop().run_in_executor(self._writer_pool, self._close_writer)
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _on_writer(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, fn)

    async def _on_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = _connect(self.path, readonly=True)
                conn.row_factory = sqlite3.Row
                self._local.conn = conn
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite query failed: {exc}") from exc

        if self._closed:
            raise StoreError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, run)

    # -- writes --------------------------------------------------------------------------------

    async def write_batch(self, batch: WriteBatch) -> WriteResult:
        """Store a batch in one transaction (see `Store.write_batch`)."""
        return await self._on_writer(lambda: self._write(batch))

    def _metric_id(self, conn: sqlite3.Connection, name: str) -> int:
        metric_id = self._metric_ids.get(name)
        if metric_id is None:
            row = conn.execute(
                "INSERT INTO metrics (name) VALUES (?) RETURNING id", (name,)
            ).fetchone()
            metric_id = int(row[0])
            self._metric_ids[name] = metric_id
            self._metric_names[metric_id] = name
        return metric_id

    def _write(self, batch: WriteBatch) -> WriteResult:
        conn = self._writer
        if conn is None:
            raise StoreError("the store is not open")
        result = WriteResult()
        created: dict[str, int] = {}
        new_metrics: list[str] = []
        metric_cache = self._metric_ids
        presence_cache = dict(self._presence)
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows: list[tuple[int, int, int, float, int]] = []
            last_seen: dict[int, int] = {}
            new_series: set[tuple[int, int]] = set()
            series = self._series
            attributes: dict[int, dict[str, Any]] = {}
            presence_events: list[tuple[int, int, str]] = []
            formats: dict[int, tuple[str | None, str | None]] = {}
            for item in batch.decoded:
                device_pk = self._device_ids.get(item.device_id)
                if device_pk is None:
                    device_pk = self._create_device(
                        conn, item.device_id, item.profile, item.received_us
                    )
                    created[item.device_id] = device_pk
                    presence_cache[device_pk] = "unknown"
                    result.new_devices.append(item.device_id)
                if item.from_device and last_seen.get(device_pk, 0) < item.received_us:
                    last_seen[device_pk] = item.received_us
                for reading in item.readings:
                    metric_pk = metric_cache.get(reading.metric)
                    if metric_pk is None:
                        metric_pk = self._metric_id(conn, reading.metric)
                        new_metrics.append(reading.metric)
                    rows.append(
                        (device_pk, metric_pk, reading.ts_us, reading.value, item.received_us)
                    )
                    if (device_pk, metric_pk) not in series:
                        new_series.add((device_pk, metric_pk))
                if item.attributes:
                    attributes.setdefault(device_pk, {}).update(item.attributes)
                if item.topic_id is not None:
                    known = formats.get(device_pk) or self._formats.get(device_pk, (None, None))
                    spoken = (item.command_format or known[0], item.topic_id)
                    if spoken != known:
                        formats[device_pk] = spoken
                if item.presence is not None and presence_cache.get(device_pk) != item.presence:
                    presence_cache[device_pk] = item.presence
                    presence_events.append((device_pk, item.received_us, item.presence))
                    result.presence_changes.append(
                        PresenceChange(item.device_id, item.presence, item.received_us)
                    )
            # Key order walks the B-tree once instead of jumping between leaves for every row.
            rows.sort()
            # RETURNING gives only the rows inserted, not the duplicates: what the rollups add.
            inserted = _execute_rows(
                conn,
                "INSERT INTO readings (device_id, metric_id, ts, value, received_at) VALUES ",
                " ON CONFLICT DO NOTHING RETURNING device_id, metric_id, ts, value",
                rows,
            )
            result.readings_written = len(inserted)
            result.readings_duplicate = len(rows) - result.readings_written
            for size_us, table in ROLLUP_TABLES:
                head, tail = upsert_sql(table, "min", "max")
                _execute_rows(conn, head + "VALUES ", tail, rollup_rows(inserted, size_us))
            _execute_rows(
                conn,
                "INSERT INTO device_metrics (device_id, metric_id) VALUES ",
                " ON CONFLICT DO NOTHING",
                sorted(new_series),
            )
            _execute_rows(
                conn,
                "WITH v(id, ts) AS (VALUES ",
                ") UPDATE devices SET last_seen_us = max(devices.last_seen_us, v.ts) "
                "FROM v WHERE devices.id = v.id",
                list(last_seen.items()),
            )
            if attributes:
                # json_patch is RFC 7396 merge: a null attribute value removes the attribute.
                conn.executemany(
                    "UPDATE devices SET attributes = json_patch(attributes, ?) WHERE id = ?",
                    [(orjson.dumps(attrs).decode(), pk) for pk, attrs in attributes.items()],
                )
            if presence_events:
                conn.executemany(
                    "INSERT INTO presence_events (device_id, ts, state) VALUES (?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET state = excluded.state",
                    presence_events,
                )
                conn.executemany(
                    "UPDATE devices SET presence = ?, presence_changed_us = ? WHERE id = ?",
                    [(state, ts, pk) for pk, ts, state in presence_events],
                )
            if batch.dead_letters:
                conn.executemany(
                    "INSERT INTO dead_letters "
                    "(received_at, topic, reason, detail, payload, size, device_uid, profile) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
                conn.executemany(
                    "INSERT INTO retained_digests (topic, digest) VALUES (?, ?) "
                    "ON CONFLICT DO UPDATE SET digest = excluded.digest",
                    list(batch.retained_digests.items()),
                )
            if formats:
                conn.executemany(
                    "UPDATE devices SET command_format = ?, topic_id = ? WHERE id = ?",
                    [(fmt, topic_id, pk) for pk, (fmt, topic_id) in formats.items()],
                )
            for reply in batch.command_replies:
                ended = self._apply_reply(conn, reply)
                if ended is None:
                    result.late_replies += 1
                else:
                    result.command_transitions.append(ended)
            conn.execute("COMMIT")
            self._series |= new_series
            self._formats.update(formats)
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # Ids created inside the failed transaction do not exist: forget them.
            for uid in created:
                self._device_ids.pop(uid, None)
            for name in new_metrics:
                self._metric_names.pop(self._metric_ids.pop(name), None)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"writing a batch of {len(batch)} messages failed: {exc}") from exc
            raise
        self._presence = presence_cache
        return result

    def _apply_reply(self, conn: sqlite3.Connection, reply: CommandReply) -> CommandRow | None:
        device_pk = self._device_ids.get(reply.device_id)
        if device_pk is None:
            return None
        if reply.ok:
            target, detail = CommandState.SUCCEEDED, "the device acknowledged it: ok"
        else:
            target, detail = CommandState.FAILED, f"the device answered error: {reply.error}"
        return sqlite_commands.transition(
            conn,
            device_pk,
            reply.command_id,
            target,
            reply.received_us,
            CommandOutcome(detail, "ack", reply.result, reply.error),
        )

    # -- commands ------------------------------------------------------------------------------

    async def insert_command(self, command: CommandRow, detail: str) -> CommandRow | None:
        """Store a new pending command (see `Store.insert_command`)."""
        return await self._on_writer(
            lambda: self._in_transaction(
                lambda conn: sqlite_commands.insert(
                    conn, self._require_device(command.device_id), command, detail
                )
            )
        )

    async def transition_command(
        self,
        device_id: str,
        command_id: str,
        target: CommandState,
        at_us: int,
        outcome: CommandOutcome,
    ) -> CommandRow | None:
        """Move a command on if the transition table allows it (see `Store.transition_command`)."""
        device_pk = self._device_ids.get(device_id)
        if device_pk is None:
            return None
        return await self._on_writer(
            lambda: self._in_transaction(
                lambda conn: sqlite_commands.transition(
                    conn, device_pk, command_id, target, at_us, outcome
                )
            )
        )

    def _require_device(self, device_id: str) -> int:
        device_pk = self._device_ids.get(device_id)
        if device_pk is None:
            raise StoreError(f"no device {device_id!r}")
        return device_pk

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._writer
        if conn is None:
            raise StoreError("the store is not open")
        try:
            conn.execute("BEGIN IMMEDIATE")
            value = fn(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"writing a command failed: {exc}") from exc
            raise
        return value

    async def get_command(self, device_id: str, command_id: str) -> CommandRow | None:
        """One command with its history."""
        return await self._on_reader(lambda conn: sqlite_commands.get(conn, device_id, command_id))

    async def list_commands(
        self,
        device_id: str,
        *,
        state: CommandState | None,
        limit: int,
        before: tuple[int, str] | None,
    ) -> list[CommandRow]:
        """A device's commands, newest first."""
        return await self._on_reader(
            lambda conn: sqlite_commands.page(conn, device_id, state, limit, before)
        )

    async def active_commands(self) -> list[CommandRow]:
        """Commands not yet final, oldest first."""
        return await self._on_reader(sqlite_commands.active)

    def _create_device(self, conn: sqlite3.Connection, uid: str, profile: str, seen_us: int) -> int:
        stale = self._stale_after_s.get(profile, DEFAULT_STALE_AFTER_S)
        row = conn.execute(
            "INSERT INTO devices (uid, profile, first_seen_us, last_seen_us, stale_after_s) "
            "VALUES (?, ?, ?, ?, ?) RETURNING id",
            (uid, profile, seen_us, seen_us, stale),
        ).fetchone()
        device_pk = int(row[0])
        self._device_ids[uid] = device_pk
        return device_pk

    async def retained_digests(self) -> dict[str, bytes]:
        """Topic -> digest of the last stored payload on retained-publishing topics."""
        return await self._on_reader(
            lambda conn: {
                row[0]: bytes(row[1])
                for row in conn.execute("SELECT topic, digest FROM retained_digests")
            }
        )

    # -- reads ---------------------------------------------------------------------------------

    @staticmethod
    def _device_filters(
        profile: str | None, presence: PresenceState | None, search: str | None
    ) -> tuple[str, dict[str, Any]]:
        clauses = []
        params: dict[str, Any] = {}
        if profile is not None:
            clauses.append("d.profile = :profile")
            params["profile"] = profile
        if presence is not None:
            clauses.append(f"({_PRESENCE_SQL}) = :presence")
            params["presence"] = presence
        if search:
            clauses.append(
                "(d.uid LIKE :search ESCAPE '\\' OR d.attributes LIKE :search ESCAPE '\\')"
            )
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params["search"] = f"%{escaped}%"
        return (" AND ".join(clauses) or "1"), params

    @staticmethod
    def _device_row(row: sqlite3.Row) -> DeviceRow:
        return DeviceRow(
            device_id=row["uid"],
            profile=row["profile"],
            first_seen_us=row["first_seen_us"],
            last_seen_us=row["last_seen_us"],
            presence=row["presence_now"],
            presence_changed_us=row["presence_changed_us"],
            attributes=orjson.loads(row["attributes"]),
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
        where, params = self._device_filters(profile, presence, search)
        params.update(now_us=now_us, limit=limit, after=after or "")
        sql = (
            f"SELECT d.*, {_PRESENCE_SQL} AS presence_now FROM devices d "
            f"WHERE {where} AND d.uid > :after ORDER BY d.uid LIMIT :limit"
        )
        return await self._on_reader(
            lambda conn: [self._device_row(r) for r in conn.execute(sql, params)]
        )

    async def count_devices(
        self,
        *,
        profile: str | None,
        presence: PresenceState | None,
        search: str | None,
        now_us: int,
    ) -> int:
        """How many devices match (see `Store.count_devices`)."""
        where, params = self._device_filters(profile, presence, search)
        params["now_us"] = now_us
        sql = f"SELECT count(*) FROM devices d WHERE {where}"
        return await self._on_reader(lambda conn: int(conn.execute(sql, params).fetchone()[0]))

    async def get_device(self, device_id: str, *, now_us: int) -> DeviceRow | None:
        """One device by canonical id."""
        sql = f"SELECT d.*, {_PRESENCE_SQL} AS presence_now FROM devices d WHERE d.uid = :uid"

        def run(conn: sqlite3.Connection) -> DeviceRow | None:
            row = conn.execute(sql, {"uid": device_id, "now_us": now_us}).fetchone()
            return None if row is None else self._device_row(row)

        return await self._on_reader(run)

    async def device_metrics(self, device_id: str) -> list[MetricSummary]:
        """Metrics of a device with their latest values, by name."""
        sql = (
            # max(ts) per series is one seek on the readings primary key.
            "SELECT m.name, r.ts, r.value FROM device_metrics dm "
            "JOIN devices d ON d.id = dm.device_id JOIN metrics m ON m.id = dm.metric_id "
            "JOIN readings r ON r.device_id = dm.device_id AND r.metric_id = dm.metric_id "
            "AND r.ts = (SELECT max(ts) FROM readings x "
            "WHERE x.device_id = dm.device_id AND x.metric_id = dm.metric_id) "
            "WHERE d.uid = ? ORDER BY m.name"
        )
        return await self._on_reader(
            lambda conn: [MetricSummary(r[0], r[1], r[2]) for r in conn.execute(sql, (device_id,))]
        )

    async def latest_values(self, device_ids: Sequence[str]) -> dict[str, list[MetricSummary]]:
        """Latest value of every metric of several devices, in one reader round trip."""
        ids = list(device_ids)
        sql = (
            "SELECT d.uid, m.name, r.ts, r.value FROM device_metrics dm "
            "JOIN devices d ON d.id = dm.device_id JOIN metrics m ON m.id = dm.metric_id "
            "JOIN readings r ON r.device_id = dm.device_id AND r.metric_id = dm.metric_id "
            "AND r.ts = (SELECT max(ts) FROM readings x "
            "WHERE x.device_id = dm.device_id AND x.metric_id = dm.metric_id) "
            f"WHERE d.uid IN ({','.join('?' * len(ids))}) ORDER BY d.uid, m.name"
        )

        def run(conn: sqlite3.Connection) -> dict[str, list[MetricSummary]]:
            out: dict[str, list[MetricSummary]] = {device_id: [] for device_id in ids}
            if ids:
                for uid, name, ts, value in conn.execute(sql, ids):
                    out[uid].append(MetricSummary(name, ts, value))
            return out

        return await self._on_reader(run)

    async def presence_history(
        self, device_id: str, *, start_us: int, end_us: int, limit: int
    ) -> list[PresenceEvent]:
        """Presence changes in the window, with the state it opens in (see the interface)."""
        before = (
            "SELECT p.ts, p.state FROM presence_events p JOIN devices d ON d.id = p.device_id "
            "WHERE d.uid = ? AND p.ts < ? ORDER BY p.ts DESC LIMIT 1"
        )
        inside = (
            "SELECT p.ts, p.state FROM presence_events p JOIN devices d ON d.id = p.device_id "
            "WHERE d.uid = ? AND p.ts >= ? AND p.ts < ? ORDER BY p.ts DESC LIMIT ?"
        )

        def run(conn: sqlite3.Connection) -> list[PresenceEvent]:
            rows = conn.execute(before, (device_id, start_us)).fetchall()
            newest = conn.execute(inside, (device_id, start_us, end_us, limit)).fetchall()
            if len(newest) == limit:
                rows = []  # truncated: the opening state is not the one before the oldest shown
            rows += reversed(newest)
            return [PresenceEvent(ts, state) for ts, state in rows]

        return await self._on_reader(run)

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
        clauses = ["d.uid = :uid"]
        params: dict[str, Any] = {"uid": device_id, "limit": limit}
        if metrics:
            names = {f"m{i}": name for i, name in enumerate(metrics)}
            clauses.append(f"m.name IN ({', '.join(':' + k for k in names)})")
            params.update(names)
        if start_us is not None:
            clauses.append("r.ts >= :start")
            params["start"] = start_us
        if end_us is not None:
            clauses.append("r.ts < :end")
            params["end"] = end_us
        cmp = "<" if descending else ">"
        if after is not None:
            clauses.append(
                f"(m.name > :after_metric OR (m.name = :after_metric AND r.ts {cmp} :after_ts))"
            )
            params.update(after_metric=after[0], after_ts=after[1])
        order = "DESC" if descending else "ASC"
        sql = (
            "SELECT m.name, r.ts, r.value, r.received_at FROM readings r "
            "JOIN devices d ON d.id = r.device_id JOIN metrics m ON m.id = r.metric_id "
            f"WHERE {' AND '.join(clauses)} ORDER BY m.name ASC, r.ts {order} LIMIT :limit"
        )
        return await self._on_reader(
            lambda conn: [ReadingRow(r[0], r[1], r[2], r[3]) for r in conn.execute(sql, params)]
        )

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
        params = partial_params(part, interval_us, metric)
        if device_ids is None:
            # device_metrics lists who reported the metric: one primary-key seek per device in
            # the series tables instead of a scan of every series.
            devices = (
                "SELECT device_id FROM device_metrics "
                "WHERE metric_id = (SELECT id FROM metrics WHERE name = :metric)"
            )
        else:
            # One JSON array parameter whatever the number of devices (no statement per length,
            # no bound-parameter limit).
            params["uids"] = orjson.dumps(list(device_ids)).decode()
            devices = "SELECT id FROM devices WHERE uid IN (SELECT value FROM json_each(:uids))"
        sql = partials_sql(
            part,
            interval_us,
            lambda name: f":{name}",
            lambda column: f"{column} IN ({devices})",
            agg=agg,
        )
        return await self._on_reader(lambda conn: partial_rows(conn.execute(sql, params)))

    async def list_dead_letters(
        self,
        *,
        limit: int,
        before_id: int | None,
        reason: str | None,
        device_id: str | None,
    ) -> list[DeadLetterRow]:
        """Dead letters, newest first."""
        clauses = []
        params: dict[str, Any] = {"limit": limit}
        if before_id is not None:
            clauses.append("id < :before")
            params["before"] = before_id
        if reason is not None:
            clauses.append("reason = :reason")
            params["reason"] = reason
        if device_id is not None:
            clauses.append("device_uid = :device")
            params["device"] = device_id
        where = " AND ".join(clauses) or "1"
        sql = (
            "SELECT id, received_at, topic, reason, detail, payload, size, device_uid, profile "
            f"FROM dead_letters WHERE {where} ORDER BY id DESC LIMIT :limit"
        )
        return await self._on_reader(
            lambda conn: [
                DeadLetterRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], r[7], r[8])
                for r in conn.execute(sql, params)
            ]
        )

    async def count_dead_letters(self, *, since_us: int) -> int:
        """Dead letters received since `since_us` (index on received_at, migration 2)."""
        sql = "SELECT count(*) FROM dead_letters WHERE received_at >= ?"
        return await self._on_reader(lambda conn: int(conn.execute(sql, (since_us,)).fetchone()[0]))

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
        """Rows of `metric` newest first, other metrics joined at the same time (see
        `Store.query_time_rows`).

        The primary metric is walked backwards on the readings primary key (device, metric, ts);
        each companion is one primary-key lookup per row, so a page costs `limit` seeks whatever
        the device's history holds.
        """
        params: dict[str, Any] = {"uid": device_id, "metric": metric, "limit": limit}
        joins = []
        columns = []
        for i, name in enumerate(with_metrics):
            params[f"w{i}"] = name
            joins.append(
                f"LEFT JOIN readings w{i} ON w{i}.device_id = p.device_id AND w{i}.ts = p.ts "
                f"AND w{i}.metric_id = (SELECT id FROM metrics WHERE name = :w{i})"
            )
            columns.append(f", w{i}.value")
        clauses = [
            "p.device_id = (SELECT id FROM devices WHERE uid = :uid)",
            "p.metric_id = (SELECT id FROM metrics WHERE name = :metric)",
        ]
        if start_us is not None:
            clauses.append("p.ts >= :start")
            params["start"] = start_us
        if end_us is not None:
            clauses.append("p.ts < :end")
            params["end"] = end_us
        if before_us is not None:
            clauses.append("p.ts < :before")
            params["before"] = before_us
        sql = (
            f"SELECT p.ts, p.received_at, p.value{''.join(columns)} FROM readings p "
            f"{' '.join(joins)} WHERE {' AND '.join(clauses)} ORDER BY p.ts DESC LIMIT :limit"
        )

        def run(conn: sqlite3.Connection) -> list[TimeRow]:
            rows = []
            for r in conn.execute(sql, params):
                values = {metric: r[2]}
                for i, name in enumerate(with_metrics):
                    if r[3 + i] is not None:
                        values[name] = r[3 + i]
                rows.append(TimeRow(r[0], r[1], values))
            return rows

        return await self._on_reader(run)

    # -- retention -----------------------------------------------------------------------------

    async def delete_older(
        self,
        tier: Tier,
        cutoff_us: int,
        *,
        selector: Selector,
        keep: Sequence[Selector],
    ) -> int:
        """One retention sweep, in the writer's thread between ingest batches."""
        params: list[object] = []

        def ph(value: object) -> str:
            params.append(value)
            return "?"

        sql = delete_sql(tier, cutoff_us, selector, keep, ph)

        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql, params).rowcount)

        return await self._on_writer(lambda: self._in_transaction(run))

    async def maintain(self, now_us: int) -> None:
        """Nothing to prepare ahead of time: SQLite tables are not partitioned."""

    async def size_bytes(self) -> int:
        """The database file and its WAL."""
        return sum(
            path.stat().st_size
            for path in (self.path, self.path.with_name(self.path.name + "-wal"))
            if path.exists()
        )

    async def ping(self) -> None:
        """A trivial query through the reader pool."""
        await self._on_reader(lambda conn: conn.execute("SELECT 1").fetchone())
