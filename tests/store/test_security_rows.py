"""The security tables (issue 15) on both engines: users, sessions, API tokens, the audit log
and device credentials, through the Store interface; the migration that adds them to an
existing database; and `fieldhub migrate` carrying them (all but sessions) to PostgreSQL."""

from __future__ import annotations

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
from fieldhub.store.types import (
    ApiTokenRow,
    AuditEntry,
    AuditRow,
    DeviceCredentialRow,
    SessionRow,
    UserRow,
)
from support.postgres import PostgresServer
from support.store_rows import T0, S, msg, schema_before

Reopen = Callable[[Store], Awaitable[Store]]
STALE_AFTER_S = {"native": 120}
HOUR = 3600 * S
SECURITY_TABLES = ("users", "sessions", "api_tokens", "audit_log", "device_credentials")


def user(name: str = "alice", *, role: str = "admin", at_us: int = T0) -> UserRow:
    return UserRow(
        username=name,
        role=role,
        password_hash=f"$argon2id$v=19$m=65536,t=3,p=4$c2FsdA${name}",
        created_us=at_us,
        updated_us=at_us,
    )


def session(
    token_hash: str = "a" * 64,
    *,
    username: str = "alice",
    last_seen_us: int = T0,
    expires_us: int = T0 + 168 * HOUR,
    address: str | None = "192.0.2.7",
) -> SessionRow:
    return SessionRow(
        token_hash=token_hash,
        username=username,
        csrf_token=f"csrf-{token_hash[:8]}",
        created_us=T0,
        last_seen_us=last_seen_us,
        expires_us=expires_us,
        address=address,
    )


def token(token_id: str = "0123456789ab", *, created_us: int = T0) -> ApiTokenRow:
    return ApiTokenRow(
        token_id=token_id,
        name=f"ci {token_id}",
        token_hash=f"{token_id:0<64}",
        role="operator",
        created_by="alice",
        created_us=created_us,
        expires_us=created_us + 720 * HOUR,
    )


def entry(
    n: int, *, actor: str = "alice", action: str = "login", detail: dict[str, object] | None = None
) -> AuditEntry:
    return AuditEntry(
        at_us=T0 + n * S,
        actor=actor,
        action=action,
        target=f"user:{actor}",
        address="192.0.2.7",
        outcome="ok",
        detail={"n": n} if detail is None else detail,
    )


def credential(device: str = "esp32-01", *, at_us: int = T0) -> DeviceCredentialRow:
    return DeviceCredentialRow(
        device_id=device,
        password_hash=f"$7$101$c2FsdA==${device}",
        created_us=at_us,
        rotated_us=at_us,
    )


# -- users ---------------------------------------------------------------------------------------


async def test_users_round_trip_upsert_list_count_and_delete(store: Store) -> None:
    assert await store.count_users() == 0
    assert await store.get_user("alice") is None
    alice = user("alice")
    bob = replace(user("Bob", role="viewer"), disabled=True)
    await store.put_user(alice)
    await store.put_user(bob)
    assert await store.get_user("alice") == alice
    assert await store.get_user("Bob") == bob  # disabled comes back as a bool
    assert await store.count_users() == 2
    # Bytewise on both engines: upper case first.
    assert [u.username for u in await store.list_users()] == ["Bob", "alice"]

    changed = replace(alice, role="operator", password_hash="$argon2id$new", updated_us=T0 + S)
    await store.put_user(changed)
    assert await store.get_user("alice") == changed
    assert await store.count_users() == 2
    await store.put_user(replace(bob, disabled=False))
    assert (await store.get_user("Bob")) == replace(bob, disabled=False)

    assert await store.delete_user("Bob") is True
    assert await store.delete_user("Bob") is False
    assert await store.delete_user("nobody") is False
    assert await store.list_users() == [changed]


async def test_deleting_a_user_ends_their_sessions_only(store: Store) -> None:
    await store.put_user(user("alice"))
    await store.put_user(user("bob"))
    await store.insert_session(session("a" * 64, username="alice"))
    await store.insert_session(session("b" * 64, username="alice"))
    await store.insert_session(session("c" * 64, username="bob"))
    await store.insert_api_token(token())  # created by alice: stays
    assert await store.delete_user("alice")
    assert await store.get_session("a" * 64) is None
    assert await store.get_session("b" * 64) is None
    assert await store.get_session("c" * 64) is not None
    assert await store.get_api_token("0123456789ab") == token()


# -- sessions ------------------------------------------------------------------------------------


