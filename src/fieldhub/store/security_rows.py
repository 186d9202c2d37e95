"""The security tables in the store, written once for every engine: users, sessions, API
tokens, the audit log and device credentials (issue 15), as scripts (ops.py).

The store keeps only what cannot be replayed: hashes of passwords, cookies, tokens and device
secrets, never the secrets themselves. What a role may do, how long a session lives and when a
token is valid are decided by fieldhub.security; these scripts store and find rows, and make
the few decisions that must be atomic (a revocation happens once; an expired session goes).
"""

from __future__ import annotations

from collections.abc import Sequence

from fieldhub.store.dialect import Dialect, Params
from fieldhub.store.ops import Count, Query, Row, Script
from fieldhub.store.types import (
    ApiTokenRow,
    AuditEntry,
    AuditRow,
    DeviceCredentialRow,
    SessionRow,
    StoreError,
    UserRow,
)

# -- users -------------------------------------------------------------------------------------

USER_COLUMNS = "username, role, password_hash, created_us, updated_us, disabled"


def _user(row: Row) -> UserRow:
    return UserRow(
        username=row[0],
        role=row[1],
        password_hash=row[2],
        created_us=row[3],
        updated_us=row[4],
        disabled=bool(row[5]),
    )


def put_user(d: Dialect, user: UserRow) -> Script[None]:
    """Insert the user, or replace every column of the one with that name."""
    p = Params(d)
    yield Query(
        f"INSERT INTO users ({USER_COLUMNS}) VALUES ({p(user.username)}, {p(user.role)}, "
        f"{p(user.password_hash)}, {p(user.created_us)}, {p(user.updated_us)}, "
        f"{p(int(user.disabled))}) "
        "ON CONFLICT (username) DO UPDATE SET role = excluded.role, "
        "password_hash = excluded.password_hash, created_us = excluded.created_us, "
        "updated_us = excluded.updated_us, disabled = excluded.disabled",
        p.values,
    )


def get_user(d: Dialect, username: str) -> Script[UserRow | None]:
    rows = yield Query(
        f"SELECT {USER_COLUMNS} FROM users WHERE username = {d.mark(1)}", (username,)
    )
    return _user(rows[0]) if rows else None


def list_users(d: Dialect) -> Script[list[UserRow]]:
    """Every user by name (bytewise, as on both engines)."""
    rows = yield Query(f"SELECT {USER_COLUMNS} FROM users ORDER BY username{d.collate}")
    return [_user(r) for r in rows]


def count_users() -> Script[int]:
    ((count,),) = yield Query("SELECT count(*) FROM users")
    return int(count)


def delete_user(d: Dialect, username: str) -> Script[bool]:
    """Delete the user and, in the same transaction, their sessions: no cookie outlives the
    account it signed in (there are no foreign keys to cascade). Their API tokens and audit
    entries stay: a token carries its own role, and the log is history."""
    ((deleted,),) = yield Count(f"DELETE FROM users WHERE username = {d.mark(1)}", (username,))
    yield Count(f"DELETE FROM sessions WHERE username = {d.mark(1)}", (username,))
    return bool(deleted)


# -- sessions ----------------------------------------------------------------------------------

SESSION_COLUMNS = "token_hash, username, csrf_token, created_us, last_seen_us, expires_us, address"


def _session(row: Row) -> SessionRow:
    return SessionRow(
        token_hash=row[0],
        username=row[1],
        csrf_token=row[2],
        created_us=row[3],
        last_seen_us=row[4],
        expires_us=row[5],
        address=row[6],
    )


