"""Signing in and out of the dashboard, and creating the first admin.

`GET /login` shows the form; `POST /login` checks its double-submit CSRF token, then the
password (through AuthService, which throttles and audits), sets the session cookie and goes
back to `next` when that is a path on this site. A failure shows the form again with one
message that does not say whether the user exists; a throttled attempt says when to retry.
`POST /logout` ends the session (CSRF-checked: a cross-site form must not sign people out).
`GET/POST /setup?token=...` creates the first admin while no user exists, with the one-time
token `fieldhub up` printed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fieldhub import clock
from fieldhub.api.auth import auth_service, client_address
from fieldhub.api.deps import StoreDep
from fieldhub.errors import FieldhubError, Forbidden, Throttled, Unauthenticated
from fieldhub.security.passwords import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS
from fieldhub.security.sessions import SESSION_COOKIE
from fieldhub.security.tokens import same_secret
from fieldhub.store.types import SessionRow
from fieldhub.web.access import (
    clear_session_cookie,
    local_path,
    login_csrf_ok,
    login_csrf_token,
    session_principal,
    set_login_csrf_cookie,
    set_session_cookie,
)
from fieldhub.web.templating import templates

router = APIRouter(include_in_schema=False)

# UserRow allows 64 characters, so a longer name cannot exist; a password longer than any
# allowed one is not even hashed (argon2 reads all of it).
MAX_USERNAME = 64
MAX_PASSWORD = MAX_PASSWORD_CHARS

WRONG_LOGIN = "Wrong username or password."
STALE_FORM = (
    "This form has expired or was not sent from fieldhub's own page. "
    "It has been reloaded: enter your details again."
)

FormText = Annotated[str, Form()]


def _retry_text(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{(seconds + 59) // 60} minutes"


def _form_page(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A login or setup form, with its double-submit CSRF token in a cookie and a field."""
    token = login_csrf_token(request)
    response = templates.TemplateResponse(
        request,
        name,
        {**context, "login_csrf": token},
        status_code=status_code,
        headers=headers,
    )
    set_login_csrf_cookie(response, request, token)
    return response


def _signed_in(request: Request, cookie: str, row: SessionRow, target: str) -> Response:
    response = RedirectResponse(target, status_code=303)
    max_age_s = (row.expires_us - clock.now_us()) // 1_000_000
    set_session_cookie(response, request, cookie, max_age_s=max_age_s)
    return response


def _login_page(
    request: Request,
    *,
    next_path: str | None,
    username: str = "",
    error: str | None = None,
    needs_setup: bool = False,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    context = {
        "page": "login",
        "next": next_path or "",
        "username": username,
        "error": error,
        "needs_setup": needs_setup,
    }
    return _form_page(request, "login.html", context, status_code=status_code, headers=headers)


@router.get("/login", response_class=HTMLResponse)
async def login_form(
    request: Request,
    store: StoreDep,
    next: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    target = local_path(next)
    if not auth_service(request).enabled or await session_principal(request) is not None:
        return RedirectResponse(target or "/", status_code=303)
    needs_setup = await store.count_users() == 0
    return _login_page(request, next_path=target, needs_setup=needs_setup)


@router.post("/login", response_class=HTMLResponse)
async def login_submit(
    request: Request,
    username: FormText = "",
    password: FormText = "",
    csrf_token: FormText = "",
    next: FormText = "",
) -> Response:
    auth = auth_service(request)
    target = local_path(next)
    if not auth.enabled:
        return RedirectResponse(target or "/", status_code=303)
    if not login_csrf_ok(request, csrf_token):
        return _login_page(
            request,
            next_path=target,
            username=username[:MAX_USERNAME],
            error=STALE_FORM,
            status_code=403,
        )
    username = username.strip()
    if not username or not password or len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        return _login_page(
            request,
            next_path=target,
            username=username[:MAX_USERNAME],
            error=WRONG_LOGIN,
            status_code=401,
        )
    try:
        cookie, row = await auth.login(username, password, address=client_address(request))
    except Throttled as exc:
        wait = max(1, int(exc.retry_after_s))
        error = f"Too many failed attempts. Try again in {_retry_text(wait)}."
        return _login_page(
            request,
            next_path=target,
            username=username,
            error=error,
            status_code=429,
            headers={"Retry-After": str(wait)},
        )
    except Unauthenticated:
        return _login_page(
            request, next_path=target, username=username, error=WRONG_LOGIN, status_code=401
        )
    return _signed_in(request, cookie, row, target or "/")


@router.post("/logout")
async def logout(request: Request, csrf_token: FormText = "") -> Response:
    auth = auth_service(request)
    if not auth.enabled:
        return RedirectResponse("/", status_code=303)
    principal = await session_principal(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if principal is not None and cookie:
        if not same_secret(csrf_token, principal.csrf_token):
            request.state.principal = principal
            context = {"page": "none", "needed": None, "csrf_refused": True}
            return templates.TemplateResponse(request, "forbidden.html", context, status_code=403)
        await auth.logout(cookie)
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response, request)
    return response


def _setup_page(
    request: Request,
    *,
    token: str,
    username: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    context = {
        "page": "setup",
        "token": token,
        "username": username,
        "error": error,
        "min_password": MIN_PASSWORD_CHARS,
        "max_password": MAX_PASSWORD_CHARS,
    }
    return _form_page(request, "setup.html", context, status_code=status_code)


async def _setup_closed(request: Request, store: StoreDep) -> Response | None:
    """The answer when setup is not open: demo mode, or a user exists already."""
    if not auth_service(request).enabled:
        return RedirectResponse("/", status_code=303)
    if await store.count_users() > 0:
        context = {"page": "setup", "done": True}
        return templates.TemplateResponse(request, "setup.html", context, status_code=410)
    return None


@router.get("/setup", response_class=HTMLResponse)
async def setup_form(
    request: Request, store: StoreDep, token: Annotated[str, Query(max_length=200)] = ""
) -> Response:
    closed = await _setup_closed(request, store)
    return closed or _setup_page(request, token=token)


@router.post("/setup", response_class=HTMLResponse)
async def setup_submit(
    request: Request,
    store: StoreDep,
    token: FormText = "",
    username: FormText = "",
    password: FormText = "",
    confirm: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    closed = await _setup_closed(request, store)
    if closed is not None:
        return closed
    username = username.strip()[:MAX_USERNAME]
    if not login_csrf_ok(request, csrf_token):
        return _setup_page(
            request, token=token, username=username, error=STALE_FORM, status_code=403
        )
    if password != confirm:
        return _setup_page(
            request,
            token=token,
            username=username,
            error="The two passwords differ.",
            status_code=422,
        )
    auth = auth_service(request)
    address = client_address(request)
    try:
        await auth.setup_admin(token, username, password, address=address)
        # Signed in at once: the setup token and the password just chosen authenticate them.
        cookie, row = await auth.start_session(username, address=address)
    except FieldhubError as exc:
        # Its message is written for the user and holds no secret (fieldhub.errors).
        status = 403 if isinstance(exc, (Unauthenticated, Forbidden)) else 422
        return _setup_page(
            request, token=token, username=username, error=exc.message, status_code=status
        )
    return _signed_in(request, cookie, row, "/")
