"""The rules and alarms tables (issue 16) on both engines, through the Store interface: rule
versions numbered atomically, evaluation states, alarms (one open per rule and device, the
transition table, events, notification counts) and the notification log; the migration that
adds them to an existing database; and `fieldhub migrate` carrying them to PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib
import sqlite3
from collections.abc import Awaitable, Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fieldhub.store import Store, StoreError, WriteBatch, open_store
from fieldhub.store.migrate import TABLES, migrate_sqlite_to_postgres
from fieldhub.store.migrate_tables import NOT_COPIED
from fieldhub.store.ops import Op, Query
from fieldhub.store.postgres_schema import MIGRATIONS as POSTGRES_MIGRATIONS
from fieldhub.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from fieldhub.store.types import (
    AlarmEventRow,
    AlarmRow,
    AlarmState,
    AuditEntry,
    NotificationEntry,
    NotificationRow,
    RuleStateRow,
    RuleVersionRow,
)
from support.postgres import PostgresServer
from support.store_rows import T0, S, msg, schema_before

Reopen = Callable[[Store], Awaitable[Store]]
STALE_AFTER_S = {"native": 120}
HOUR = 3600 * S
RULE_TABLES = (
    "rules",
    "rule_versions",
    "rule_state",
    "alarms",
    "alarm_events",
    "notification_log",
)
DEVICE = "3C:E9:0E:72:12:4C"

COLD_ROOM: dict[str, object] = {
    "id": "cold-room-high",
    "name": "Cold room above 8 °C",
    "enabled": True,
    "scope": {"profile": "readings"},
    "condition": {
        "threshold": {"metric": "temperature", "above": 8.0, "clear_below": 6.0, "for_s": 600}
    },
    "severity": "major",
    "actions": [{"alarm": {}}, {"email": {"to": ["ops@example.com"]}}],
    "repeat_every_s": 3600,
    "overrides": {DEVICE: {"above": 6.0, "clear_below": 4.0}},
}


def rule(
    rule_id: str = "cold-room-high",
    *,
    above: float = 8.0,
    enabled: bool = True,
    author: str = "alice",
    at_us: int = T0,
) -> RuleVersionRow:
    document = {**COLD_ROOM, "id": rule_id, "enabled": enabled}
    document["condition"] = {"threshold": {"metric": "temperature", "above": above}}
    return RuleVersionRow(
        rule_id=rule_id, document=document, enabled=enabled, author=author, created_us=at_us
    )


def alarm(
    alarm_id: str = "00000000-0000-4000-8000-000000000001",
    *,
    rule_id: str = "cold-room-high",
    device: str = DEVICE,
    raised_us: int = T0,
    severity: str = "major",
) -> AlarmRow:
    return AlarmRow(
        alarm_id=alarm_id,
        rule_id=rule_id,
        device_id=device,
        severity=severity,
        state="active",
        raised_us=raised_us,
    )


def uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def note(
    n: int, *, rule_id: str = "cold-room-high", alarm_id: str | None = None
) -> NotificationEntry:
    return NotificationEntry(
        at_us=T0 + n * S,
        rule_id=rule_id,
        alarm_id=alarm_id,
        kind="webhook" if n % 2 else "email",
        target="https://hooks.example/x" if n % 2 else "ops@example.com",
        outcome="delivered" if n % 3 else "retry",
        attempt=1 + n % 3,
        detail={"n": n, "status": 200, "body": "ok ü", "elapsed_ms": 12.5, "error": None},
    )


def logged(seq: int, e: NotificationEntry) -> NotificationRow:
    return NotificationRow(
        seq=seq,
        at_us=e.at_us,
        rule_id=e.rule_id,
        alarm_id=e.alarm_id,
        kind=e.kind,
        target=e.target,
        outcome=e.outcome,
        attempt=e.attempt,
        detail=e.detail,
    )


# -- rule versions -------------------------------------------------------------------------------


async def test_versions_are_numbered_per_rule_and_the_newest_is_current(store: Store) -> None:
    assert await store.get_rule("cold-room-high") is None
    assert await store.list_rules() == []
    assert await store.rule_history("cold-room-high") == []

    first = rule(at_us=T0)
    assert await store.put_rule_version(replace(first, version=99)) == 1  # version is assigned
    assert await store.put_rule_version(rule("gateway-no-data", author="cli:root")) == 1
    second = rule(above=9.5, enabled=False, author="bob", at_us=T0 + S)
    assert await store.put_rule_version(second) == 2

    current = await store.get_rule("cold-room-high")
    assert current == replace(second, version=2)
    assert current is not None
    assert current.enabled is False  # a bool again, not 0
    assert await store.get_rule("cold-room-high", 1) == replace(first, version=1)
    assert await store.get_rule("cold-room-high", 3) is None
    assert await store.rule_history("cold-room-high") == [
        replace(first, version=1),
        replace(second, version=2),
    ]
    assert [(r.rule_id, r.version) for r in await store.list_rules()] == [
        ("cold-room-high", 2),
        ("gateway-no-data", 1),
    ]


async def test_documents_come_back_as_stored(store: Store) -> None:
    row = RuleVersionRow(
        rule_id="cold-room-high",
        document=COLD_ROOM,
        enabled=True,
        author="alice",
        created_us=T0,
    )
    await store.put_rule_version(row)
    got = await store.get_rule("cold-room-high")
    assert got is not None
    assert got.document == COLD_ROOM
    assert got == replace(row, version=1)


async def test_concurrent_puts_get_distinct_consecutive_versions(
    store: Store, backend_url: str
) -> None:
    """Many writers at once, on this store's connections and on a second store (another
    process's) on the same database: every call gets its own number, with no gap."""
    other = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await other.open()
    try:
        calls = [
            (store if n % 2 else other).put_rule_version(rule(author=f"writer-{n}", at_us=T0 + n))
            for n in range(24)
        ]
        versions = await asyncio.gather(*calls)
    finally:
        await other.close()
    assert sorted(versions) == list(range(1, 25))
    history = await store.rule_history("cold-room-high")
    assert [r.version for r in history] == list(range(1, 25))
    # Each version holds what the call that got its number stored.
    by_author = {r.author: r.version for r in history}
    assert by_author == {f"writer-{n}": v for n, v in enumerate(versions)}
    current = await store.get_rule("cold-room-high")
    assert current is not None
    assert current.version == 24


