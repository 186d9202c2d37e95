"""The rules and alarms tables in the store, written once for every engine (issue 16): rule
documents by version, the evaluation state of each (rule, device), alarms with their events and
the notification log, as scripts (ops.py).

What a rule document or an evaluation state means is fieldhub.rules' business: here they are
JSON values. The store makes the decisions that must be atomic under concurrent writers:
a rule's next version number (gapless, one per call), at most one open alarm per (rule,
device) (a partial unique index, not a read-then-insert) and the alarm transition table (a
conditional UPDATE: two people acknowledging and clearing at once cannot both win).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from fieldhub.store.dialect import Dialect, Params
from fieldhub.store.ops import Count, Many, Query, Row, Script
from fieldhub.store.types import (
    AlarmEventRow,
    AlarmRow,
    AlarmState,
    NotificationEntry,
    NotificationRow,
    RuleStateRow,
    RuleVersionRow,
)

# -- rule versions -----------------------------------------------------------------------------

# Every version read comes with its rule's pointer row (`r`), for `deleted_us`.
VERSION_COLUMNS = (
    "v.rule_id, v.version, v.document, v.enabled, v.author, v.created_us, r.deleted_us"
)
VERSION_FROM = "FROM rule_versions v JOIN rules r ON r.rule_id = v.rule_id"


def _version(row: Row, d: Dialect) -> RuleVersionRow:
    return RuleVersionRow(
        rule_id=row[0],
        version=row[1],
        document=d.json_loads(row[2]),
        enabled=bool(row[3]),
        author=row[4],
        created_us=row[5],
        deleted_us=row[6],
    )


def put_rule_version(d: Dialect, row: RuleVersionRow) -> Script[int]:
    """Store `row` as its rule's next version and make it current; returns the version (1 for
    a new rule). A deleted rule given a new version exists again, its history continuing.

    The number comes from the upsert of the rule's pointer row: in PostgreSQL the upsert locks
    that row until commit, so a concurrent call waits and then increments what this one
    committed (SQLite has one writer). The version row is inserted in the same transaction,
    so a failure leaves no gap and no number is ever handed out twice.
    """
    p = Params(d)
    ((version,),) = yield Query(
        f"INSERT INTO rules (rule_id, version, deleted_us) VALUES ({p(row.rule_id)}, 1, NULL) "
        "ON CONFLICT (rule_id) DO UPDATE SET version = rules.version + 1, deleted_us = NULL "
        "RETURNING version",
        p.values,
    )
    p = Params(d)
    yield Query(
        "INSERT INTO rule_versions (rule_id, version, document, enabled, author, created_us) "
        f"VALUES ({p(row.rule_id)}, {p(version)}, {p(d.json_param(row.document))}, "
        f"{p(int(row.enabled))}, {p(row.author)}, {p(row.created_us)})",
        p.values,
    )
    return int(version)


def get_rule(d: Dialect, rule_id: str, version: int | None) -> Script[RuleVersionRow | None]:
    """The current version of a rule that is not deleted (version None), or the given version
    of any rule, deleted or not (its history stays readable)."""
    p = Params(d)
    sql = f"SELECT {VERSION_COLUMNS} {VERSION_FROM} WHERE v.rule_id = {p(rule_id)}"
    if version is None:
        sql += " AND v.version = r.version AND r.deleted_us IS NULL"
    else:
        sql += f" AND v.version = {p(version)}"
    rows = yield Query(sql, p.values)
    return _version(rows[0], d) if rows else None


def list_rules(d: Dialect, include_deleted: bool) -> Script[list[RuleVersionRow]]:
    """Each rule's current version, by rule id (bytewise)."""
    sql = f"SELECT {VERSION_COLUMNS} {VERSION_FROM} WHERE v.version = r.version"
    if not include_deleted:
        sql += " AND r.deleted_us IS NULL"
    sql += f" ORDER BY v.rule_id{d.collate}"
    return [_version(r, d) for r in (yield Query(sql))]


def rule_history(d: Dialect, rule_id: str) -> Script[list[RuleVersionRow]]:
    """Every version of a rule, oldest first; empty for an unknown rule."""
    rows = yield Query(
        f"SELECT {VERSION_COLUMNS} {VERSION_FROM} WHERE v.rule_id = {d.mark(1)} ORDER BY v.version",
        (rule_id,),
    )
    return [_version(r, d) for r in rows]


