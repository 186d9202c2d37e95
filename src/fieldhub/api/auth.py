"""Authentication and roles for the API: FastAPI dependencies over `AuthService`.

Credentials, in this order: `Authorization: Bearer fh_...` (an API token, for programs), else
the `fieldhub_session` cookie (the dashboard, after `POST /api/v1/auth/login`). A request with
neither answers 401 with `WWW-Authenticate: Bearer`; one whose role is below the route's answers
403. A request authenticated by the cookie that changes state (POST, PUT, PATCH, DELETE) must
also carry its session's CSRF token in `X-CSRF-Token` (or a `csrf_token` form field): a cookie is
sent by the browser whoever made the page, a header only by the dashboard's own scripts. Bearer
requests need none (no browser adds that header by itself).

With authentication off (demo mode, loopback only) every request is the demo principal (admin).

Every route uses `require(role)` (or one of the `*Dep` aliases); the only routes without it are
`PUBLIC_PATHS`, which tests/security/test_route_auth.py holds every route of the app to.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyCookie, HTTPBearer
from starlette.requests import HTTPConnection

from fieldhub.errors import Forbidden, Unauthenticated
from fieldhub.security.principal import DEMO_PRINCIPAL, Principal
from fieldhub.security.roles import Role
from fieldhub.security.service import AuthService
from fieldhub.security.sessions import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE
from fieldhub.security.tokens import same_secret

# Served without credentials. /healthz: load balancers and `fieldhub up`'s own checks probe it
# and it tells nothing about the fleet. Login and setup: they are how one gets credentials.
# The OpenAPI document and its pages: they describe the API, hold no data, and /docs is where a
# new user learns to authenticate. /static: the dashboard's scripts and styles (no data).
# /metrics is NOT public: its labels name devices and its counters tell activity; Prometheus
# scrapes it with a viewer API token (`authorization: {credentials: fh_...}` in its job).
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/api/v1/auth/login",
        "/api/v1/auth/setup",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
    }
)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Declared for OpenAPI (so /docs offers both and each operation lists them); the checking is
# done by `authenticate`, which also serves the WebSocket.
bearer_scheme = HTTPBearer(
    scheme_name="apiToken",
    description="An API token, `Authorization: Bearer fh_<id>_<secret>` (POST /api/v1/tokens)",
    auto_error=False,
)
cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    scheme_name="session",
    description="The dashboard's session (POST /api/v1/auth/login); POST, PUT, PATCH and DELETE "
    f"also need the session's CSRF token in `{CSRF_HEADER}`",
    auto_error=False,
)


def auth_service(connection: HTTPConnection) -> AuthService:
    """The app's AuthService. No fallback when missing: a route must never be open because a
    part was not wired."""
    service: AuthService = connection.app.state.auth
    return service


async def get_auth(request: Request) -> AuthService:
    return auth_service(request)


AuthDep = Annotated[AuthService, Depends(get_auth)]


def client_address(connection: HTTPConnection) -> str | None:
    """The peer's address, for the audit log and the login throttle. Behind a reverse proxy
    this is the proxy's (run uvicorn with --forwarded-allow-ips to take X-Forwarded-For)."""
    return connection.client.host if connection.client else None


async def authenticate(connection: HTTPConnection) -> Principal | None:
    """Who the request's credentials name: None when it has none; Unauthenticated when it has
    some that do not check (they are not ignored in favour of the next kind: a client that sent
    a revoked token must learn so). Serves HTTP requests and the WebSocket handshake alike."""
    auth = auth_service(connection)
    if not auth.enabled:
        return DEMO_PRINCIPAL
    header = connection.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("use `Authorization: Bearer <API token>`")
        principal = await auth.principal_for_token(value.strip())
        if principal is None:
            raise Unauthenticated("the API token is unknown, expired or revoked")
        return principal
    cookie = connection.cookies.get(SESSION_COOKIE)
    if cookie:
        principal = await auth.principal_for_session(cookie)
        if principal is None:
            raise Unauthenticated("the session has ended; log in again")
        return principal
    return None


