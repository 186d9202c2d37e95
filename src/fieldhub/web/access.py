"""Who is looking at a page, and what they may do there.

Pages answer a browser, not a program: without a session they redirect to the login page
(`/login?next=<path>`) rather than answering 401 like the API, and a role too low for a page
gets a page that says so (403). In demo mode (`AuthService.enabled` False) every page is open
and the principal is the demo one, whose header says so.

CSRF: a signed-in page carries its session's CSRF token in `<meta name="csrf-token">` (for the
ES modules' `X-CSRF-Token` header) and in a `csrf_token` field of each form it posts. The login
and setup forms come before any session, so they use a double-submit cookie (`fieldhub_csrf`):
a random value set with the form and echoed in its `csrf_token` field; a cross-site page can
make the browser send the cookie (not with SameSite=Strict, but belt and braces) yet cannot read
it to fill in the field.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request, Response

from fieldhub.api.auth import auth_service
from fieldhub.security.principal import DEMO_PRINCIPAL, Principal
from fieldhub.security.roles import Role
from fieldhub.security.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from fieldhub.security.tokens import same_secret


class LoginRequired(Exception):
    """A page was asked for without a session: answered with a redirect to the login page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class PageForbidden(Exception):
    """The principal's role is below the page's: answered with a 403 page."""

    def __init__(self, principal: Principal, needed: Role) -> None:
        super().__init__(needed.value)
        self.principal = principal
        self.needed = needed


def local_path(candidate: str | None) -> str | None:
    """`candidate` if it is a path on this site, else None (no open redirect after login).

    Refused: anything with a scheme or host (`https://x`, `//x`), backslashes (browsers read
    `/\\x` as `//x`), and control characters or spaces (browsers strip tabs and newlines from
    URLs, which would turn `/\\t/x` into `//x`).
    """
    if not candidate or not candidate.startswith("/") or len(candidate) > 2000:
        return None
    if any(ch == "\\" or ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in candidate):
        return None
    parts = urlsplit(candidate)
    if parts.scheme or parts.netloc or candidate.startswith("//"):
        return None
    return candidate


def login_url(next_path: str | None) -> str:
    """The login page, coming back to `next_path` (when local) after signing in."""
    target = local_path(next_path)
    if target is None or target == "/":
        return "/login"
    return "/login?next=" + quote(target, safe="")


def request_path(request: Request) -> str:
    """The path and query the browser asked for, as it sent them (still percent-encoded, so a
    device id with odd characters comes back the same), to return to after logging in."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else quote(request.url.path)
    query = request.url.query
    return path + (f"?{query}" if query else "")


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


async def session_principal(request: Request) -> Principal | None:
    """The principal of the request's session cookie; the demo principal in demo mode."""
    auth = auth_service(request)
    if not auth.enabled:
        return DEMO_PRINCIPAL
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    return await auth.principal_for_session(cookie)


def page_role(needed: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency for a page open to `needed` and above; it leaves the principal on
    `request.state` for the templates (header, CSRF meta tag, role-gated controls)."""

    async def principal_for_page(request: Request) -> Principal:
        principal = await session_principal(request)
        if principal is None:
            raise LoginRequired(request_path(request))
        request.state.principal = principal
        if not principal.allows(needed):
            raise PageForbidden(principal, needed)
        return principal

    principal_for_page.__name__ = f"page_for_{needed.value}"
    return principal_for_page


ViewerPage = Annotated[Principal, Depends(page_role(Role.VIEWER))]
AdminPage = Annotated[Principal, Depends(page_role(Role.ADMIN))]


def page_context(request: Request) -> dict[str, Any]:
    """What every template knows of who is looking (templating.py's context processor)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return {
        "principal": principal,
        "demo": principal is not None and principal.kind == "demo",
        "csrf_token": (principal.csrf_token or "") if principal else "",
        "may_operate": principal is not None and principal.allows(Role.OPERATOR),
        "is_admin": principal is not None and principal.allows(Role.ADMIN),
    }


def login_csrf_token(request: Request) -> str:
    """The double-submit token for a login or setup form: the browser's own if it has one
    (two open login tabs both keep working), else a new random one."""
    current = request.cookies.get(LOGIN_CSRF_COOKIE)
    if current and 20 <= len(current) <= 100:
        return current
    return secrets.token_urlsafe(32)


def set_login_csrf_cookie(response: Response, request: Request, token: str) -> None:
    # HttpOnly: the form gets the token from the server-rendered page, no script needs it.
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
        path="/",
    )


def login_csrf_ok(request: Request, field: str | None) -> bool:
    """Whether a login or setup form's `csrf_token` field matches its double-submit cookie."""
    return same_secret(field, request.cookies.get(LOGIN_CSRF_COOKIE))


def set_session_cookie(response: Response, request: Request, value: str, *, max_age_s: int) -> None:
    # HttpOnly (no script reads it), SameSite=Strict (no cross-site request carries it),
    # Secure over HTTPS; it lasts as long as the session may (the server also ends idle ones).
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=max(0, max_age_s),
        httponly=True,
        samesite="strict",
        secure=is_https(request),
        path="/",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=is_https(request)
    )