def delete_rule(d: Dialect, rule_id: str, at_us: int) -> Script[bool]:
    """Mark a rule deleted; its versions stay (history, audit). False when unknown or already
    deleted (the first deletion's time stays). Its evaluation states and alarms are left to the
    caller (`delete_rule_states`; alarms are history)."""
    m = d.mark
    ((changed,),) = yield Count(
        f"UPDATE rules SET deleted_us = {m(1)} WHERE rule_id = {m(2)} AND deleted_us IS NULL",
        (at_us, rule_id),
    )
    return bool(changed)


# -- rule state --------------------------------------------------------------------------------

STATE_COLUMNS = "rule_id, device_uid, state, updated_us"


def put_rule_states(d: Dialect, rows: Sequence[RuleStateRow]) -> Script[None]:
    """Insert or replace the states, all in the caller's one transaction; when the same
    (rule, device) appears twice, the last one is stored.

    One statement per row (executemany, as devices' attribute merges), not a `Bulk`: a state
    may be any JSON value, and asyncpg reads a list inside a jsonb[] parameter as a nested
    array instead of one JSON value.
    """
    latest = {(r.rule_id, r.device_id): r for r in rows}
    m = d.mark
    yield Many(
        f"INSERT INTO rule_state ({STATE_COLUMNS}) VALUES ({m(1)}, {m(2)}, {m(3)}, {m(4)}) "
        "ON CONFLICT (rule_id, device_uid) DO UPDATE SET state = excluded.state, "
        "updated_us = excluded.updated_us",
        [(r.rule_id, r.device_id, d.json_param(r.state), r.updated_us) for r in latest.values()],
    )


def load_rule_states(d: Dialect, rule_id: str | None) -> Script[list[RuleStateRow]]:
    """Every stored state (of one rule), by rule id then device id (bytewise)."""
    p = Params(d)
    sql = f"SELECT {STATE_COLUMNS} FROM rule_state"
    if rule_id is not None:
        sql += f" WHERE rule_id = {p(rule_id)}"
    sql += f" ORDER BY rule_id{d.collate}, device_uid{d.collate}"
    return [
        RuleStateRow(rule_id=r[0], device_id=r[1], state=d.json_loads(r[2]), updated_us=r[3])
        for r in (yield Query(sql, p.values))
    ]


def delete_rule_states(d: Dialect, rule_id: str) -> Script[int]:
    ((deleted,),) = yield Count(f"DELETE FROM rule_state WHERE rule_id = {d.mark(1)}", (rule_id,))
    return int(deleted)


# -- alarms ------------------------------------------------------------------------------------

ALARM_COLUMNS = (
    "alarm_id, rule_id, device_uid, severity, state, raised_us, acked_us, acked_by, "
    "ack_comment, cleared_us, cleared_by, last_notified_us, notifications, escalated_us"
)

# The transition table: the states an alarm may move to `state` from.
ALARM_SOURCES: dict[AlarmState, tuple[AlarmState, ...]] = {
    "active": (),
    "acknowledged": ("active",),
    "cleared": ("active", "acknowledged"),
}

AlarmFilter = AlarmState | Literal["open"]


def _alarm(row: Row) -> AlarmRow:
    return AlarmRow(
        alarm_id=row[0],
        rule_id=row[1],
        device_id=row[2],
        severity=row[3],
        state=row[4],
        raised_us=row[5],
        acked_us=row[6],
        acked_by=row[7],
        ack_comment=row[8],
        cleared_us=row[9],
        cleared_by=row[10],
        last_notified_us=row[11],
        notifications=row[12],
        escalated_us=row[13],
    )


def _event(
    d: Dialect, alarm_id: str, at_us: int, state: AlarmState, actor: str, comment: str | None
) -> Script[None]:
    p = Params(d)
    yield Query(
        "INSERT INTO alarm_events (alarm_id, at_us, state, actor, comment) VALUES "
        f"({p(alarm_id)}, {p(at_us)}, {p(state)}, {p(actor)}, {p(comment)})",
        p.values,
    )


