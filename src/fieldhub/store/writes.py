"""The store's write scripts, written once for every engine (see ops.py): a batch, the
schema migrations, and the writer's caches. An engine runs each inside one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fieldhub import clock
from fieldhub.store import command_rows
from fieldhub.store.admission import MAX_ATTRIBUTES_PER_DEVICE, cap_attributes
from fieldhub.store.dialect import Dialect, Params
from fieldhub.store.ops import Bulk, Count, Many, Query, Script, Staging, Statements
from fieldhub.store.plan import (
    CacheDelta,
    ReadingKeyRow,
    WriterCaches,
    dead_letter_rows,
    decide_presence,
    in_key_order,
    new_keys,
    plan_rows,
    reply_transition,
)
from fieldhub.store.rollups import ROLLUP_TABLES, rollup_rows, rollup_select_sql, upsert_sql
from fieldhub.store.types import StoreError, WriteBatch, WriteResult

# PostgreSQL types of the bulk-written columns (SQLite ignores them).
READING_TYPES = ("bigint", "int", "bigint", "float8", "bigint")
ROLLUP_TYPES = (
    "bigint",
    "int",
    "bigint",
    "bigint",
    "float8",
    "float8",
    "float8",
    "bigint",
    "float8",
    "bigint",
    "float8",
)


def _lookup_devices(
    d: Dialect, uids: Sequence[str], device_ids: dict[str, int], presence: dict[int, str]
) -> Script[None]:
    p = Params(d)
    sql = f"SELECT id, uid, presence FROM devices WHERE {p.array('uid', uids, 'text')}"
    for row in (yield Query(sql, p.values)):
        device_ids[row[1]] = row[0]
        presence[row[0]] = row[2]


def write_batch(
    d: Dialect,
    batch: WriteBatch,
    caches: WriterCaches,
    stale_after_s: Mapping[str, int],
    max_attributes: int = MAX_ATTRIBUTES_PER_DEVICE,
) -> Script[tuple[WriteResult, CacheDelta]]:
    """Store `batch` (see `Store.write_batch`); returns what it did and what the caches learn.

    Devices and metrics are created with ON CONFLICT and then read back, so two writers meeting
    a new device at once (ingest workers) both end up with its one id, and only the one that
    created it reports it new.
    """
    result = WriteResult()
    delta = CacheDelta()
    device_ids: dict[str, int] = caches.devices
    metric_ids: dict[str, int] = caches.metrics
    stored_presence: dict[int, str] = {}
    plan = plan_rows(batch, device_ids, metric_ids, caches)
    lookup_replies = {r.device_id for r in batch.command_replies} - device_ids.keys()
    keys = None
    if not plan.complete or lookup_replies:
        keys = new_keys(batch, caches, stale_after_s)
        device_ids, metric_ids = dict(device_ids), dict(metric_ids)
        if keys.devices:
            uids = list(keys.devices)
            created = yield Bulk(
                "INSERT INTO devices (uid, profile, first_seen_us, last_seen_us, stale_after_s) ",
                " ON CONFLICT (uid) DO NOTHING RETURNING uid",
                ("text", "text", "bigint", "bigint", "int"),
                [(u, *keys.devices[u][:2], keys.devices[u][1], keys.devices[u][2]) for u in uids],
            )
            mine = {row[0] for row in created}
            result.new_devices = [u for u in uids if u in mine]
            yield from _lookup_devices(d, uids, device_ids, stored_presence)
        if keys.lookup:
            yield from _lookup_devices(d, keys.lookup, device_ids, stored_presence)
        if keys.metrics:
            yield Bulk(
                "INSERT INTO metrics (name) ",
                " ON CONFLICT (name) DO NOTHING",
                ("text",),
                [(name,) for name in keys.metrics],
            )
            p = Params(d)
            sql = f"SELECT id, name FROM metrics WHERE {p.array('name', keys.metrics, 'text')}"
            for row in (yield Query(sql, p.values)):
                metric_ids[row[1]] = row[0]
        if not plan.complete:
            plan = plan_rows(batch, device_ids, metric_ids, caches)
    if plan.presence_said:
        # Another writer may have changed it since this one last looked: compare with the
        # database (rows locked until commit where writers run concurrently), not with memory.
        p = Params(d)
        said = sorted({device_pk for device_pk, _, _, _ in plan.presence_said})
        sql = f"SELECT id, presence FROM devices WHERE {p.array('id', said, 'bigint')}"
        for row in (yield Query(sql + d.lock_rows("devices"), p.values)):
            stored_presence[row[0]] = row[1]
        decide_presence(plan, stored_presence)
    if plan.readings:
        insert = _readings_staged if d.one_writer else _readings_returning
        result.readings_written = yield from insert(d, plan.readings)
        result.readings_duplicate = len(plan.readings) - result.readings_written
    if plan.new_series:
        yield Bulk(
            "INSERT INTO device_metrics (device_id, metric_id) ",
            " ON CONFLICT DO NOTHING",
            ("bigint", "int"),
            sorted(plan.new_series),
        )
    if plan.last_seen:
        yield Bulk(
            "WITH v(id, ts) AS (",
            f") UPDATE devices SET last_seen_us = {d.greatest}(devices.last_seen_us, v.ts) "
            "FROM v WHERE devices.id = v.id",
            ("bigint", "bigint"),
            list(plan.last_seen.items()),
        )
    m = d.mark
    if plan.attributes:
        result.attributes_dropped, delta.attribute_keys = yield from _cap_attributes(
            d, plan.attributes, caches.attribute_keys, max_attributes
        )
    if plan.attributes:
        yield Many(
            f"UPDATE devices SET attributes = {d.json_merge('attributes', m(1))} WHERE id = {m(2)}",
            [(d.json_param(attrs), pk) for pk, attrs in plan.attributes.items()],
        )
    if plan.presence_events:
        yield Many(
            f"INSERT INTO presence_events (device_id, ts, state) VALUES ({m(1)}, {m(2)}, {m(3)}) "
            "ON CONFLICT (device_id, ts) DO UPDATE SET state = excluded.state",
            plan.presence_events,
        )
        yield Many(
            f"UPDATE devices SET presence = {m(1)}, presence_changed_us = {m(2)} WHERE id = {m(3)}",
            [(state, ts, pk) for pk, ts, state in plan.presence_events],
        )
    if batch.dead_letters:
        yield Many(
            "INSERT INTO dead_letters "
            "(received_at, topic, reason, detail, payload, size, device_uid, profile) "
            f"VALUES ({', '.join(m(i) for i in range(1, 9))})",
            dead_letter_rows(batch.dead_letters),
        )
        result.dead_letters = len(batch.dead_letters)
    if batch.retained_digests:
        yield Many(
            f"INSERT INTO retained_digests (topic, digest) VALUES ({m(1)}, {m(2)}) "
            "ON CONFLICT (topic) DO UPDATE SET digest = excluded.digest",
            list(batch.retained_digests.items()),
        )
    if plan.formats:
        yield Many(
            f"UPDATE devices SET command_format = {m(1)}, topic_id = {m(2)} WHERE id = {m(3)}",
            [(fmt, topic_id, pk) for pk, (fmt, topic_id) in plan.formats.items()],
        )
    for reply in batch.command_replies:
        device_pk = device_ids.get(reply.device_id)
        target, outcome = reply_transition(reply)
        ended = (
            None
            if device_pk is None
            else (
                yield from command_rows.transition(
                    d, device_pk, reply.command_id, target, reply.received_us, outcome
                )
            )
        )
        if ended is None:
            result.late_replies += 1
        else:
            result.command_transitions.append(ended)
    result.presence_changes = plan.presence_changes
    if keys is not None:
        delta.devices = {u: device_ids[u] for u in (*keys.devices, *keys.lookup) if u in device_ids}
        delta.metrics = {name: metric_ids[name] for name in keys.metrics}
    delta.presence = {**stored_presence, **plan.presence}
    delta.series = plan.new_series
    delta.formats = plan.formats
    return result, delta


def _readings_returning(d: Dialect, readings: list[ReadingKeyRow]) -> Script[int]:
    """Insert readings and add them to the rollups; returns how many were new.

    For concurrent writers (PostgreSQL's ingest workers): ON CONFLICT ... RETURNING says, row by
    row and race-free, which readings this batch inserted (not the duplicates): what the
    rollups add.
    """
    inserted = yield Bulk(
        "INSERT INTO readings (device_id, metric_id, ts, value, received_at) ",
        " ON CONFLICT DO NOTHING RETURNING device_id, metric_id, ts, value",
        READING_TYPES,
        in_key_order(readings),
        Staging("readings", ("device_id", "metric_id", "ts", "value", "received_at")),
    )
    for size_us, table in ROLLUP_TABLES:
        rollups = rollup_rows(inserted, size_us)
        if rollups:
            head, tail = upsert_sql(table, d.least, d.greatest)
            yield Bulk(head, tail, ROLLUP_TYPES, rollups)
    return len(inserted)


# The pending table's slices (`fold_rollups`): a slice is the devices whose id leaves this
# remainder. Stored with each pending row, so changing it only changes which rows a fold takes
# together.
FOLD_SLICES = 16

# SQLite's staging table: a batch's new readings, emptied before the transaction ends. Created
# per connection (TEMP), keyed as `readings` so a batch's own repeats collapse on the way in.
STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS staging_readings (device_id INTEGER NOT NULL, "
    "metric_id INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL, "
    "received_at INTEGER NOT NULL, PRIMARY KEY (device_id, metric_id, ts)) WITHOUT ROWID"
)


def _readings_staged(d: Dialect, readings: list[ReadingKeyRow]) -> Script[int]:
    """Insert readings and add them to the rollups; returns how many were new.

    For one writer (SQLite): the batch goes into a staging table, from there into `readings`,
    and what was new into the pending table that `fold_rollups` aggregates into the rollups in
    SQL. The same effect as `_readings_returning` once folded, but RETURNING steps SQLite once
    per row, and the sqlite3 module gives up and retakes the interpreter lock at every step:
    each retake waits for the MQTT network thread's turn, and rollups computed in Python hold
    the lock too. Here the engine does the work in a handful of statements while the network
    thread runs (bench/README.md, "Rollups in SQL" and "Rollups folded every second").
    """
    yield Statements(STAGING_DDL)
    # A batch's own repeats collapse here, the first kept, as ON CONFLICT DO NOTHING does in
    # order; any other constraint still fails the batch, as it would in `readings`.
    yield Bulk(
        "INSERT INTO temp.staging_readings (device_id, metric_id, ts, value, received_at) ",
        " ON CONFLICT DO NOTHING",
        READING_TYPES,
        readings,
    )
    staged = (yield Query("SELECT count(*) FROM temp.staging_readings"))[0][0]
    # Redeliveries are rare: insert optimistically, and only if some readings were stored
    # already, undo and take those out first, so the rollups add exactly what was new.
    yield Count("SAVEPOINT staged_readings")
    insert = (
        "INSERT INTO readings (device_id, metric_id, ts, value, received_at) "
        "SELECT device_id, metric_id, ts, value, received_at FROM temp.staging_readings"
    )
    # WHERE TRUE: SQLite reads ON CONFLICT after a bare FROM as a join constraint.
    written: int = (yield Count(insert + " WHERE TRUE ON CONFLICT DO NOTHING"))[0][0]
    if written < staged:
        yield Count("ROLLBACK TO staged_readings")
        yield Count(
            "DELETE FROM temp.staging_readings WHERE EXISTS (SELECT 1 FROM readings r "
            "WHERE r.device_id = staging_readings.device_id "
            "AND r.metric_id = staging_readings.metric_id AND r.ts = staging_readings.ts)"
        )
        written = (yield Count(insert))[0][0]
    yield Count("RELEASE staged_readings")
    if written:
        # What is new goes to the rollups by way of the pending table (`fold_rollups`).
        yield Count(
            f"INSERT INTO {d.pending_rollups} (slice, device_id, metric_id, ts, value) "
            f"SELECT device_id % {FOLD_SLICES}, device_id, metric_id, ts, value "
            "FROM temp.staging_readings"
        )
    yield Count("DELETE FROM temp.staging_readings")
    return written


def fold_rollups(d: Dialect, slice_: int | None = None) -> Script[int]:
    """Add the pending readings of devices in `slice_` (all when None) to the rollups and take
    them out of the pending table; returns how many.

    SQLite's batches append their new readings to the pending table instead of updating the
    rollups (`_readings_staged`), and the store folds one slice of the devices at a time, each
    once a second: each series' rollup rows are rewritten once a second instead of at every
    batch, and no fold holds the writer long (all of a second of 10,000 msg/s at once: ~80 ms;
    a slice: a sixteenth of that). The readings go through the keyed staging table, so the
    first and last value of a bucket are one seek each. Series reads add the pending rows
    meanwhile (reads.series_partials), so nothing is ever missing from a query.
    """
    pending = d.pending_rollups
    if pending is None:  # this engine's batches update the rollups themselves
        return 0
    where = "TRUE" if slice_ is None else f"slice = {int(slice_)}"
    yield Statements(STAGING_DDL)
    # A reading stored, deleted by retention and stored again is pending twice: kept once.
    moved: int = (
        yield Count(
            "INSERT INTO temp.staging_readings (device_id, metric_id, ts, value, received_at) "
            f"SELECT device_id, metric_id, ts, value, 0 FROM {pending} WHERE {where} "
            "ON CONFLICT DO NOTHING"
        )
    )[0][0]
    if moved:
        for size_us, table in ROLLUP_TABLES:
            head, tail = upsert_sql(table, d.least, d.greatest)
            select = rollup_select_sql("temp.staging_readings", size_us)
            yield Count(f"{head}{select} WHERE TRUE{tail}")
        yield Count("DELETE FROM temp.staging_readings")
        yield Count(f"DELETE FROM {pending} WHERE {where}")
    return moved


def _cap_attributes(
    d: Dialect,
    attributes: dict[int, dict[str, Any]],
    known: Mapping[int, frozenset[str]],
    max_keys: int,
) -> Script[tuple[int, dict[int, frozenset[str]]]]:
    """Keep each device's attributes to `max_keys` keys (admission.cap_attributes), in place;
    returns how many new keys were not stored and each device's keys after the batch. The keys
    of a device the writer has not seen attributes of are read once."""
    missing = [pk for pk in attributes if pk not in known]
    loaded: dict[int, frozenset[str]] = {}
    if missing:
        p = Params(d)
        sql = f"SELECT id, attributes FROM devices WHERE {p.array('id', missing, 'bigint')}"
        for pk, stored in (yield Query(sql, p.values)):
            loaded[pk] = frozenset(d.json_loads(stored) or ()) if stored else frozenset()
    dropped = 0
    after: dict[int, frozenset[str]] = {}
    for pk in list(attributes):
        stored_keys = known.get(pk) or loaded.get(pk, frozenset())
        kept, not_kept = cap_attributes(stored_keys, attributes[pk], max_keys)
        dropped += not_kept
        if kept:
            attributes[pk] = kept
        else:
            del attributes[pk]
        removed = {key for key, value in kept.items() if value is None}
        after[pk] = (stored_keys | kept.keys()) - removed
    return dropped, after


Migration = tuple[int, str, str]


def migrate_step(d: Dialect, migrations: Sequence[Migration], where: str) -> Script[int | None]:
    """Apply the first migration not yet recorded in schema_migrations; returns its version,
    or None when the schema is up to date. One transaction per migration (the caller loops):
    a migration that fails leaves neither its tables nor its version behind, and the ones
    before it stay applied. Refuses a database whose schema is newer than this fieldhub knows.
    """
    if d.lock_migrations is not None:
        # Other processes starting against the same database wait here, then see it applied.
        yield Query(d.lock_migrations)
    yield Query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "description TEXT NOT NULL, applied_us BIGINT NOT NULL)"
    )
    done = {row[0] for row in (yield Query("SELECT version FROM schema_migrations"))}
    known = max(version for version, _, _ in migrations)
    if max(done, default=0) > known:
        raise StoreError(
            f"{where} has schema version {max(done)}, newer than this fieldhub knows ({known}); "
            "upgrade fieldhub"
        )
    pending = [m for m in migrations if m[0] not in done]
    if not pending:
        return None
    version, description, sql = pending[0]
    try:
        yield Statements(sql)
    except StoreError as exc:
        raise StoreError(f"migration {version} ({description}) failed: {exc}") from exc
    m = d.mark
    yield Query(
        f"INSERT INTO schema_migrations VALUES ({m(1)}, {m(2)}, {m(3)})",
        (version, description, clock.now_us()),
    )
    return version


def load_caches() -> Script[WriterCaches]:
    """The writer's caches as the database holds them now."""
    caches = WriterCaches()
    for pk, uid, presence, fmt, topic_id in (
        yield Query("SELECT id, uid, presence, command_format, topic_id FROM devices")
    ):
        caches.devices[uid] = pk
        caches.presence[pk] = presence
        caches.formats[pk] = (fmt, topic_id)
    caches.metrics = {name: pk for pk, name in (yield Query("SELECT id, name FROM metrics"))}
    caches.series = {
        (row[0], row[1]) for row in (yield Query("SELECT device_id, metric_id FROM device_metrics"))
    }
    for device_pk, _metric_pk in caches.series:
        caches.series_count[device_pk] = caches.series_count.get(device_pk, 0) + 1
    return caches