async def test_a_put_waits_for_a_concurrent_uncommitted_one(store: Store, backend_url: str) -> None:
    """Another writer has drawn version 2 but not committed: a put made meanwhile waits and
    gets 3 (not 2 again); had the other rolled back, it would get 2 (no gap)."""
    await store.put_rule_version(rule())
    draw = (
        "INSERT INTO rules (rule_id, version, deleted_us) VALUES ('cold-room-high', 1, NULL) "
        "ON CONFLICT (rule_id) DO UPDATE SET version = rules.version + 1, deleted_us = NULL "
        "RETURNING version"
    )
    keep = (
        "INSERT INTO rule_versions (rule_id, version, document, enabled, author, created_us) "
        "VALUES ('cold-room-high', 2, '{}', 1, 'other', 0)"
    )
    if backend_url.startswith("sqlite"):
        conn = sqlite3.connect(backend_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        assert conn.execute(draw).fetchall() == [(2,)]
        waiting = asyncio.ensure_future(store.put_rule_version(rule(author="mine")))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        conn.execute(keep)
        conn.execute("COMMIT")
        conn.close()
    else:
        pg = await asyncpg.connect(backend_url)
        try:
            tx = pg.transaction()
            await tx.start()
            assert await pg.fetchval(draw) == 2
            waiting = asyncio.ensure_future(store.put_rule_version(rule(author="mine")))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            await pg.execute(keep)
            await tx.commit()
        finally:
            await pg.close()
    assert await waiting == 3
    history = await store.rule_history("cold-room-high")
    assert [(r.version, r.author) for r in history] == [(1, "alice"), (2, "other"), (3, "mine")]


async def test_a_failed_put_leaves_no_gap(store: Store) -> None:
    await store.put_rule_version(rule())
    # The version row is refused after the number was drawn: the transaction takes the number
    # back, and the next successful put follows the last stored version.
    try:
        await store.put_rule_version(replace(rule(), author=None))  # type: ignore[arg-type]
    except StoreError:
        pass
    else:
        pytest.fail("a version without an author was stored")
    assert await store.put_rule_version(rule(above=10.0)) == 2
    assert [r.version for r in await store.rule_history("cold-room-high")] == [1, 2]


async def test_deleting_a_rule_keeps_its_history_and_a_new_version_revives_it(
    store: Store,
) -> None:
    await store.put_rule_version(rule())
    await store.put_rule_version(rule(above=9.0))
    await store.put_rule_version(rule("gateway-no-data"))
    assert await store.delete_rule("cold-room-high", T0 + HOUR) is True
    assert await store.delete_rule("cold-room-high", T0 + 2 * HOUR) is False  # once
    assert await store.delete_rule("nothing-here", T0) is False

    assert await store.get_rule("cold-room-high") is None
    old = await store.get_rule("cold-room-high", 2)
    assert old is not None
    assert old.deleted_us == T0 + HOUR
    assert [r.rule_id for r in await store.list_rules()] == ["gateway-no-data"]
    listed = await store.list_rules(include_deleted=True)
    assert [(r.rule_id, r.version, r.deleted_us) for r in listed] == [
        ("cold-room-high", 2, T0 + HOUR),
        ("gateway-no-data", 1, None),
    ]
    history = await store.rule_history("cold-room-high")
    assert [(r.version, r.deleted_us) for r in history] == [(1, T0 + HOUR), (2, T0 + HOUR)]

    assert await store.put_rule_version(rule(above=7.0, at_us=T0 + 3 * HOUR)) == 3
    revived = await store.get_rule("cold-room-high")
    assert revived is not None
    assert (revived.version, revived.deleted_us) == (3, None)
    assert len(await store.list_rules()) == 2


# -- rule state ----------------------------------------------------------------------------------


def state(rule_id: str, device: str, n: int) -> RuleStateRow:
    return RuleStateRow(
        rule_id=rule_id,
        device_id=device,
        state={"kind": "threshold", "pending_since_us": T0 + n, "side": "above", "n": [n, 1.5]},
        updated_us=T0 + n,
    )


def key(row: RuleStateRow) -> tuple[str, str]:
    return (row.rule_id, row.device_id)


async def test_rule_states_bulk_upsert_and_reload(store: Store, reopen: Reopen) -> None:
    assert await store.load_rule_states() == []
    await store.put_rule_states([])  # nothing: no error
    rows = [state(f"rule-{r}", f"dev-{d:04d}", r * 1000 + d) for r in range(3) for d in range(700)]
    await store.put_rule_states(rows)
    assert await store.load_rule_states() == sorted(rows, key=key)
    assert await store.load_rule_states("rule-1") == [r for r in rows if r.rule_id == "rule-1"]
    assert await store.load_rule_states("rule-9") == []

    # Replace some, add some, and give one pair twice in a call: the last one wins.
    changed = [
        RuleStateRow("rule-0", "dev-0000", ["a list", None, True], T0 + HOUR),
        RuleStateRow("rule-0", "dev-0001", {"side": "below"}, T0 + HOUR),
        RuleStateRow("rule-0", "dev-0001", {"side": "clear"}, T0 + HOUR + 1),
        RuleStateRow("rule-3", DEVICE, 42, T0),
    ]
    await store.put_rule_states(changed)
    store = await reopen(store)  # a restart resumes from what was stored
    loaded = {key(s): s for s in await store.load_rule_states()}
    assert len(loaded) == 3 * 700 + 1
    assert loaded[("rule-0", "dev-0000")] == changed[0]
    assert loaded[("rule-0", "dev-0001")] == changed[2]
    assert loaded[("rule-3", DEVICE)] == changed[3]
    assert loaded[("rule-2", "dev-0699")] == rows[-1]

    assert await store.delete_rule_states("rule-1") == 700
    assert await store.delete_rule_states("rule-1") == 0
    assert await store.load_rule_states("rule-1") == []
    assert len(await store.load_rule_states()) == 2 * 700 + 1


# -- alarms --------------------------------------------------------------------------------------


async def test_one_open_alarm_per_rule_and_device(store: Store) -> None:
    first = await store.open_alarm(alarm(uuid(1)))
    assert first == alarm(uuid(1))
    # The same pair again: deduplicated, nothing stored.
    assert await store.open_alarm(alarm(uuid(2), raised_us=T0 + S)) is None
    assert await store.get_alarm(uuid(2)) is None
    # Another device, another rule: their own alarms.
    assert await store.open_alarm(alarm(uuid(3), device="dev-2")) is not None
    assert await store.open_alarm(alarm(uuid(4), rule_id="gateway-no-data")) is not None
    # Acknowledged is still open.
    assert await store.transition_alarm(uuid(1), "acknowledged", T0 + 2 * S, "bob", "on it")
    assert await store.open_alarm(alarm(uuid(5), raised_us=T0 + 3 * S)) is None
    # Cleared: a new one opens for the pair.
    assert await store.transition_alarm(uuid(1), "cleared", T0 + 4 * S, "rule:cold-room-high")
    reopened = await store.open_alarm(alarm(uuid(6), raised_us=T0 + 5 * S))
    assert reopened == alarm(uuid(6), raised_us=T0 + 5 * S)
    assert await store.open_alarm(alarm(uuid(7), raised_us=T0 + 6 * S)) is None
    open_now = await store.list_alarms(state="open", limit=10)
    assert sorted(a.alarm_id for a in open_now) == [uuid(3), uuid(4), uuid(6)]


async def test_an_engines_raises_and_clears_are_stored_in_order_in_one_call(
    store: Store,
) -> None:
    """The rule engine's batch: raise, clear and raise again for one pair, a raise for a pair
    that is already open (refused: None) and a clear of an alarm already cleared (None)."""

    def cleared(row: AlarmRow, at_us: int) -> AlarmRow:
        return replace(row, state="cleared", cleared_us=at_us, cleared_by="rule:cold-room-high")

    already = await store.open_alarm(alarm(uuid(9), device="dev-9"))
    assert already is not None
    first, second = alarm(uuid(1)), alarm(uuid(2), raised_us=T0 + 2 * S)
    notified = replace(first, last_notified_us=T0 + 1, notifications=1)
    stored = await store.record_alarm_changes(
        [
            notified,
            cleared(first, T0 + S),
            second,
            alarm(uuid(3), device="dev-9"),
            cleared(first, T0 + 3 * S),
        ]
    )
    assert stored == [notified, cleared(notified, T0 + S), second, None, None]
    assert await store.get_alarm(uuid(3)) is None
    open_now = await store.list_alarms(state="open", limit=10)
    assert sorted(a.alarm_id for a in open_now) == [uuid(2), uuid(9)]
    events = await store.alarm_events(uuid(1))
    assert [(e.state, e.at_us, e.actor) for e in events] == [
        ("active", T0, "rule:cold-room-high"),
        ("cleared", T0 + S, "rule:cold-room-high"),
    ]
    assert await store.record_alarm_changes([]) == []
    with pytest.raises(ValueError, match="not a raise or a clear"):
        await store.record_alarm_changes([replace(first, state="acknowledged")])


async def test_an_alarm_is_stored_as_raised_whatever_the_row_says(store: Store) -> None:
    given = replace(
        alarm(uuid(1)),
        state="cleared",
        acked_us=T0,
        acked_by="x",
        cleared_us=T0,
        cleared_by="y",
        notifications=1,
        last_notified_us=T0,
    )
    opened = await store.open_alarm(given)
    assert opened == replace(alarm(uuid(1)), notifications=1, last_notified_us=T0)
    assert await store.get_alarm(uuid(1)) == opened


async def test_a_repeated_alarm_id_is_an_error_not_a_duplicate(store: Store) -> None:
    await store.open_alarm(alarm(uuid(1)))
    await store.transition_alarm(uuid(1), "cleared", T0 + S, "engine")
    with pytest.raises(StoreError):
        await store.open_alarm(alarm(uuid(1), raised_us=T0 + 2 * S))


async def test_concurrent_raises_store_one_alarm(store: Store, backend_url: str) -> None:
    other = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await other.open()
    try:
        results = await asyncio.gather(
            *((store if n % 2 else other).open_alarm(alarm(uuid(n))) for n in range(16))
        )
    finally:
        await other.close()
    opened = [a for a in results if a is not None]
    assert len(opened) == 1
    assert await store.list_alarms(limit=100) == opened
    assert len(await store.alarm_events(opened[0].alarm_id)) == 1


TRANSITIONS: dict[tuple[AlarmState, AlarmState], bool] = {
    ("active", "active"): False,
    ("active", "acknowledged"): True,
    ("active", "cleared"): True,
    ("acknowledged", "active"): False,
    ("acknowledged", "acknowledged"): False,
    ("acknowledged", "cleared"): True,
    ("cleared", "active"): False,
    ("cleared", "acknowledged"): False,
    ("cleared", "cleared"): False,
}


async def test_the_alarm_transition_table(store: Store) -> None:
    """Every (from, to) pair: allowed moves change the row and add an event; refused ones
    return None and change nothing."""
    paths: dict[AlarmState, list[AlarmState]] = {
        "active": [],
        "acknowledged": ["acknowledged"],
        "cleared": ["cleared"],
    }
    for n, ((source, target), allowed) in enumerate(TRANSITIONS.items()):
        alarm_id = uuid(n)
        opened = await store.open_alarm(alarm(alarm_id, rule_id=f"rule-{n}"))
        assert opened is not None
        for step in paths[source]:
            assert await store.transition_alarm(alarm_id, step, T0 + S, "setup") is not None
        before = await store.get_alarm(alarm_id)
        events_before = await store.alarm_events(alarm_id)
        assert before is not None
        assert before.state == source

        moved = await store.transition_alarm(alarm_id, target, T0 + 2 * S, "bob", "why")
        after = await store.get_alarm(alarm_id)
        events = await store.alarm_events(alarm_id)
        if not allowed:
            assert moved is None, (source, target)
            assert after == before
            assert events == events_before
            continue
        assert moved is not None, (source, target)
        assert moved == after
        assert moved.state == target
        assert [e.state for e in events] == [e.state for e in events_before] + [target]
        assert (events[-1].at_us, events[-1].actor, events[-1].comment) == (
            T0 + 2 * S,
            "bob",
            "why",
        )
        if target == "acknowledged":
            assert (moved.acked_us, moved.acked_by, moved.ack_comment) == (T0 + 2 * S, "bob", "why")
            assert moved.cleared_us is None
        else:
            assert (moved.cleared_us, moved.cleared_by) == (T0 + 2 * S, "bob")
            # Acknowledged before: who acknowledged stays on the row.
            if source == "acknowledged":
                assert (moved.acked_us, moved.acked_by) == (T0 + S, "setup")
    assert await store.transition_alarm(uuid(99), "cleared", T0, "bob") is None


async def test_racing_moves_happen_once(store: Store) -> None:
    await store.open_alarm(alarm(uuid(1)))
    acks = await asyncio.gather(
        *(store.transition_alarm(uuid(1), "acknowledged", T0 + S, f"user-{n}") for n in range(6))
    )
    winners = [a for a in acks if a is not None]
    assert len(winners) == 1
    clears = await asyncio.gather(
        *(store.transition_alarm(uuid(1), "cleared", T0 + 2 * S, f"user-{n}") for n in range(6))
    )
    assert len([c for c in clears if c is not None]) == 1
    events = await store.alarm_events(uuid(1))
    assert [e.state for e in events] == ["active", "acknowledged", "cleared"]
    assert events[1].actor == winners[0].acked_by


async def test_alarm_events_record_the_life_of_an_alarm(store: Store) -> None:
    assert await store.alarm_events(uuid(1)) == []
    await store.open_alarm(alarm(uuid(1), raised_us=T0))
    await store.open_alarm(alarm(uuid(2), device="dev-2", raised_us=T0 + S))
    await store.transition_alarm(uuid(1), "acknowledged", T0 + 10 * S, "alice", "Kühlraum: Tür")
    await store.transition_alarm(uuid(2), "cleared", T0 + 11 * S, "rule:cold-room-high")
    await store.transition_alarm(uuid(1), "cleared", T0 + 12 * S, "rule:cold-room-high", None)
    events = await store.alarm_events(uuid(1))
    assert [(e.alarm_id, e.at_us, e.state, e.actor, e.comment) for e in events] == [
        (uuid(1), T0, "active", "rule:cold-room-high", None),
        (uuid(1), T0 + 10 * S, "acknowledged", "alice", "Kühlraum: Tür"),
        (uuid(1), T0 + 12 * S, "cleared", "rule:cold-room-high", None),
    ]
    assert all(isinstance(e, AlarmEventRow) for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert [e.state for e in await store.alarm_events(uuid(2))] == ["active", "cleared"]
    final = await store.get_alarm(uuid(1))
    assert final == replace(
        alarm(uuid(1)),
        state="cleared",
        acked_us=T0 + 10 * S,
        acked_by="alice",
        ack_comment="Kühlraum: Tür",
        cleared_us=T0 + 12 * S,
        cleared_by="rule:cold-room-high",
    )


async def test_notifications_are_counted_and_the_first_escalation_kept(store: Store) -> None:
    await store.open_alarm(alarm(uuid(1)))
    once = await store.mark_notified(uuid(1), T0 + S)
    assert once is not None
    assert (once.notifications, once.last_notified_us, once.escalated_us) == (1, T0 + S, None)
    await store.mark_notified(uuid(1), T0 + HOUR)
    escalated = await store.mark_notified(uuid(1), T0 + 2 * HOUR, escalated=True)
    assert escalated is not None
    assert (escalated.notifications, escalated.escalated_us) == (3, T0 + 2 * HOUR)
    again = await store.mark_notified(uuid(1), T0 + 3 * HOUR, escalated=True)
    assert again is not None
    assert (again.notifications, again.last_notified_us, again.escalated_us) == (
        4,
        T0 + 3 * HOUR,
        T0 + 2 * HOUR,
    )
    # A clear is notified too.
    await store.transition_alarm(uuid(1), "cleared", T0 + 4 * HOUR, "engine")
    cleared = await store.mark_notified(uuid(1), T0 + 4 * HOUR)
    assert cleared is not None
    assert (cleared.state, cleared.notifications) == ("cleared", 5)
    assert await store.get_alarm(uuid(1)) == cleared
    assert await store.mark_notified(uuid(99), T0) is None


async def test_alarms_list_newest_first_filtered_and_paged(store: Store) -> None:
    made: list[AlarmRow] = []
    for n in range(30):
        a = alarm(
            uuid(n),
            rule_id=f"rule-{n % 6}",  # with n % 5, 30 distinct pairs: all open at once
            device=f"dev-{n % 5}",
            raised_us=T0 + (n // 2) * S,  # pairs share a time: the id orders them
        )
        opened = await store.open_alarm(a)
        assert opened is not None
        if n % 4 == 0:
            opened = await store.transition_alarm(uuid(n), "cleared", T0 + HOUR, "engine")
        elif n % 4 == 1:
            opened = await store.transition_alarm(uuid(n), "acknowledged", T0 + HOUR, "bob")
        assert opened is not None
        made.append(opened)
    newest = sorted(made, key=lambda a: (a.raised_us, a.alarm_id), reverse=True)
    assert await store.list_alarms(limit=100) == newest

    pages: list[list[AlarmRow]] = []
    before: tuple[int, str] | None = None
    while page := await store.list_alarms(limit=7, before=before):
        pages.append(page)
        before = (page[-1].raised_us, page[-1].alarm_id)
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert [a for p in pages for a in p] == newest

    def where(**kw: object) -> list[AlarmRow]:
        return [a for a in newest if all(getattr(a, k) == v for k, v in kw.items())]

    assert await store.list_alarms(state="cleared", limit=100) == where(state="cleared")
    assert await store.list_alarms(state="active", limit=100) == where(state="active")
    assert await store.list_alarms(state="open", limit=100) == [
        a for a in newest if a.state != "cleared"
    ]
    assert await store.list_alarms(device="dev-2", limit=100) == where(device_id="dev-2")
    assert await store.list_alarms(rule_id="rule-1", limit=100) == where(rule_id="rule-1")
    both = where(rule_id="rule-1", device_id="dev-2")
    assert both
    assert await store.list_alarms(rule_id="rule-1", device="dev-2", limit=100) == both
    some = where(state="acknowledged", rule_id="rule-1")
    assert len(some) == 3
    page = await store.list_alarms(
        state="acknowledged",
        rule_id="rule-1",
        limit=1,
        before=(some[0].raised_us, some[0].alarm_id),
    )
    assert page == some[1:2]
    assert await store.list_alarms(device="dev-9", limit=10) == []


# -- notification log ----------------------------------------------------------------------------


async def test_notification_log_appends_and_pages_newest_first(
    store: Store, reopen: Reopen
) -> None:
    assert await store.list_notification_log(limit=10) == []
    entries: dict[int, NotificationEntry] = {}
    for n in range(30):
        e = note(n, rule_id=f"rule-{n % 2}", alarm_id=uuid(n % 3) if n % 5 else None)
        entries[await store.append_notification_log(e)] = e
    newest_first = sorted(entries, reverse=True)
    assert len(newest_first) == 30

    pages: list[list[NotificationRow]] = []
    before: int | None = None
    while page := await store.list_notification_log(limit=8, before_seq=before):
        pages.append(page)
        before = page[-1].seq
    assert [len(p) for p in pages] == [8, 8, 8, 6]
    assert [r for p in pages for r in p] == [logged(s, entries[s]) for s in newest_first]

    ones = await store.list_notification_log(limit=100, rule_id="rule-1")
    assert [r.seq for r in ones] == [s for s in newest_first if entries[s].rule_id == "rule-1"]
    for_alarm = await store.list_notification_log(limit=100, alarm_id=uuid(2))
    assert [r.seq for r in for_alarm] == [s for s in newest_first if entries[s].alarm_id == uuid(2)]
    assert await store.list_notification_log(limit=5, before_seq=min(entries)) == []

    store = await reopen(store)
    seq = await store.append_notification_log(note(99))
    assert seq > max(entries)
    assert (await store.list_notification_log(limit=1))[0] == logged(seq, note(99))
    # Several in one transaction: in order, seqs ascending.
    seqs = await store.append_notification_logs([note(100), note(101), note(102)])
    assert seqs == sorted(seqs)
    assert seqs[0] > seq
    assert await store.list_notification_log(limit=3) == [
        logged(s, note(n)) for s, n in zip(reversed(seqs), (102, 101, 100), strict=True)
    ]
    assert await store.append_notification_logs([]) == []


# -- schema --------------------------------------------------------------------------------------


def test_the_migration_numbers_per_engine() -> None:
    def number(migrations: list[tuple[int, str, str]]) -> list[int]:
        return [v for v, description, _ in migrations if description.startswith("rules and")]

    assert number(SQLITE_MIGRATIONS) == [7]
    assert number(POSTGRES_MIGRATIONS) == [6]


async def test_the_migration_adds_the_tables_to_an_existing_database(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at the schema before this migration, with data in it, is brought up to
    date: the data stays and the new tables work at once."""
    engine = (
        "fieldhub.store.sqlite" if backend_url.startswith("sqlite") else "fieldhub.store.postgres"
    )
    full = importlib.import_module(engine).MIGRATIONS
    at = next(i for i, (_, description, _) in enumerate(full) if description.startswith("rules"))
    monkeypatch.setattr(f"{engine}.MIGRATIONS", schema_before(full, at))
    old = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await old.open()
    try:
        await old.write_batch(WriteBatch(decoded=[msg("dev-1", T0, [("temperature", T0, 21.5)])]))
        audit = AuditEntry(
            at_us=T0,
            actor="alice",
            action="login",
            target=None,
            address=None,
            outcome="ok",
            detail={},
        )
        assert await old.append_audit(audit) == 1
    finally:
        await old.close()
    monkeypatch.setattr(f"{engine}.MIGRATIONS", full)

    new = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await new.open()
    try:
        assert [m.name for m in await new.device_metrics("dev-1")] == ["temperature"]
        assert [r.seq for r in await new.list_audit(limit=5)] == [1]
        assert await new.list_rules() == []
        assert await new.put_rule_version(rule()) == 1
        await new.put_rule_states([state("cold-room-high", "dev-1", 1)])
        assert await new.open_alarm(alarm(uuid(1), device="dev-1")) is not None
        assert await new.open_alarm(alarm(uuid(2), device="dev-1")) is None
        assert await new.append_notification_log(note(1)) == 1
        assert await new.load_rule_states() == [state("cold-room-high", "dev-1", 1)]
    finally:
        await new.close()


def test_migrate_copies_every_rule_table() -> None:
    copied = {t.name for t in TABLES}
    assert copied >= set(RULE_TABLES)
    assert not NOT_COPIED & set(RULE_TABLES)
    serial = {t.name: t.serial for t in TABLES}
    assert (serial["alarm_events"], serial["notification_log"]) == ("seq", "seq")


async def test_fieldhub_migrate_carries_the_rule_rows_to_postgresql(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    source_url = f"sqlite:///{tmp_path}/fieldhub.db"
    target_url = postgres_server.new_database()
    source = open_store(source_url, stale_after_s=STALE_AFTER_S)
    await source.open()
    try:
        await source.put_rule_version(replace(rule(), document=COLD_ROOM))
        await source.put_rule_version(rule(above=9.0, enabled=False, at_us=T0 + S))
        await source.put_rule_version(rule("gateway-no-data"))
        await source.put_rule_version(rule("old-rule"))
        await source.delete_rule("old-rule", T0 + HOUR)
        await source.put_rule_states(
            [state("cold-room-high", f"dev-{d}", d) for d in range(5)]
            + [RuleStateRow("gateway-no-data", DEVICE, {"last_us": None, "x": "ü"}, T0)]
        )
        await source.open_alarm(alarm(uuid(1)))
        await source.transition_alarm(uuid(1), "acknowledged", T0 + S, "alice", "looking")
        await source.mark_notified(uuid(1), T0 + 2 * S, escalated=True)
        await source.open_alarm(alarm(uuid(2), device="dev-2", severity="critical"))
        await source.transition_alarm(uuid(2), "cleared", T0 + 3 * S, "engine")
        await source.open_alarm(alarm(uuid(3), device="dev-2", raised_us=T0 + 4 * S))
        for n in range(4):
            await source.append_notification_log(note(n, alarm_id=uuid(1) if n else None))
        before = (
            await source.list_rules(include_deleted=True),
            [await source.rule_history(r) for r in ("cold-room-high", "old-rule")],
            await source.load_rule_states(),
            await source.list_alarms(limit=100),
            [await source.alarm_events(uuid(n)) for n in (1, 2, 3)],
            await source.list_notification_log(limit=100),
        )
    finally:
        await source.close()
    # The newest event and log entry deleted: their seqs must not be handed out again.
    conn = sqlite3.connect(tmp_path / "fieldhub.db")
    with conn:
        last_event = conn.execute("SELECT max(seq) FROM alarm_events").fetchone()[0]
        conn.execute("DELETE FROM alarm_events WHERE seq = ?", (last_event,))
        conn.execute("DELETE FROM notification_log WHERE seq = 4")
    conn.close()

    result = await migrate_sqlite_to_postgres(source_url, target_url)
    assert result.ok, result
    counts = {c.table: (c.source, c.target) for c in result.counts}
    assert counts["rules"] == (3, 3)
    assert counts["rule_versions"] == (4, 4)
    assert counts["rule_state"] == (6, 6)
    assert counts["alarms"] == (3, 3)
    assert counts["alarm_events"] == (4, 4)
    assert counts["notification_log"] == (3, 3)

    target = open_store(target_url, stale_after_s=STALE_AFTER_S)
    await target.open()
    try:
        assert await target.list_rules(include_deleted=True) == before[0]
        assert [await target.rule_history(r) for r in ("cold-room-high", "old-rule")] == before[1]
        assert await target.load_rule_states() == before[2]
        assert await target.list_alarms(limit=100) == before[3]
        events = [await target.alarm_events(uuid(n)) for n in (1, 2, 3)]
        assert events == [before[4][0], before[4][1], []]  # alarm 3's raise was deleted
        assert await target.list_notification_log(limit=100) == before[5][1:]
        # Numbering and the one-open-alarm rule work on the copy.
        assert await target.put_rule_version(rule(above=5.0)) == 3
        assert await target.put_rule_version(rule("old-rule")) == 2
        assert await target.open_alarm(alarm(uuid(4))) is None  # uuid(1) is still open
        assert await target.open_alarm(alarm(uuid(5), device="dev-2")) is None
        cleared = await target.transition_alarm(uuid(1), "cleared", T0 + HOUR, "alice")
        assert cleared is not None
        assert await target.open_alarm(alarm(uuid(6), raised_us=T0 + HOUR)) is not None
        assert [e.seq for e in await target.alarm_events(uuid(6))] == [last_event + 2]
        assert await target.append_notification_log(note(9)) == 5
    finally:
        await target.close()
    pg = await asyncpg.connect(target_url)
    try:
        assert await pg.fetchval("SELECT count(*) FROM alarm_events") == 6
    finally:
        await pg.close()


@pytest.mark.parametrize("table", RULE_TABLES)
async def test_every_rule_table_exists_on_both_engines(store: Store, table: str) -> None:
    """Each table is made by the engine's migration (and empty in a new database)."""
    rows = await store._read(_count(table))  # type: ignore[attr-defined]
    assert rows == 0


def _count(table: str) -> Generator[Op, list[Any], int]:
    rows = yield Query(f"SELECT count(*) FROM {table}")
    return int(rows[0][0])