def open_alarm(d: Dialect, alarm: AlarmRow) -> Script[AlarmRow | None]:
    """Store a new `active` alarm and its first event (actor `rule:<rule_id>`); None, and
    nothing stored, when the (rule, device) already has an open one.

    The partial unique index `alarms_open` decides, so two evaluations raising at once (two
    ingest workers) store one alarm. The row is stored as raised: `state` active and the
    acknowledgement and clearing columns empty, whatever `alarm` says. An alarm id that is
    already stored is a StoreError (a UUID never repeats: a bug, not a duplicate alarm).
    """
    p = Params(d)
    rows = yield Query(
        f"INSERT INTO alarms ({ALARM_COLUMNS}) VALUES ({p(alarm.alarm_id)}, {p(alarm.rule_id)}, "
        f"{p(alarm.device_id)}, {p(alarm.severity)}, 'active', {p(alarm.raised_us)}, "
        f"NULL, NULL, NULL, NULL, NULL, {p(alarm.last_notified_us)}, {p(alarm.notifications)}, "
        f"{p(alarm.escalated_us)}) "
        "ON CONFLICT (rule_id, device_uid) WHERE state <> 'cleared' DO NOTHING "
        f"RETURNING {ALARM_COLUMNS}",
        p.values,
    )
    if not rows:
        return None
    yield from _event(d, alarm.alarm_id, alarm.raised_us, "active", f"rule:{alarm.rule_id}", None)
    return _alarm(rows[0])


def transition_alarm(
    d: Dialect,
    alarm_id: str,
    state: AlarmState,
    at_us: int,
    actor: str,
    comment: str | None,
) -> Script[AlarmRow | None]:
    """Move an alarm to `state` if the transition table allows it from its stored state, and
    record the event; returns the row as it now is, or None (unknown alarm, or a move the table
    refuses: nothing changes). One conditional UPDATE: in PostgreSQL a concurrent transition
    waits for the row and re-checks its state, so only one of two racing moves happens.
    Acknowledging records who, when and the comment on the alarm; clearing records who and
    when (its comment is on the event)."""
    sources = ALARM_SOURCES[state]
    if not sources:
        return None
    p = Params(d)
    if state == "acknowledged":
        changes = f"acked_us = {p(at_us)}, acked_by = {p(actor)}, ack_comment = {p(comment)}"
    else:
        changes = f"cleared_us = {p(at_us)}, cleared_by = {p(actor)}"
    allowed = ", ".join(f"'{s}'" for s in sources)
    rows = yield Query(
        f"UPDATE alarms SET state = {p(state)}, {changes} "
        f"WHERE alarm_id = {p(alarm_id)} AND state IN ({allowed}) RETURNING {ALARM_COLUMNS}",
        p.values,
    )
    if not rows:
        return None
    yield from _event(d, alarm_id, at_us, state, actor, comment)
    return _alarm(rows[0])


def record_alarm_changes(d: Dialect, changes: Sequence[AlarmRow]) -> Script[list[AlarmRow | None]]:
    """Store a rule engine's alarm changes in order in one transaction: an `active` row is a
    raise (`open_alarm`), a `cleared` row a clear by its `cleared_by` at its `cleared_us`
    (`transition_alarm`). Returns each change's stored row, or None where the store refused it
    (already open; already cleared), as the single calls would."""
    stored: list[AlarmRow | None] = []
    for row in changes:
        if row.state == "active":
            stored.append((yield from open_alarm(d, row)))
        elif row.state == "cleared" and row.cleared_us is not None and row.cleared_by:
            stored.append(
                (
                    yield from transition_alarm(
                        d, row.alarm_id, "cleared", row.cleared_us, row.cleared_by, None
                    )
                )
            )
        else:
            raise ValueError(f"alarm {row.alarm_id}: not a raise or a clear ({row.state})")
    return stored


def get_alarm(d: Dialect, alarm_id: str) -> Script[AlarmRow | None]:
    rows = yield Query(
        f"SELECT {ALARM_COLUMNS} FROM alarms WHERE alarm_id = {d.mark(1)}", (alarm_id,)
    )
    return _alarm(rows[0]) if rows else None