async def test_sessions_round_trip_and_a_repeated_hash_is_refused(store: Store) -> None:
    row = session()
    await store.insert_session(row)
    await store.insert_session(session("b" * 64, address=None))
    assert await store.get_session("a" * 64) == row
    assert await store.get_session("b" * 64) == session("b" * 64, address=None)
    assert await store.get_session("f" * 64) is None
    with pytest.raises(StoreError, match="alice"):
        await store.insert_session(replace(row, csrf_token="other"))
    assert await store.get_session("a" * 64) == row


async def test_touching_a_session_never_moves_it_back(store: Store) -> None:
    await store.insert_session(session(last_seen_us=T0))
    await store.touch_session("a" * 64, T0 + 10 * S)
    await store.touch_session("a" * 64, T0 + 5 * S)  # a slower request finishing later
    got = await store.get_session("a" * 64)
    assert got is not None
    assert got.last_seen_us == T0 + 10 * S
    await store.touch_session("f" * 64, T0)  # unknown: nothing, no error
    assert await store.get_session("f" * 64) is None


async def test_sessions_are_deleted_one_by_user_and_when_expired(store: Store) -> None:
    now = T0 + 24 * HOUR
    idle_before = now - 12 * HOUR
    rows = {
        "1" * 64: session("1" * 64, last_seen_us=now, expires_us=now),  # absolute end reached
        "2" * 64: session("2" * 64, last_seen_us=now, expires_us=now + 1),  # alive
        "3" * 64: session("3" * 64, last_seen_us=idle_before - 1, expires_us=now + HOUR),  # idle
        "4" * 64: session("4" * 64, last_seen_us=idle_before, expires_us=now + HOUR),  # alive
        "5" * 64: session("5" * 64, username="bob", last_seen_us=0, expires_us=0),  # both
    }
    for row in rows.values():
        await store.insert_session(row)
    assert await store.delete_expired_sessions(now, idle_before) == 3
    assert [h for h in rows if await store.get_session(h) is not None] == ["2" * 64, "4" * 64]
    assert await store.delete_expired_sessions(now, idle_before) == 0

    await store.insert_session(session("6" * 64, username="bob"))
    await store.delete_session("2" * 64)
    await store.delete_session("2" * 64)  # again: nothing, no error
    assert await store.get_session("2" * 64) is None
    assert await store.delete_user_sessions("alice") == 1
    assert await store.delete_user_sessions("alice") == 0
    assert await store.get_session("6" * 64) is not None


# -- API tokens ----------------------------------------------------------------------------------


async def test_api_tokens_round_trip_and_list_oldest_first(store: Store) -> None:
    first = token("0000000000ff", created_us=T0)
    second = replace(token("00000000000a", created_us=T0 + S), expires_us=None)
    same_time = token("0000000000aa", created_us=T0)
    for row in (second, first, same_time):
        await store.insert_api_token(row)
    assert await store.get_api_token("0000000000ff") == first
    assert await store.get_api_token("00000000000a") == second
    assert await store.get_api_token("ffffffffffff") is None
    assert await store.list_api_tokens() == [same_time, first, second]


async def test_a_taken_token_id_is_refused_and_the_held_token_stays(store: Store) -> None:
    held = token()
    await store.insert_api_token(held)
    with pytest.raises(StoreError, match="0123456789ab"):
        await store.insert_api_token(replace(held, token_hash="f" * 64, role="admin"))
    assert await store.list_api_tokens() == [held]


async def test_revoking_a_token_happens_once(store: Store) -> None:
    await store.insert_api_token(token())
    assert await store.revoke_api_token("0123456789ab", T0 + HOUR) is True
    assert await store.revoke_api_token("0123456789ab", T0 + 2 * HOUR) is False
    assert await store.revoke_api_token("ffffffffffff", T0 + HOUR) is False
    got = await store.get_api_token("0123456789ab")
    assert got == replace(token(), revoked_us=T0 + HOUR)


async def test_touching_a_token_records_its_latest_use(store: Store) -> None:
    await store.insert_api_token(token())
    await store.touch_api_token("0123456789ab", T0 + 10 * S)
    got = await store.get_api_token("0123456789ab")
    assert got is not None
    assert got.last_used_us == T0 + 10 * S
    await store.touch_api_token("0123456789ab", T0 + 5 * S)
    await store.touch_api_token("ffffffffffff", T0)  # unknown: nothing
    got = await store.get_api_token("0123456789ab")
    assert got is not None
    assert got.last_used_us == T0 + 10 * S
    await store.touch_api_token("0123456789ab", T0 + 20 * S)
    got = await store.get_api_token("0123456789ab")
    assert got is not None
    assert got.last_used_us == T0 + 20 * S


# -- audit log -----------------------------------------------------------------------------------