async def check_csrf(request: Request, principal: Principal) -> None:
    """Refuse a state-changing request authenticated by the session cookie without the
    session's CSRF token (header, or form field for HTML forms)."""
    if principal.kind != "user" or request.method in SAFE_METHODS:
        return
    given = request.headers.get(CSRF_HEADER)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not given and media in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not same_secret(given, principal.csrf_token):
        raise Forbidden(
            f"a request with the session cookie that changes something needs the session's "
            f"CSRF token in {CSRF_HEADER} (GET /api/v1/auth/me gives it)",
            code="csrf_failed",
        )


async def current_principal(
    request: Request,
    _bearer: Annotated[object, Security(bearer_scheme)] = None,
    _session: Annotated[object, Security(cookie_scheme)] = None,
) -> Principal:
    """The request's principal (401 without credentials; CSRF checked for cookie requests).
    FastAPI caches it per request, so a router's and a route's `require` share one lookup."""
    principal = await authenticate(request)
    if principal is None:
        raise Unauthenticated(
            "authentication required: an API token (Authorization: Bearer) or a session "
            "(POST /api/v1/auth/login)"
        )
    await check_csrf(request, principal)
    request.state.principal = principal
    return principal


@functools.cache
def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency answering the principal when its role is at least `role`, else 403.

    One callable per role (cached), so FastAPI counts a router-wide and a route's own
    `require(...)` of the same role once."""

    async def dependency(
        request: Request, principal: Annotated[Principal, Depends(current_principal)]
    ) -> Principal:
        if not principal.allows(role):
            await auth_service(request).audit(
                principal,
                "access_denied",
                target=f"{request.method} {request.url.path}",
                address=client_address(request),
                outcome="denied",
                detail={"needed": role.value, "role": principal.role.value},
            )
            raise Forbidden(
                f"this needs the {role.value} role or above; {principal.name} is "
                f"{principal.role.value}"
            )
        return principal

    dependency.__name__ = f"require_{role.value}"
    return dependency


PrincipalDep = Annotated[Principal, Depends(require(Role.VIEWER))]
OperatorDep = Annotated[Principal, Depends(require(Role.OPERATOR))]
AdminDep = Annotated[Principal, Depends(require(Role.ADMIN))]
# For `dependencies=[...]` of a router or route that does not use the principal itself.
VIEWER = Depends(require(Role.VIEWER))
OPERATOR = Depends(require(Role.OPERATOR))
ADMIN = Depends(require(Role.ADMIN))


async def audit_request(
    request: Request,
    principal: Principal,
    action: str,
    *,
    target: str | None = None,
    outcome: str = "ok",
    detail: dict[str, object] | None = None,
) -> None:
    """Record what `principal` did through this request, from the request's address."""
    await auth_service(request).audit(
        principal,
        action,
        target=target,
        address=client_address(request),
        outcome=outcome,
        detail=detail,
    )


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin_key(scheme: str, host: str, port: int | None) -> str:
    default = _DEFAULT_PORTS.get(scheme)
    shown = "" if port is None or port == default else f":{port}"
    return f"{host.lower()}{shown}"


def normalize_origin(origin: str) -> str | None:
    """`scheme://host[:port]` lower-cased without a default port; None for what is not one
    (`null`, a path, another scheme)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return None
    return f"{parts.scheme}://{_origin_key(parts.scheme, parts.hostname, port)}"


def origin_allowed(origin: str, host: str | None, allowed: tuple[str, ...] = ()) -> bool:
    """Whether a browser page from `origin` may open the WebSocket: the page's own site (the
    origin's host and port are the request's `Host`), or an origin listed in `allowed`
    (settings.http_origins, already lower-cased)."""
    normal = normalize_origin(origin)
    if normal is None:
        return False
    if normal in {o for o in (normalize_origin(a) for a in allowed) if o}:
        return True
    if not host:
        return False
    scheme, _, origin_host = normal.partition("://")
    try:
        parts = urlsplit(f"//{host.strip()}")
        host_key = _origin_key(scheme, parts.hostname or "", parts.port)
    except ValueError:
        return False
    return bool(parts.hostname) and host_key == origin_host
