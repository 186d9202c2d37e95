"""The store's read scripts, written once for every engine (see ops.py and dialect.py)."""

from __future__ import annotations

from collections.abc import Sequence

from fieldhub.store.dialect import Dialect, Params
from fieldhub.store.ops import Query, Row, Script
from fieldhub.store.rollups import Part, Partial, partial_params, partial_rows, partials_sql
from fieldhub.store.types import (
    Aggregate,
    DeadLetterRow,
    DeviceRow,
    MetricSummary,
    PresenceEvent,
    PresenceState,
    ReadingRow,
    TimeRow,
)


def _presence(now: str) -> str:
    """A device's presence now: `offline` as stored, else online or stale by its silence."""
    return (
        "CASE WHEN d.presence = 'offline' THEN 'offline' "
        f"WHEN d.last_seen_us < {now} - CAST(d.stale_after_s AS BIGINT) * 1000000 THEN 'stale' "
        "ELSE 'online' END"
    )


def _device_filters(
    p: Params,
    profile: str | None,
    presence: PresenceState | None,
    search: str | None,
    now_us: int,
) -> str:
    """WHERE clauses over `devices d` (presence as of `now_us`)."""
    clauses = []
    if profile is not None:
        clauses.append(f"d.profile = {p(profile)}")
    if presence is not None:
        clauses.append(f"({_presence(p(now_us))}) = {p(presence)}")
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = p(f"%{escaped}%")
        attributes = p.dialect.json_text("d.attributes")
        clauses.append(
            f"(d.uid LIKE {pattern} ESCAPE '\\' OR {attributes} LIKE {pattern} ESCAPE '\\')"
        )
    return " AND ".join(clauses) or "TRUE"


def _device_row(row: Row, d: Dialect) -> DeviceRow:
    """A DeviceRow from `SELECT {DEVICE_COLUMNS}`."""
    return DeviceRow(
        device_id=row[0],
        profile=row[1],
        first_seen_us=row[2],
        last_seen_us=row[3],
        presence=row[4],
        presence_changed_us=row[5],
        attributes=d.json_loads(row[6]),
        stale_after_s=row[7],
        command_format=row[8],
        topic_id=row[9],
    )


def _device_columns(now: str) -> str:
    return (
        "d.uid, d.profile, d.first_seen_us, d.last_seen_us, "
        f"{_presence(now)}, d.presence_changed_us, d.attributes, d.stale_after_s, "
        "d.command_format, d.topic_id"
    )


def list_devices(
    d: Dialect,
    *,
    profile: str | None,
    presence: PresenceState | None,
    search: str | None,
    limit: int,
    after: str | None,
    now_us: int,
) -> Script[list[DeviceRow]]:
    """Devices ordered by id, after the cursor id, filtered."""
    p = Params(d)
    now = p(now_us)
    where = _device_filters(p, profile, presence, search, now_us)
    sql = (
        f"SELECT {_device_columns(now)} FROM devices d "
        f"WHERE {where} AND d.uid > {p(after or '')}{d.collate} "
        f"ORDER BY d.uid{d.collate} LIMIT {p(limit)}"
    )
    return [_device_row(r, d) for r in (yield Query(sql, p.values))]


def count_devices(
    d: Dialect,
    *,
    profile: str | None,
    presence: PresenceState | None,
    search: str | None,
    now_us: int,
) -> Script[int]:
    """How many devices match the filters."""
    p = Params(d)
    where = _device_filters(p, profile, presence, search, now_us)
    ((count,),) = yield Query(f"SELECT count(*) FROM devices d WHERE {where}", p.values)
    return int(count)


def get_device(d: Dialect, device_id: str, now_us: int) -> Script[DeviceRow | None]:
    """One device by canonical id."""
    p = Params(d)
    now = p(now_us)
    rows = yield Query(
        f"SELECT {_device_columns(now)} FROM devices d WHERE d.uid = {p(device_id)}", p.values
    )
    return _device_row(rows[0], d) if rows else None