def stored(seq: int, e: AuditEntry) -> AuditRow:
    return AuditRow(
        seq=seq,
        at_us=e.at_us,
        actor=e.actor,
        action=e.action,
        target=e.target,
        address=e.address,
        outcome=e.outcome,
        detail=e.detail,
    )


async def test_audit_entries_round_trip_newest_first(store: Store) -> None:
    assert await store.list_audit(limit=10) == []
    detail: dict[str, object] = {
        "device": "esp32-01",
        "params": {"position": 40, "speed": [1, 2.5, None], "label": "Fenster ö"},
        "ok": True,
    }
    entries = [
        entry(0),
        replace(entry(1, action="command.send", detail=detail), target=None, address=None),
        replace(entry(2, actor="anonymous", action="login_failed"), outcome="denied"),
        replace(entry(3, detail={}), at_us=T0),  # the same time as the first: seq orders
    ]
    seqs = [await store.append_audit(e) for e in entries]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 4
    assert await store.list_audit(limit=10) == [
        stored(s, e) for s, e in reversed(list(zip(seqs, entries, strict=True)))
    ]


async def test_audit_pages_and_filters(store: Store) -> None:
    actors = ["alice", "bob", "token:0123456789ab"]
    actions = ["login", "command.send"]
    seqs: dict[int, AuditEntry] = {}
    for n in range(30):
        e = entry(n, actor=actors[n % 3], action=actions[n % 2])
        seqs[await store.append_audit(e)] = e
    newest_first = sorted(seqs, reverse=True)

    pages: list[list[AuditRow]] = []
    before: int | None = None
    while page := await store.list_audit(limit=7, before_seq=before):
        pages.append(page)
        before = page[-1].seq
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert [r.seq for p in pages for r in p] == newest_first

    bobs = await store.list_audit(limit=100, actor="bob")
    assert [r.seq for r in bobs] == [s for s in newest_first if seqs[s].actor == "bob"]
    sends = await store.list_audit(limit=100, action="command.send")
    assert [r.seq for r in sends] == [s for s in newest_first if seqs[s].action == "command.send"]
    both = [s for s in newest_first if seqs[s].actor == "bob" and seqs[s].action == "login"]
    assert len(both) == 5
    page = await store.list_audit(limit=2, actor="bob", action="login", before_seq=both[1])
    assert [r.seq for r in page] == both[2:4]
    assert all(isinstance(r, AuditRow) and r.detail == {"n": r.at_us // S - T0 // S} for r in page)
    assert await store.list_audit(limit=5, actor="nobody") == []
    assert await store.list_audit(limit=5, before_seq=min(seqs)) == []


async def test_audit_seqs_continue_after_a_reopen(store: Store, reopen: Reopen) -> None:
    first = await store.append_audit(entry(0))
    store = await reopen(store)
    second = await store.append_audit(entry(1))
    assert second > first
    assert [r.seq for r in await store.list_audit(limit=5)] == [second, first]


# -- device credentials --------------------------------------------------------------------------


async def test_device_credentials_round_trip_without_a_device(store: Store) -> None:
    """A device is provisioned before it ever reports: no devices row needed."""
    rows = [credential("esp32-01"), credential("ESP32-02"), credential("3C:E9:0E:72:12:4C")]
    for row in rows:
        await store.put_device_credential(row)
    assert await store.get_device_credential("esp32-01") == rows[0]
    assert await store.get_device_credential("esp32-99") is None
    # Bytewise by id on both engines.
    assert [c.device_id for c in await store.list_device_credentials()] == [
        "3C:E9:0E:72:12:4C",
        "ESP32-02",
        "esp32-01",
    ]
    assert (
        await store.list_devices(
            profile=None, presence=None, search=None, limit=10, after=None, now_us=T0
        )
        == []
    )


async def test_revoking_a_device_credential_and_putting_it_back(store: Store) -> None:
    await store.write_batch(WriteBatch(decoded=[msg("esp32-01", T0)]))  # a known device too
    original = credential("esp32-01")
    await store.put_device_credential(original)
    assert await store.revoke_device_credential("esp32-01", T0 + HOUR) is True
    assert await store.revoke_device_credential("esp32-01", T0 + 2 * HOUR) is False
    assert await store.revoke_device_credential("esp32-99", T0 + HOUR) is False
    revoked = await store.get_device_credential("esp32-01")
    assert revoked == replace(original, revoked_us=T0 + HOUR)

    # Rotating puts a new hash: active again, whatever the row passed says about revocation.
    assert revoked is not None
    rotated = replace(revoked, password_hash="$7$101$bmV3$new", rotated_us=T0 + 3 * HOUR)
    await store.put_device_credential(rotated)
    assert await store.get_device_credential("esp32-01") == replace(rotated, revoked_us=None)
    assert await store.list_device_credentials() == [replace(rotated, revoked_us=None)]
    assert await store.revoke_device_credential("esp32-01", T0 + 4 * HOUR) is True


# -- schema --------------------------------------------------------------------------------------


async def test_the_migration_adds_the_tables_to_an_existing_database(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at the schema before this migration, with data, is brought up to date: the
    data stays and the new tables work at once."""
    engine = (
        "fieldhub.store.sqlite" if backend_url.startswith("sqlite") else "fieldhub.store.postgres"
    )
    full = importlib.import_module(engine).MIGRATIONS
    # The schema as it was just before this migration (later ones come after it again).
    at = next(i for i, (_, description, _) in enumerate(full) if "security" in description)
    monkeypatch.setattr(f"{engine}.MIGRATIONS", schema_before(full, at))
    old = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await old.open()
    try:
        await old.write_batch(WriteBatch(decoded=[msg("dev-1", T0, [("temperature", T0, 21.5)])]))
    finally:
        await old.close()
    monkeypatch.setattr(f"{engine}.MIGRATIONS", full)

    new = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await new.open()
    try:
        assert [m.name for m in await new.device_metrics("dev-1")] == ["temperature"]
        assert await new.count_users() == 0
        await new.put_user(user())
        await new.put_device_credential(credential("dev-1"))
        assert await new.append_audit(entry(0)) == 1
        assert await new.get_user("alice") == user()
        assert await new.get_device_credential("dev-1") == credential("dev-1")
    finally:
        await new.close()


def test_migrate_copies_every_security_table_but_sessions() -> None:
    copied = {t.name for t in TABLES}
    assert copied >= {"users", "api_tokens", "audit_log", "device_credentials"}
    assert "sessions" in NOT_COPIED
    assert "sessions" not in copied


async def test_fieldhub_migrate_carries_the_security_rows_to_postgresql(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    source_url = f"sqlite:///{tmp_path}/fieldhub.db"
    target_url = postgres_server.new_database()
    source = open_store(source_url, stale_after_s=STALE_AFTER_S)
    await source.open()
    try:
        await source.put_user(user("alice"))
        await source.put_user(replace(user("bob", role="viewer"), disabled=True))
        await source.insert_session(session())
        await source.insert_api_token(token())
        await source.revoke_api_token("0123456789ab", T0 + HOUR)
        await source.insert_api_token(token("abcdefabcdef", created_us=T0 + S))
        for n in range(4):
            await source.append_audit(entry(n, detail={"n": n, "nested": {"ü": [1, None]}}))
        await source.put_device_credential(credential("esp32-01"))
        await source.put_device_credential(credential("esp32-02"))
        await source.revoke_device_credential("esp32-02", T0 + HOUR)
        before = (
            await source.list_users(),
            await source.list_api_tokens(),
            await source.list_audit(limit=100),
            await source.list_device_credentials(),
        )
    finally:
        await source.close()
    # The newest audit entry deleted: its seq must not be handed out again after the move.
    conn = sqlite3.connect(tmp_path / "fieldhub.db")
    with conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 4")
    conn.close()

    result = await migrate_sqlite_to_postgres(source_url, target_url)
    assert result.ok, result
    counts = {c.table: (c.source, c.target) for c in result.counts}
    assert counts["users"] == (2, 2)
    assert counts["audit_log"] == (3, 3)
    assert "sessions" not in counts

    target = open_store(target_url, stale_after_s=STALE_AFTER_S)
    await target.open()
    try:
        assert await target.list_users() == before[0]
        assert await target.list_api_tokens() == before[1]
        assert await target.list_audit(limit=100) == before[2][1:]
        assert await target.list_device_credentials() == before[3]
        assert await target.get_session("a" * 64) is None  # people sign in again
        assert await target.append_audit(entry(9)) == 5
    finally:
        await target.close()
    pg = await asyncpg.connect(target_url)
    try:
        assert await pg.fetchval("SELECT count(*) FROM sessions") == 0
    finally:
        await pg.close()


@pytest.mark.parametrize("table", SECURITY_TABLES)
async def test_every_security_table_exists_on_both_engines(store: Store, table: str) -> None:
    """Each table is made by the engine's migration (and empty in a new database)."""
    rows = await store._read(_count(table))  # type: ignore[attr-defined]
    assert rows == 0


def _count(table: str) -> Generator[Op, list[Any], int]:
    rows = yield Query(f"SELECT count(*) FROM {table}")
    return int(rows[0][0])
