"""AuthService over a real SQLite store, on a manual clock: sessions, tokens, setup, users."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldhub.clock import ManualClock
from fieldhub.errors import Conflict, Forbidden, Throttled, Unauthenticated
from fieldhub.security.passwords import WeakPassword
from fieldhub.security.principal import Principal
from fieldhub.security.roles import Role
from fieldhub.security.service import AuthService
from fieldhub.security.tokens import hash_secret
from fieldhub.store.open import open_store
from fieldhub.store.types import UserRow

PASSWORD = "a long enough password"
ROOT = Principal(name="root-admin", role=Role.ADMIN, kind="user")


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[AuthService, ManualClock]]:
    store = open_store(f"sqlite:///{tmp_path / 'auth.db'}")
    await store.open()
    clock = ManualClock()
    auth = AuthService(store, enabled=True, clock=clock)
    try:
        yield auth, clock
    finally:
        await store.close()


async def test_setup_token_creates_the_first_admin_once(
    service: tuple[AuthService, ManualClock],
) -> None:
    auth, _ = service
    await auth.start()
    token = auth.setup_url_token
    assert token is not None
    assert auth.setup_pending
    with pytest.raises(Forbidden):
        await auth.setup_admin("wrong", "alice", PASSWORD, address="10.0.0.5")
    with pytest.raises(WeakPassword):
        await auth.setup_admin(token, "alice", "change-me", address="10.0.0.5")
    admin = await auth.setup_admin(token, "alice", PASSWORD, address="10.0.0.5")
    assert admin.role is Role.ADMIN
    assert auth.setup_url_token is None
    with pytest.raises(Forbidden):
        await auth.setup_admin(token, "mallory", PASSWORD, address="10.0.0.6")
    assert [u.username for u in await auth.list_users()] == ["alice"]
    # A restart with a user in the database issues no token.
    again = AuthService(auth.store, enabled=True, clock=auth.clock)
    await again.start()
    assert again.setup_url_token is None
    entries = await auth.store.list_audit(limit=10, action="setup")
    assert [(e.actor, e.outcome, e.address) for e in entries] == [
        ("anonymous", "denied", "10.0.0.6"),
        ("alice", "ok", "10.0.0.5"),
        ("anonymous", "denied", "10.0.0.5"),
    ]


async def test_no_setup_token_in_demo_mode(service: tuple[AuthService, ManualClock]) -> None:
    auth, _ = service
    demo = AuthService(auth.store, enabled=False)
    await demo.start()
    assert demo.setup_url_token is None


async def test_sessions_end_when_idle_or_old_and_last_seen_is_written_once_a_minute(
    service: tuple[AuthService, ManualClock],
) -> None:
    auth, clock = service
    await auth.create_user(ROOT, "bob", PASSWORD, Role.OPERATOR, address=None)
    cookie, row = await auth.login("bob", PASSWORD, address="10.0.0.7")
    assert row.token_hash == hash_secret(cookie)
    assert cookie not in repr(row)
    principal = await auth.principal_for_session(cookie)
    assert principal == Principal(
        name="bob", role=Role.OPERATOR, kind="user", csrf_token=row.csrf_token
    )
    clock.advance(30)
    await auth.principal_for_session(cookie)
    stored = await auth.store.get_session(row.token_hash)
    assert stored is not None
    assert stored.last_seen_us == row.last_seen_us  # under a minute: not written
    clock.advance(31)
    await auth.principal_for_session(cookie)
    stored = await auth.store.get_session(row.token_hash)
    assert stored is not None
    assert stored.last_seen_us == clock.now_us()
    # Idle for 12 h: ended.
    clock.advance(12 * 3600)
    assert await auth.principal_for_session(cookie) is None
    assert await auth.store.get_session(row.token_hash) is None
    # Active, but 7 days old: ended.
    cookie, row = await auth.login("bob", PASSWORD, address="10.0.0.7")
    for _ in range(20):
        clock.advance(11 * 3600)
        if await auth.principal_for_session(cookie) is None:
            break
    assert clock.now_us() >= row.expires_us
    assert await auth.principal_for_session(cookie) is None


async def test_housekeeping_deletes_expired_sessions(
    service: tuple[AuthService, ManualClock],
) -> None:
    auth, clock = service
    await auth.create_user(ROOT, "bob", PASSWORD, Role.VIEWER, address=None)
    _, old = await auth.login("bob", PASSWORD, address=None)
    clock.advance(13 * 3600)
    _, fresh = await auth.login("bob", PASSWORD, address=None)
    assert await auth.expire_sessions() == 1
    assert await auth.store.get_session(old.token_hash) is None
    assert await auth.store.get_session(fresh.token_hash) is not None


async def test_role_changes_and_disabling_take_effect_at_once(
    service: tuple[AuthService, ManualClock],
) -> None:
    auth, _ = service
    await auth.create_user(ROOT, "root-admin", PASSWORD + "!", Role.ADMIN, address=None)
    await auth.create_user(ROOT, "bob", PASSWORD, Role.OPERATOR, address=None)
    cookie, _ = await auth.login("bob", PASSWORD, address=None)
    token, _ = await auth.create_token(
        Principal(name="bob", role=Role.OPERATOR, kind="user"),
        name="bob's script",
        role=Role.VIEWER,
        expires_us=None,
        address=None,
    )
    await auth.update_user(ROOT, "bob", role=Role.VIEWER, address=None)
    principal = await auth.principal_for_session(cookie)
    assert principal is not None
    assert principal.role is Role.VIEWER
    await auth.update_user(ROOT, "bob", disabled=True, address=None)
    assert await auth.principal_for_session(cookie) is None
    assert await auth.principal_for_token(token) is None  # revoked with its maker
    with pytest.raises(Unauthenticated):
        await auth.login("bob", PASSWORD, address=None)


async def test_the_last_admin_stays(service: tuple[AuthService, ManualClock]) -> None:
    auth, _ = service
    await auth.create_user(ROOT, "root-admin", PASSWORD, Role.ADMIN, address=None)
    with pytest.raises(Conflict, match="last enabled admin"):
        await auth.update_user(ROOT, "root-admin", role=Role.OPERATOR, address=None)
    with pytest.raises(Conflict, match="last enabled admin"):
        await auth.update_user(ROOT, "root-admin", disabled=True, address=None)
    with pytest.raises(Conflict, match="last enabled admin"):
        await auth.delete_user(ROOT, "root-admin", address=None)
    await auth.create_user(ROOT, "second", PASSWORD, Role.ADMIN, address=None)
    await auth.delete_user(ROOT, "root-admin", address=None)
    with pytest.raises(Conflict, match="exists"):
        await auth.create_user(ROOT, "second", PASSWORD, Role.VIEWER, address=None)


async def test_tokens_expire_and_are_revoked(service: tuple[AuthService, ManualClock]) -> None:
    auth, clock = service
    token, row = await auth.create_token(
        ROOT,
        name="ci",
        role=Role.OPERATOR,
        expires_us=clock.now_us() + 3_600_000_000,
        address="10.0.0.8",
    )
    assert token not in repr(row)
    principal = await auth.principal_for_token(token)
    assert principal == Principal(
        name=f"token:{row.token_id}", role=Role.OPERATOR, kind="token", token_id=row.token_id
    )
    assert await auth.principal_for_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    clock.advance(3600)
    assert await auth.principal_for_token(token) is None
    token2, row2 = await auth.create_token(
        ROOT, name="ci2", role=Role.VIEWER, expires_us=None, address=None
    )
    assert await auth.principal_for_token(token2) is not None
    revoked = await auth.revoke_token(ROOT, row2.token_id, address=None)
    assert revoked.revoked_us == clock.now_us()
    assert await auth.principal_for_token(token2) is None
    # Never above the maker's role.
    with pytest.raises(Forbidden):
        await auth.create_token(
            Principal(name="op", role=Role.OPERATOR, kind="user"),
            name="x",
            role=Role.ADMIN,
            expires_us=None,
            address=None,
        )


async def test_login_failures_are_throttled_and_audited(
    service: tuple[AuthService, ManualClock],
) -> None:
    auth, clock = service
    await auth.create_user(ROOT, "carol", PASSWORD, Role.VIEWER, address=None)
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await auth.login("carol", "wrong password!", address="10.0.0.9")
    with pytest.raises(Throttled) as caught:
        await auth.login("carol", PASSWORD, address="10.0.0.9")
    assert caught.value.retry_after_s == 15
    clock.advance(15)
    await auth.login("carol", PASSWORD, address="10.0.0.10")
    failed = await auth.store.list_audit(limit=10, action="login_failed")
    assert len(failed) == 5
    assert {(e.actor, e.target, e.address, e.outcome) for e in failed} == {
        ("anonymous", "user:carol", "10.0.0.9", "failed")
    }
    (ok,) = await auth.store.list_audit(limit=10, action="login")
    assert (ok.actor, ok.address) == ("carol", "10.0.0.10")
    for entry in await auth.store.list_audit(limit=100):
        assert PASSWORD not in repr(entry)
        assert "wrong password!" not in repr(entry)


async def test_unknown_and_disabled_users_fail_like_a_wrong_password(
    service: tuple[AuthService, ManualClock],
) -> None:
    auth, clock = service
    now = clock.now_us()
    await auth.store.put_user(
        UserRow(
            username="dave",
            role="viewer",
            password_hash="x",
            created_us=now,
            updated_us=now,
            disabled=True,
        )
    )
    messages = set()
    for name in ("nobody", "dave", "-bad name-"):
        with pytest.raises(Unauthenticated) as caught:
            await auth.login(name, PASSWORD, address=None)
        messages.add(caught.value.message)
    assert messages == {"wrong username or password"}