def latest_values(d: Dialect, device_ids: Sequence[str]) -> Script[dict[str, list[MetricSummary]]]:
    """The latest value of every metric of each device, metrics by name."""
    out: dict[str, list[MetricSummary]] = {device_id: [] for device_id in device_ids}
    if not device_ids:
        return out
    p = Params(d)
    sql = (
        "SELECT d.uid, m.name, r.ts, r.value FROM device_metrics dm "
        "JOIN devices d ON d.id = dm.device_id JOIN metrics m ON m.id = dm.metric_id "
        f"{d.latest_join}WHERE {p.array('d.uid', list(device_ids), 'text')} "
        f"ORDER BY d.uid{d.collate}, m.name{d.collate}"
    )
    for uid, name, ts, value in (yield Query(sql, p.values)):
        out[uid].append(MetricSummary(name, ts, value))
    return out


def presence_history(
    d: Dialect, device_id: str, *, start_us: int, end_us: int, limit: int
) -> Script[list[PresenceEvent]]:
    """Presence changes in the window, with the state it opens in (see the interface)."""
    m = d.mark
    events = "SELECT p.ts, p.state FROM presence_events p JOIN devices d ON d.id = p.device_id "
    before = yield Query(
        f"{events}WHERE d.uid = {m(1)} AND p.ts < {m(2)} ORDER BY p.ts DESC LIMIT 1",
        (device_id, start_us),
    )
    newest = yield Query(
        f"{events}WHERE d.uid = {m(1)} AND p.ts >= {m(2)} AND p.ts < {m(3)} "
        f"ORDER BY p.ts DESC LIMIT {m(4)}",
        (device_id, start_us, end_us, limit),
    )
    if len(newest) == limit:
        before = []  # truncated: the opening state is not the one before the oldest shown
    return [PresenceEvent(r[0], r[1]) for r in [*before, *reversed(newest)]]


def query_readings(
    d: Dialect,
    device_id: str,
    *,
    metrics: Sequence[str] | None,
    start_us: int | None,
    end_us: int | None,
    limit: int,
    after: tuple[str, int] | None,
    descending: bool,
) -> Script[list[ReadingRow]]:
    """Raw readings ordered by metric name, then time; `after` is the (metric, ts) cursor."""
    p = Params(d)
    clauses = [f"d.uid = {p(device_id)}"]
    if metrics:
        clauses.append(p.array("m.name", list(metrics), "text"))
    if start_us is not None:
        clauses.append(f"r.ts >= {p(start_us)}")
    if end_us is not None:
        clauses.append(f"r.ts < {p(end_us)}")
    cmp = "<" if descending else ">"
    if after is not None:
        metric, ts = p(after[0]), p(after[1])
        clauses.append(f"(m.name > {metric}{d.collate} OR (m.name = {metric} AND r.ts {cmp} {ts}))")
    order = "DESC" if descending else "ASC"
    sql = (
        "SELECT m.name, r.ts, r.value, r.received_at FROM readings r "
        "JOIN devices d ON d.id = r.device_id JOIN metrics m ON m.id = r.metric_id "
        f"WHERE {' AND '.join(clauses)} "
        f"ORDER BY m.name{d.collate} ASC, r.ts {order} LIMIT {p(limit)}"
    )
    return [ReadingRow(r[0], r[1], r[2], r[3]) for r in (yield Query(sql, p.values))]


