"""`AuthService`: everything the API and the pages ask about people and programs.

Who a session cookie or a bearer token names (`principal_for_session`, `principal_for_token`),
logging in and out (throttled), the first admin's setup, users and API tokens, and the audit
log. The store holds the state (users, sessions, tokens, audit); this holds the rules. With
`enabled` False (demo mode) the API and pages never ask: every request is the demo principal.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from fieldhub.clock import SYSTEM_CLOCK, US_PER_S, Clock
from fieldhub.errors import Conflict, Forbidden, Invalid, NotFound, Throttled, Unauthenticated
from fieldhub.security import passwords
from fieldhub.security.audit import Auditor, Outcome
from fieldhub.security.principal import Principal
from fieldhub.security.roles import Role, parse_role
from fieldhub.security.sessions import (
    ABSOLUTE_S,
    HOUSEKEEPING_INTERVAL_S,
    IDLE_S,
    due_for_touch,
    is_live,
)
from fieldhub.security.setup import SetupToken
from fieldhub.security.throttle import LoginThrottle
from fieldhub.security.tokens import (
    hash_secret,
    new_api_token,
    new_csrf_token,
    new_session_value,
    secret_matches,
    token_id_of,
)
from fieldhub.store.base import Store
from fieldhub.store.types import ApiTokenRow, SessionRow, StoreError, UserRow

log = logging.getLogger("fieldhub.security")

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
_USERNAME = re.compile(USERNAME_PATTERN)
TOKEN_NAME_MAX_CHARS = 100
# Argon2 with its defaults takes 64 MiB and tens of milliseconds per hash: a burst of logins
# must queue rather than take the machine's memory (and the event loop never hashes).
MAX_CONCURRENT_HASHES = 2
# Tokens whose last use was written recently, so concurrent requests with one token write it
# once a minute at most; bounded like the throttle's state.
MAX_TOUCHED_TOKENS = 10_000


def check_username(username: str) -> str:
    """`username` if it is one (1..64 of letters, digits, `_.@-`, not starting with a sign)."""
    if not _USERNAME.match(username):
        raise Invalid(
            "username: 1 to 64 letters, digits, '_', '.', '@' or '-', starting with a letter "
            "or digit"
        )
    return username


def user_target(username: str) -> str:
    return f"user:{username}"


def token_target(token_id: str) -> str:
    return f"token:{token_id}"


class AuthService:
    """Users, sessions, API tokens, the setup link and the audit log, over the store."""

    def __init__(
        self,
        store: Store,
        *,
        enabled: bool,
        clock: Clock = SYSTEM_CLOCK,
        allowed_origins: Sequence[str] = (),
        throttle: LoginThrottle | None = None,
        idle_s: float = IDLE_S,
        absolute_s: float = ABSOLUTE_S,
    ) -> None:
        self.store = store
        self.enabled = enabled
        self.clock = clock
        # Origins besides the page's own that may open the WebSocket (settings.http_origins).
        self.allowed_origins = tuple(o.rstrip("/").lower() for o in allowed_origins)
        self.throttle = throttle or LoginThrottle()
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.auditor = Auditor(store, clock=clock)
        self.setup = SetupToken()
        self._hashing = asyncio.Semaphore(MAX_CONCURRENT_HASHES)
        self._setup_lock = asyncio.Lock()
        self._touched: OrderedDict[str, int] = OrderedDict()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """After the store is open: with auth on and no user yet, issue the setup token."""
        if self.enabled and await self.store.count_users() == 0:
            self.setup.issue()
            log.warning(
                "no user yet: open the setup link printed at start-up to create the first admin"
            )

    @property
    def setup_url_token(self) -> str | None:
        """The pending setup token for the start-up message (`/setup?token=...`), or None."""
        return self.setup.value

    async def expire_sessions(self) -> int:
        """Delete sessions past their absolute end or idle too long; how many."""
        now = self.clock.now_us()
        return await self.store.delete_expired_sessions(now, now - int(self.idle_s * US_PER_S))

    async def run_housekeeping(self, interval_s: float = HOUSEKEEPING_INTERVAL_S) -> None:
        """Delete expired sessions every `interval_s`, forever (a task of the platform)."""
        while True:
            try:
                deleted = await self.expire_sessions()
                if deleted:
                    log.info("deleted %d expired sessions", deleted)
            except StoreError as exc:
                log.warning("could not delete expired sessions: %s", exc)
            await asyncio.sleep(interval_s)

    # -- audit ----------------------------------------------------------------------------------

    async def audit(
        self,
        actor: Principal | str,
        action: str,
        *,
        target: str | None = None,
        address: str | None = None,
        outcome: Outcome = "ok",
        detail: Mapping[str, object] | None = None,
    ) -> int | None:
        """Record an entry in the audit log (secrets scrubbed from `detail`)."""
        name = actor.name if isinstance(actor, Principal) else actor
        return await self.auditor.record(
            name, action, target=target, address=address, outcome=outcome, detail=detail
        )

    # -- passwords (hashed off the event loop, a few at a time) ---------------------------------

    async def _hash(self, password: str, username: str) -> str:
        passwords.check_password(password, username=username)
        async with self._hashing:
            return await asyncio.to_thread(passwords.hash_password, password, username=username)

    async def _verify(self, password_hash: str, password: str) -> bool:
        async with self._hashing:
            return await asyncio.to_thread(passwords.verify_password, password_hash, password)

    # -- sessions -------------------------------------------------------------------------------

    async def login(
        self, username: str, password: str, *, address: str | None
    ) -> tuple[str, SessionRow]:
        """A new session for a correct password: (cookie value, its row).

        Unauthenticated for a wrong password, an unknown or disabled user (one message for all
        three); Throttled while the username or the address is locked."""
        keys = self.throttle.keys_for(username, address)
        wait = self.throttle.retry_after_s(keys, self.clock.monotonic_s())
        if wait is not None:
            raise Throttled(f"too many failed logins; try again in {wait} s", retry_after_s=wait)
        user = await self.store.get_user(username) if _USERNAME.match(username) else None
        usable = user is not None and not user.disabled
        # Unknown users are checked against a dummy hash: the same time for every failure.
        ok = await self._verify(
            user.password_hash if usable and user else passwords.DUMMY_HASH, password
        )
        if not (ok and usable and user is not None):
            reason = (
                "unknown_user"
                if user is None
                else "disabled"
                if user.disabled
                else "wrong_password"
            )
            now_s = self.clock.monotonic_s()
            self.throttle.failed(keys, now_s)
            await self.audit(
                "anonymous",
                "login_failed",
                target=user_target(username[:64]),
                address=address,
                outcome="failed",
                detail={"reason": reason},
            )
            locked = self.throttle.retry_after_s(keys, now_s)
            if locked is not None:
                await self.audit(
                    "system",
                    "login_throttled",
                    target=user_target(username[:64]),
                    address=address,
                    outcome="denied",
                    detail={"retry_after_s": locked},
                )
            raise Unauthenticated("wrong username or password")
        self.throttle.succeeded(username)
        if passwords.needs_rehash(user.password_hash):
            await self._store_password(user, password)
        cookie, row = await self.start_session(user.username, address=address)
        await self.audit(user.username, "login", target=user_target(user.username), address=address)
        return cookie, row

    async def _store_password(self, user: UserRow, password: str) -> None:
        hashed = await self._hash(password, user.username)
        now = self.clock.now_us()
        await self.store.put_user(
            UserRow(
                username=user.username,
                role=user.role,
                password_hash=hashed,
                created_us=user.created_us,
                updated_us=now,
                disabled=user.disabled,
            )
        )

    async def start_session(self, username: str, *, address: str | None) -> tuple[str, SessionRow]:
        """A new session for `username` (already authenticated): (cookie value, row)."""
        cookie = new_session_value()
        now = self.clock.now_us()
        row = SessionRow(
            token_hash=hash_secret(cookie),
            username=username,
            csrf_token=new_csrf_token(),
            created_us=now,
            last_seen_us=now,
            expires_us=now + int(self.absolute_s * US_PER_S),
            address=address,
        )
        await self.store.insert_session(row)
        return cookie, row

    async def logout(self, cookie_value: str, *, address: str | None = None) -> None:
        """End the session the cookie names (nothing when it names none)."""
        token_hash = hash_secret(cookie_value)
        row = await self.store.get_session(token_hash)
        if row is None:
            return
        await self.store.delete_session(token_hash)
        await self.audit(row.username, "logout", target=user_target(row.username), address=address)

    async def principal_for_session(self, cookie_value: str) -> Principal | None:
        """The user a live session cookie names; None for an unknown, ended or expired session
        or a user since disabled or deleted."""
        if not cookie_value:
            return None
        token_hash = hash_secret(cookie_value)
        row = await self.store.get_session(token_hash)
        if row is None:
            return None
        now = self.clock.now_us()
        if not is_live(row, now, idle_s=self.idle_s):
            await self.store.delete_session(token_hash)
            return None
        user = await self.store.get_user(row.username)
        if user is None or user.disabled:
            await self.store.delete_session(token_hash)
            return None
        if due_for_touch(row.last_seen_us, now):
            await self.store.touch_session(token_hash, now)
        # The role is the user's as it is now: a demotion takes effect on the next request.
        return Principal(
            name=user.username, role=Role(user.role), kind="user", csrf_token=row.csrf_token
        )

    async def principal_for_token(self, bearer: str) -> Principal | None:
        """The API token `bearer` is; None for a malformed, unknown, wrong, expired or revoked
        one."""
        token_id = token_id_of(bearer)
        if token_id is None:
            return None
        row = await self.store.get_api_token(token_id)
        if row is None or not secret_matches(bearer, row.token_hash):
            return None
        now = self.clock.now_us()
        if row.revoked_us is not None or (row.expires_us is not None and row.expires_us <= now):
            return None
        self._touch_token(row, now)
        return Principal(
            name=token_target(token_id), role=Role(row.role), kind="token", token_id=token_id
        )

    def _touch_token(self, row: ApiTokenRow, now: int) -> None:
        last = max(row.last_used_us or 0, self._touched.get(row.token_id, 0)) or None
        if not due_for_touch(last, now):
            return
        self._touched[row.token_id] = now
        self._touched.move_to_end(row.token_id)
        while len(self._touched) > MAX_TOUCHED_TOKENS:
            self._touched.popitem(last=False)
        # In the background: "last used" is for people reading a list, not worth a request's
        # latency, and a failed write only leaves it a minute older.
        task = asyncio.create_task(self._write_touch(row.token_id, now), name="auth.token-touch")
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _write_touch(self, token_id: str, now: int) -> None:
        try:
            await self.store.touch_api_token(token_id, now)
        except StoreError as exc:
            log.warning("could not record the last use of token %s: %s", token_id, exc)

    # -- the first admin ------------------------------------------------------------------------

    @property
    def setup_pending(self) -> bool:
        """Whether the first admin is still to be created through the setup token."""
        return self.setup.pending

    async def setup_admin(
        self, setup_token: str, username: str, password: str, *, address: str | None
    ) -> Principal:
        """Create the first admin with the one-time setup token; the token is then spent."""
        async with self._setup_lock:
            if not self.setup.matches(setup_token):
                await self.audit(
                    "anonymous",
                    "setup",
                    address=address,
                    outcome="denied",
                    detail={"reason": "wrong or used setup token"},
                )
                raise Forbidden(
                    "this setup link is wrong or was already used; an admin can add users, or "
                    "run `fieldhub users add NAME --role admin` on the server",
                    code="setup_refused",
                )
            if await self.store.count_users() > 0:
                # Someone made a user another way (the CLI): the link must not make another.
                self.setup.consume()
                raise Forbidden("users exist already; log in instead", code="setup_refused")
            check_username(username)
            hashed = await self._hash(password, username)
            now = self.clock.now_us()
            await self.store.put_user(
                UserRow(
                    username=username,
                    role=Role.ADMIN.value,
                    password_hash=hashed,
                    created_us=now,
                    updated_us=now,
                )
            )
            self.setup.consume()
        await self.audit(
            username,
            "setup",
            target=user_target(username),
            address=address,
            detail={"role": Role.ADMIN.value},
        )
        return Principal(name=username, role=Role.ADMIN, kind="user")

    # -- users ----------------------------------------------------------------------------------

    async def list_users(self) -> list[UserRow]:
        return await self.store.list_users()

    async def get_user(self, username: str) -> UserRow:
        user = await self.store.get_user(username)
        if user is None:
            raise NotFound(f"no user {username!r}")
        return user

    async def create_user(
        self,
        actor: Principal,
        username: str,
        password: str,
        role: Role,
        *,
        address: str | None,
    ) -> UserRow:
        """A new user; Conflict when the name is taken."""
        check_username(username)
        if await self.store.get_user(username) is not None:
            raise Conflict(f"user {username!r} exists already", code="user_exists")
        hashed = await self._hash(password, username)
        now = self.clock.now_us()
        row = UserRow(
            username=username, role=role.value, password_hash=hashed, created_us=now, updated_us=now
        )
        # Checked again after hashing (which awaits): two creations of one name, one wins.
        if await self.store.get_user(username) is not None:
            raise Conflict(f"user {username!r} exists already", code="user_exists")
        await self.store.put_user(row)
        await self.audit(
            actor,
            "user.create",
            target=user_target(username),
            address=address,
            detail={"role": role.value},
        )
        return row

    async def _enabled_admins(self) -> set[str]:
        return {
            u.username
            for u in await self.store.list_users()
            if u.role == Role.ADMIN.value and not u.disabled
        }

    async def _keep_an_admin(self, username: str) -> None:
        """Refuse to demote, disable or delete the last enabled admin: no one could undo it
        but the server's shell."""
        if await self._enabled_admins() == {username}:
            raise Conflict(
                f"{username!r} is the last enabled admin; make another admin first",
                code="last_admin",
            )

    async def update_user(
        self,
        actor: Principal,
        username: str,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        address: str | None,
    ) -> UserRow:
        """Change a user's role or disable/enable them. Disabling ends their sessions and
        revokes the API tokens they created."""
        user = await self.get_user(username)
        changes: dict[str, object] = {}
        if role is not None and role.value != user.role:
            changes["role"] = {"from": user.role, "to": role.value}
        if disabled is not None and disabled != user.disabled:
            changes["disabled"] = disabled
        if not changes:
            return user
        demoted = "role" in changes and role is not Role.ADMIN
        if user.role == Role.ADMIN.value and not user.disabled and (demoted or disabled):
            await self._keep_an_admin(username)
        row = UserRow(
            username=user.username,
            role=role.value if role is not None else user.role,
            password_hash=user.password_hash,
            created_us=user.created_us,
            updated_us=self.clock.now_us(),
            disabled=user.disabled if disabled is None else disabled,
        )
        await self.store.put_user(row)
        if disabled:
            changes.update(await self._cut_off(actor, username, address=address))
        await self.audit(
            actor, "user.update", target=user_target(username), address=address, detail=changes
        )
        return row

    async def _cut_off(
        self, actor: Principal, username: str, *, address: str | None
    ) -> dict[str, object]:
        """End a user's sessions and revoke the tokens they created (disabled or deleted)."""
        sessions = await self.store.delete_user_sessions(username)
        revoked: list[str] = []
        now = self.clock.now_us()
        for token in await self.store.list_api_tokens():
            if (
                token.created_by == username
                and token.revoked_us is None
                and await self.store.revoke_api_token(token.token_id, now)
            ):
                revoked.append(token.token_id)
                await self.audit(
                    actor,
                    "token.revoke",
                    target=token_target(token.token_id),
                    address=address,
                    detail={"reason": f"user {username} cut off"},
                )
        return {"sessions_ended": sessions, "tokens_revoked": revoked}

    async def reset_password(
        self, actor: Principal, username: str, password: str, *, address: str | None
    ) -> None:
        """An admin sets a user's password; the user's sessions end."""
        user = await self.get_user(username)
        await self._store_password(user, password)
        ended = await self.store.delete_user_sessions(username)
        await self.audit(
            actor,
            "user.update",
            target=user_target(username),
            address=address,
            detail={"changed": "password reset", "sessions_ended": ended},
        )

    async def change_own_password(
        self, principal: Principal, current: str, new: str, *, address: str | None
    ) -> tuple[str, SessionRow]:
        """A signed-in user changes their password: every session of theirs ends and a new one
        (returned) replaces the caller's."""
        if principal.kind != "user":
            raise Forbidden("only a signed-in user has a password to change")
        user = await self.get_user(principal.name)
        if not await self._verify(user.password_hash, current):
            await self.audit(
                principal,
                "user.update",
                target=user_target(user.username),
                address=address,
                outcome="failed",
                detail={"changed": "password", "reason": "wrong current password"},
            )
            raise Forbidden("the current password is wrong", code="wrong_password")
        if new == current:
            raise Invalid("the new password is the current one")
        await self._store_password(user, new)
        await self.store.delete_user_sessions(user.username)
        cookie, row = await self.start_session(user.username, address=address)
        await self.audit(
            principal,
            "user.update",
            target=user_target(user.username),
            address=address,
            detail={"changed": "password"},
        )
        return cookie, row

    async def delete_user(self, actor: Principal, username: str, *, address: str | None) -> None:
        """Delete a user: their sessions end and the tokens they created are revoked."""
        user = await self.get_user(username)
        if user.role == Role.ADMIN.value and not user.disabled:
            await self._keep_an_admin(username)
        cut = await self._cut_off(actor, username, address=address)
        await self.store.delete_user(username)
        await self.audit(
            actor,
            "user.delete",
            target=user_target(username),
            address=address,
            detail={"role": user.role, **cut},
        )

    # -- API tokens -----------------------------------------------------------------------------

    async def create_token(
        self,
        actor: Principal,
        *,
        name: str,
        role: Role,
        expires_us: int | None,
        address: str | None,
    ) -> tuple[str, ApiTokenRow]:
        """A new API token: (the token, shown this once; its row). Never above the creator's
        role: a token must not be a way up."""
        name = name.strip()
        if not name or len(name) > TOKEN_NAME_MAX_CHARS:
            raise Invalid(f"name: 1 to {TOKEN_NAME_MAX_CHARS} characters")
        if not actor.allows(role):
            raise Forbidden(f"a {actor.role.value} cannot make a {role.value} token")
        now = self.clock.now_us()
        if expires_us is not None and expires_us <= now:
            raise Invalid("expires_at: the token would be expired already")
        token_id, token = new_api_token()
        row = ApiTokenRow(
            token_id=token_id,
            name=name,
            token_hash=hash_secret(token),
            role=role.value,
            created_by=actor.name,
            created_us=now,
            expires_us=expires_us,
        )
        await self.store.insert_api_token(row)
        await self.audit(
            actor,
            "token.create",
            target=token_target(token_id),
            address=address,
            detail={"name": name, "role": role.value, "expires_us": expires_us},
        )
        return token, row

    async def list_tokens(self) -> list[ApiTokenRow]:
        return await self.store.list_api_tokens()

    async def revoke_token(
        self, actor: Principal, token_id: str, *, address: str | None
    ) -> ApiTokenRow:
        """Revoke a token (at once: the next request with it is refused). Revoking a revoked
        token changes nothing and is not an error."""
        row = await self.store.get_api_token(token_id)
        if row is None:
            raise NotFound(f"no token {token_id!r}")
        if row.revoked_us is None:
            now = self.clock.now_us()
            await self.store.revoke_api_token(token_id, now)
            await self.audit(
                actor,
                "token.revoke",
                target=token_target(token_id),
                address=address,
                detail={"name": row.name},
            )
            row = await self.store.get_api_token(token_id) or row
        return row


# Fire-and-forget tasks are kept referenced until done (asyncio holds only weak references).
_BACKGROUND: set[asyncio.Task[None]] = set()


def role_of(value: str) -> Role:
    """A stored or requested role (Invalid naming the roles when unknown)."""
    return parse_role(value)
