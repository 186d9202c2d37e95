"""`/api/v1/auth`: log in (a session cookie), log out, who am I, change my password, and the
first admin's setup. Login and setup are public (they are how one gets credentials)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, StringConstraints

from fieldhub.api.auth import AuthDep, PrincipalDep, client_address
from fieldhub.api.errors import BODY_RESPONSES, ERROR_RESPONSES, ErrorResponse
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.protocol.timestamps import format_us
from fieldhub.schemas import Time
from fieldhub.security.passwords import MAX_PASSWORD_CHARS
from fieldhub.security.principal import PrincipalKind
from fieldhub.security.roles import Role
from fieldhub.security.sessions import SESSION_COOKIE
from fieldhub.store.types import SessionRow

router = APIRouter(
    prefix="/api/v1/auth",
    tags=["auth"],
    route_class=AllMethodsRoute,
    responses={**ERROR_RESPONSES, **BODY_RESPONSES},
)

Username = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PASSWORD_CHARS)]


class LoginRequest(BaseModel):
    """`POST /api/v1/auth/login`."""

    model_config = ConfigDict(extra="forbid")

    username: Username
    password: Password


class SetupRequest(BaseModel):
    """`POST /api/v1/auth/setup`: the first admin, with the token of the printed setup link."""

    model_config = ConfigDict(extra="forbid")

    token: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    username: Username
    password: Password


class PasswordChange(BaseModel):
    """`POST /api/v1/auth/password`: a signed-in user's own password."""

    model_config = ConfigDict(extra="forbid")

    current_password: Password
    new_password: Password


class MePublic(BaseModel):
    """The caller. `csrf_token` (session callers only) goes in X-CSRF-Token of every request
    that changes something."""

    name: str
    role: Role
    kind: PrincipalKind
    csrf_token: str | None = None


class SessionPublic(BaseModel):
    """A new session (its cookie is in Set-Cookie, HttpOnly: scripts never see it)."""

    user: MePublic
    csrf_token: str
    expires_at: Time


def set_session_cookie(request: Request, response: Response, cookie: str, row: SessionRow) -> None:
    """The session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's page
    sends it), Secure when served over HTTPS, until the session's absolute end."""
    max_age = max(0, (row.expires_us - row.created_us) // 1_000_000)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def _session(
    request: Request, response: Response, auth: AuthDep, cookie: str, row: SessionRow
) -> SessionPublic:
    set_session_cookie(request, response, cookie, row)
    user = await auth.get_user(row.username)
    return SessionPublic(
        user=MePublic(
            name=user.username, role=Role(user.role), kind="user", csrf_token=row.csrf_token
        ),
        csrf_token=row.csrf_token,
        expires_at=format_us(row.expires_us),
    )


@router.post(
    "/login",
    response_model=SessionPublic,
    responses={429: {"model": ErrorResponse, "description": "Too many failed logins"}},
)
async def login(
    body: LoginRequest, request: Request, response: Response, auth: AuthDep
) -> SessionPublic:
    """Log in with a username and password: sets the session cookie and answers its CSRF
    token. 401 for a wrong password or unknown user (one answer for both); 429 with
    Retry-After after repeated failures for the username or from the address."""
    cookie, row = await auth.login(body.username, body.password, address=client_address(request))
    return await _session(request, response, auth, cookie, row)


@router.post("/logout", status_code=204, response_class=Response)
async def logout(principal: PrincipalDep, request: Request, auth: AuthDep) -> Response:
    """End the caller's session and clear its cookie (a token caller: nothing to end)."""
    response = Response(status_code=204)
    cookie = request.cookies.get(SESSION_COOKIE)
    if principal.kind == "user" and cookie:
        await auth.logout(cookie, address=client_address(request))
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/me", response_model=MePublic)
async def me(principal: PrincipalDep) -> MePublic:
    """Who the credentials name, their role and (sessions) the CSRF token."""
    return MePublic(
        name=principal.name,
        role=principal.role,
        kind=principal.kind,
        csrf_token=principal.csrf_token,
    )


@router.post("/password", response_model=SessionPublic)
async def change_password(
    principal: PrincipalDep,
    body: PasswordChange,
    request: Request,
    response: Response,
    auth: AuthDep,
) -> SessionPublic:
    """Change one's own password (signed-in users): every session of the user ends, and a new
    one replaces the caller's (new cookie, new CSRF token). 403 for a wrong current password."""
    cookie, row = await auth.change_own_password(
        principal, body.current_password, body.new_password, address=client_address(request)
    )
    return await _session(request, response, auth, cookie, row)


@router.post("/setup", response_model=SessionPublic, status_code=201)
async def setup(
    body: SetupRequest, request: Request, response: Response, auth: AuthDep
) -> SessionPublic:
    """Create the first admin with the one-time token of the setup link printed at the first
    start, and log them in. 403 once used, or when users exist."""
    address = client_address(request)
    admin = await auth.setup_admin(body.token, body.username, body.password, address=address)
    cookie, row = await auth.start_session(admin.name, address=address)
    return await _session(request, response, auth, cookie, row)