def list_alarms(
    d: Dialect,
    *,
    state: AlarmFilter | None,
    device: str | None,
    rule_id: str | None,
    limit: int,
    before: tuple[int, str] | None,
) -> Script[list[AlarmRow]]:
    """Alarms newest first (by raised time, then id bytewise), below the `before` cursor
    (the previous page's last (raised_us, alarm_id)), filtered; state "open" is active or
    acknowledged."""
    p = Params(d)
    where: list[str] = []
    if state == "open":
        where.append("state <> 'cleared'")
    elif state is not None:
        where.append(f"state = {p(state)}")
    if device is not None:
        where.append(f"device_uid = {p(device)}")
    if rule_id is not None:
        where.append(f"rule_id = {p(rule_id)}")
    if before is not None:
        where.append(f"(raised_us, alarm_id{d.collate}) < ({p(before[0])}, {p(before[1])})")
    sql = f"SELECT {ALARM_COLUMNS} FROM alarms"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY raised_us DESC, alarm_id{d.collate} DESC LIMIT {p(limit)}"
    return [_alarm(r) for r in (yield Query(sql, p.values))]


def alarm_events(d: Dialect, alarm_id: str) -> Script[list[AlarmEventRow]]:
    """An alarm's events, oldest first (by seq)."""
    rows = yield Query(
        "SELECT seq, alarm_id, at_us, state, actor, comment FROM alarm_events "
        f"WHERE alarm_id = {d.mark(1)} ORDER BY seq",
        (alarm_id,),
    )
    return [
        AlarmEventRow(seq=r[0], alarm_id=r[1], at_us=r[2], state=r[3], actor=r[4], comment=r[5])
        for r in rows
    ]


def mark_notified(
    d: Dialect, alarm_id: str, at_us: int, escalated: bool
) -> Script[AlarmRow | None]:
    """Count one notification sent about an alarm at `at_us` (whatever its state: a clear is
    notified too); `escalated` records the first escalation's time (later ones keep it).
    Returns the row as it now is, None for an unknown alarm."""
    p = Params(d)
    escalation = f", escalated_us = coalesce(escalated_us, {p(at_us)})" if escalated else ""
    rows = yield Query(
        f"UPDATE alarms SET last_notified_us = {p(at_us)}, notifications = notifications + 1"
        f"{escalation} WHERE alarm_id = {p(alarm_id)} RETURNING {ALARM_COLUMNS}",
        p.values,
    )
    return _alarm(rows[0]) if rows else None


# -- notification log --------------------------------------------------------------------------

NOTIFICATION_COLUMNS = "seq, at_us, rule_id, alarm_id, kind, target, outcome, attempt, detail"


def append_notification_logs(d: Dialect, entries: Sequence[NotificationEntry]) -> Script[list[int]]:
    """Append several entries in order (one transaction); returns their seqs."""
    seqs: list[int] = []
    for entry in entries:
        seqs.append((yield from append_notification_log(d, entry)))
    return seqs


def append_notification_log(d: Dialect, entry: NotificationEntry) -> Script[int]:
    """Append one delivery attempt; returns its seq."""
    p = Params(d)
    ((seq,),) = yield Query(
        "INSERT INTO notification_log (at_us, rule_id, alarm_id, kind, target, outcome, "
        f"attempt, detail) VALUES ({p(entry.at_us)}, {p(entry.rule_id)}, {p(entry.alarm_id)}, "
        f"{p(entry.kind)}, {p(entry.target)}, {p(entry.outcome)}, {p(entry.attempt)}, "
        f"{p(d.json_param(entry.detail))}) RETURNING seq",
        p.values,
    )
    return int(seq)


def list_notification_log(
    d: Dialect,
    *,
    limit: int,
    before_seq: int | None,
    rule_id: str | None,
    alarm_id: str | None,
) -> Script[list[NotificationRow]]:
    """Entries newest first (by seq), below the `before_seq` cursor, filtered."""
    p = Params(d)
    where: list[str] = []
    if before_seq is not None:
        where.append(f"seq < {p(before_seq)}")
    if rule_id is not None:
        where.append(f"rule_id = {p(rule_id)}")
    if alarm_id is not None:
        where.append(f"alarm_id = {p(alarm_id)}")
    sql = f"SELECT {NOTIFICATION_COLUMNS} FROM notification_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY seq DESC LIMIT {p(limit)}"
    return [
        NotificationRow(
            seq=r[0],
            at_us=r[1],
            rule_id=r[2],
            alarm_id=r[3],
            kind=r[4],
            target=r[5],
            outcome=r[6],
            attempt=r[7],
            detail=d.json_loads(r[8]),
        )
        for r in (yield Query(sql, p.values))
    ]