def insert_session(d: Dialect, session: SessionRow) -> Script[None]:
    """A new session; StoreError if its hash is already stored (a 32-byte random cookie never
    repeats, so that is a bug, not something to overwrite)."""
    p = Params(d)
    try:
        yield Query(
            f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({p(session.token_hash)}, "
            f"{p(session.username)}, {p(session.csrf_token)}, {p(session.created_us)}, "
            f"{p(session.last_seen_us)}, {p(session.expires_us)}, {p(session.address)})",
            p.values,
        )
    except StoreError as exc:
        raise StoreError(f"storing a session for {session.username!r} failed: {exc}") from exc


def get_session(d: Dialect, token_hash: str) -> Script[SessionRow | None]:
    rows = yield Query(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = {d.mark(1)}", (token_hash,)
    )
    return _session(rows[0]) if rows else None


def touch_session(d: Dialect, token_hash: str, last_seen_us: int) -> Script[None]:
    """Record activity; never moves last_seen back (requests finish out of order)."""
    m = d.mark
    yield Query(
        f"UPDATE sessions SET last_seen_us = {d.greatest}(last_seen_us, {m(1)}) "
        f"WHERE token_hash = {m(2)}",
        (last_seen_us, token_hash),
    )


def delete_session(d: Dialect, token_hash: str) -> Script[None]:
    yield Query(f"DELETE FROM sessions WHERE token_hash = {d.mark(1)}", (token_hash,))


def delete_user_sessions(d: Dialect, username: str) -> Script[int]:
    ((deleted,),) = yield Count(f"DELETE FROM sessions WHERE username = {d.mark(1)}", (username,))
    return int(deleted)


def delete_expired_sessions(d: Dialect, now_us: int, idle_before_us: int) -> Script[int]:
    """Delete sessions past their absolute end (expires_us <= now) or idle (last seen before
    `idle_before_us`, i.e. now minus the idle limit); returns how many."""
    m = d.mark
    ((deleted,),) = yield Count(
        f"DELETE FROM sessions WHERE expires_us <= {m(1)} OR last_seen_us < {m(2)}",
        (now_us, idle_before_us),
    )
    return int(deleted)


# -- API tokens --------------------------------------------------------------------------------

TOKEN_COLUMNS = (
    "token_id, name, token_hash, role, created_by, created_us, expires_us, last_used_us, revoked_us"
)


def _token(row: Row) -> ApiTokenRow:
    return ApiTokenRow(
        token_id=row[0],
        name=row[1],
        token_hash=row[2],
        role=row[3],
        created_by=row[4],
        created_us=row[5],
        expires_us=row[6],
        last_used_us=row[7],
        revoked_us=row[8],
    )


def insert_api_token(d: Dialect, token: ApiTokenRow) -> Script[None]:
    """A new token; StoreError if its id is taken (the caller draws another id): a token
    handed out must never replace one that someone already holds."""
    p = Params(d)
    created = yield Query(
        f"INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES ({p(token.token_id)}, {p(token.name)}, "
        f"{p(token.token_hash)}, {p(token.role)}, {p(token.created_by)}, {p(token.created_us)}, "
        f"{p(token.expires_us)}, {p(token.last_used_us)}, {p(token.revoked_us)}) "
        "ON CONFLICT (token_id) DO NOTHING RETURNING token_id",
        p.values,
    )
    if not created:
        raise StoreError(f"an API token with id {token.token_id!r} already exists")


def get_api_token(d: Dialect, token_id: str) -> Script[ApiTokenRow | None]:
    rows = yield Query(
        f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_id = {d.mark(1)}", (token_id,)
    )
    return _token(rows[0]) if rows else None


def list_api_tokens(d: Dialect) -> Script[list[ApiTokenRow]]:
    """Every token, revoked and expired ones included, oldest first."""
    rows = yield Query(
        f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_us, token_id{d.collate}"
    )
    return [_token(r) for r in rows]


def revoke_api_token(d: Dialect, token_id: str, at_us: int) -> Script[bool]:
    """True when this call revoked the token; False when unknown or already revoked (the first
    revocation's time stays)."""
    m = d.mark
    ((changed,),) = yield Count(
        f"UPDATE api_tokens SET revoked_us = {m(1)} WHERE token_id = {m(2)} AND revoked_us IS NULL",
        (at_us, token_id),
    )
    return bool(changed)


def touch_api_token(d: Dialect, token_id: str, last_used_us: int) -> Script[None]:
    """Record a use; never moves last_used back."""
    m = d.mark
    yield Query(
        f"UPDATE api_tokens SET last_used_us = {d.greatest}(coalesce(last_used_us, {m(1)}), "
        f"{m(1)}) WHERE token_id = {m(2)}",
        (last_used_us, token_id),
    )


# -- audit log ---------------------------------------------------------------------------------

AUDIT_COLUMNS = "seq, at_us, actor, action, target, address, outcome, detail"


def append_audit(d: Dialect, entry: AuditEntry) -> Script[int]:
    """Append one entry; returns its seq."""
    p = Params(d)
    ((seq,),) = yield Query(
        "INSERT INTO audit_log (at_us, actor, action, target, address, outcome, detail) "
        f"VALUES ({p(entry.at_us)}, {p(entry.actor)}, {p(entry.action)}, {p(entry.target)}, "
        f"{p(entry.address)}, {p(entry.outcome)}, {p(d.json_param(entry.detail))}) "
        "RETURNING seq",
        p.values,
    )
    return int(seq)


def list_audit(
    d: Dialect,
    *,
    limit: int,
    before_seq: int | None,
    actor: str | None,
    action: str | None,
) -> Script[list[AuditRow]]:
    """Entries newest first (by seq), below the `before_seq` cursor, filtered."""
    p = Params(d)
    where: list[str] = []
    if before_seq is not None:
        where.append(f"seq < {p(before_seq)}")
    if actor is not None:
        where.append(f"actor = {p(actor)}")
    if action is not None:
        where.append(f"action = {p(action)}")
    sql = f"SELECT {AUDIT_COLUMNS} FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY seq DESC LIMIT {p(limit)}"
    return _audit_rows((yield Query(sql, p.values)), d)


def _audit_rows(rows: Sequence[Row], d: Dialect) -> list[AuditRow]:
    return [
        AuditRow(
            seq=r[0],
            at_us=r[1],
            actor=r[2],
            action=r[3],
            target=r[4],
            address=r[5],
            outcome=r[6],
            detail=d.json_loads(r[7]),
        )
        for r in rows
    ]


# -- device credentials ------------------------------------------------------------------------

# `device_uid` is the canonical device id (text), not a reference to devices (sqlite_schema.py).
CREDENTIAL_COLUMNS = "device_uid, password_hash, created_us, rotated_us, revoked_us"


def _credential(row: Row) -> DeviceCredentialRow:
    return DeviceCredentialRow(
        device_id=row[0],
        password_hash=row[1],
        created_us=row[2],
        rotated_us=row[3],
        revoked_us=row[4],
    )


def put_device_credential(d: Dialect, credential: DeviceCredentialRow) -> Script[None]:
    """Insert the device's credential, or replace the stored one; either way it is active
    afterwards: `revoked_us` is cleared whatever the row says (revoking is
    `revoke_device_credential`'s alone)."""
    p = Params(d)
    yield Query(
        f"INSERT INTO device_credentials ({CREDENTIAL_COLUMNS}) VALUES ({p(credential.device_id)}, "
        f"{p(credential.password_hash)}, {p(credential.created_us)}, {p(credential.rotated_us)}, "
        "NULL) ON CONFLICT (device_uid) DO UPDATE SET password_hash = excluded.password_hash, "
        "created_us = excluded.created_us, rotated_us = excluded.rotated_us, revoked_us = NULL",
        p.values,
    )


def get_device_credential(d: Dialect, device_id: str) -> Script[DeviceCredentialRow | None]:
    rows = yield Query(
        f"SELECT {CREDENTIAL_COLUMNS} FROM device_credentials WHERE device_uid = {d.mark(1)}",
        (device_id,),
    )
    return _credential(rows[0]) if rows else None


def list_device_credentials(d: Dialect) -> Script[list[DeviceCredentialRow]]:
    """Every credential, revoked ones included, by device id (bytewise)."""
    rows = yield Query(
        f"SELECT {CREDENTIAL_COLUMNS} FROM device_credentials ORDER BY device_uid{d.collate}"
    )
    return [_credential(r) for r in rows]


def revoke_device_credential(d: Dialect, device_id: str, at_us: int) -> Script[bool]:
    """True when this call revoked it; False when unknown or already revoked."""
    m = d.mark
    ((changed,),) = yield Count(
        f"UPDATE device_credentials SET revoked_us = {m(1)} WHERE device_uid = {m(2)} "
        "AND revoked_us IS NULL",
        (at_us, device_id),
    )
    return bool(changed)