def series_partials(
    d: Dialect,
    device_ids: Sequence[str] | None,
    metric: str,
    part: Part,
    interval_us: int,
    *,
    agg: Aggregate,
) -> Script[list[tuple[int, Partial]]]:
    """One part of a series query over a set of devices, from raw readings or a rollup (with
    the readings not yet folded into it, where the engine defers rollups)."""
    p = Params(d)
    ph = p.named(partial_params(part, interval_us, metric))
    if device_ids is None:
        # device_metrics lists who reported the metric: one primary-key seek per device in the
        # series tables instead of a scan of every series.
        devices = (
            "SELECT device_id FROM device_metrics "
            f"WHERE metric_id = (SELECT id FROM metrics WHERE name = {ph('metric')})"
        )
    else:
        devices = f"SELECT id FROM devices WHERE {p.array('uid', list(device_ids), 'text')}"
    sql = partials_sql(
        part,
        interval_us,
        ph,
        lambda column: d.in_subquery(column, devices),
        agg=agg,
        collate=d.collate,
        pending=d.pending_rollups,
    )
    return partial_rows((yield Query(sql, p.values)))


def list_dead_letters(
    d: Dialect,
    *,
    limit: int,
    before_id: int | None,
    reason: str | None,
    device_id: str | None,
) -> Script[list[DeadLetterRow]]:
    """Dead letters, newest first."""
    p = Params(d)
    clauses = [
        f"{column} {op} {p(value)}"
        for column, op, value in (
            ("id", "<", before_id),
            ("reason", "=", reason),
            ("device_uid", "=", device_id),
        )
        if value is not None
    ]
    sql = (
        "SELECT id, received_at, topic, reason, detail, payload, size, device_uid, profile "
        f"FROM dead_letters WHERE {' AND '.join(clauses) or 'TRUE'} "
        f"ORDER BY id DESC LIMIT {p(limit)}"
    )
    return [
        DeadLetterRow(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6], r[7], r[8])
        for r in (yield Query(sql, p.values))
    ]


def count_dead_letters(d: Dialect, since_us: int) -> Script[int]:
    """Dead letters received at or after `since_us` (index on received_at)."""
    ((count,),) = yield Query(
        f"SELECT count(*) FROM dead_letters WHERE received_at >= {d.mark(1)}", (since_us,)
    )
    return int(count)


def query_time_rows(
    d: Dialect,
    device_id: str,
    metric: str,
    *,
    with_metrics: Sequence[str],
    start_us: int | None,
    end_us: int | None,
    limit: int,
    before_us: int | None,
) -> Script[list[TimeRow]]:
    """Rows of `metric` newest first, other metrics joined at the same time.

    The primary metric is walked backwards on the readings primary key (device, metric, ts);
    each companion is one primary-key lookup per row, so a page costs `limit` seeks whatever
    the device's history holds.
    """
    p = Params(d)
    joins = [
        f"LEFT JOIN readings w{i} ON w{i}.device_id = p.device_id AND w{i}.ts = p.ts "
        f"AND w{i}.metric_id = (SELECT id FROM metrics WHERE name = {p(name)})"
        for i, name in enumerate(with_metrics)
    ]
    clauses = [
        f"p.device_id = (SELECT id FROM devices WHERE uid = {p(device_id)})",
        f"p.metric_id = (SELECT id FROM metrics WHERE name = {p(metric)})",
    ]
    for op, value in ((">=", start_us), ("<", end_us), ("<", before_us)):
        if value is not None:
            clauses.append(f"p.ts {op} {p(value)}")
    columns = "".join(f", w{i}.value" for i in range(len(with_metrics)))
    sql = (
        f"SELECT p.ts, p.received_at, p.value{columns} FROM readings p "
        f"{' '.join(joins)} WHERE {' AND '.join(clauses)} "
        f"ORDER BY p.ts DESC LIMIT {p(limit)}"
    )
    out = []
    for r in (yield Query(sql, p.values)):
        values = {metric: r[2]}
        for i, name in enumerate(with_metrics):
            if r[3 + i] is not None:
                values[name] = r[3 + i]
        out.append(TimeRow(r[0], r[1], values))
    return out


def retained_digests() -> Script[dict[str, bytes]]:
    """Topic -> digest of the last stored payload on retained-publishing topics."""
    return {r[0]: bytes(r[1]) for r in (yield Query("SELECT topic, digest FROM retained_digests"))}
