"""Every route of the real app is behind authentication, or on the documented public list.

Walks `app.routes` of the app `fieldhub up` serves (built, not started) and looks for the auth
dependency in each route's dependency tree: a new router without `require(...)` fails here
before it ships open."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute, RouteContext, iter_route_contexts
from starlette.routing import Mount, Route

from fieldhub.api.auth import PUBLIC_PATHS, current_principal, require
from fieldhub.app import create_app
from fieldhub.config import Settings
from fieldhub.net import free_port
from fieldhub.platform import Platform
from fieldhub.security.roles import Role

# The pages that come before a session (web/login.py): they are how one gets one.
PUBLIC_PAGES = frozenset(
    {
        ("/login", "GET"),
        ("/login", "POST"),
        ("/logout", "POST"),
        ("/setup", "GET"),
        ("/setup", "POST"),
    }
)
PUBLIC_MOUNTS = frozenset({"/static"})  # scripts, styles, vendored uPlot: no data
# Checked by hand in the handler (a dependency cannot refuse before accept with 1008):
# tests/security/test_http_auth.py shows the refusals.
CHECKED_SOCKETS = frozenset({"/api/v1/live"})


def build_app(tmp_path: Path) -> FastAPI:
    settings = Settings(data_dir=tmp_path, mqtt_port=free_port(), auth=True)
    return create_app(Platform(settings, mqtt_port=settings.mqtt_port))


def calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from calls(dependency)


def routes(app: FastAPI) -> Iterator[RouteContext]:
    """Every route as served, included routers flattened (their dependencies merged in)."""
    return iter_route_contexts(app.routes)


def guard_of(route: RouteContext) -> str | None:
    """What authenticates the route: the API's principal or a page's; None when nothing."""
    for call in calls(route.dependant):
        if call is current_principal:
            return "api"
        if call.__module__ == "fieldhub.web.access" and call.__name__.startswith("page_for_"):
            return "page"
    return None


def test_every_route_needs_credentials_or_is_documented_public(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    open_routes: list[str] = []
    seen_public: set[str] = set()
    for route in routes(app):
        kind = route.original_route
        if isinstance(kind, APIRoute):
            methods = sorted(route.methods or ())
            if route.path in PUBLIC_PATHS:
                seen_public.add(route.path)
                continue
            if all((route.path, m) in PUBLIC_PAGES for m in methods):
                continue
            if guard_of(route) is None:
                open_routes.append(f"{','.join(methods)} {route.path}")
        elif isinstance(kind, APIWebSocketRoute):
            if route.path not in CHECKED_SOCKETS:
                open_routes.append(f"WEBSOCKET {route.path}")
        elif isinstance(kind, Mount):
            if route.path not in PUBLIC_MOUNTS:
                open_routes.append(f"MOUNT {route.path}")
        elif isinstance(kind, Route):
            # FastAPI's own: /openapi.json, /docs, /redoc.
            if route.path not in PUBLIC_PATHS:
                open_routes.append(f"ROUTE {route.path}")
        else:
            open_routes.append(f"{type(kind).__name__} {route.path}")
    assert open_routes == [], f"routes without authentication: {open_routes}"
    assert {"/healthz", "/api/v1/auth/login", "/api/v1/auth/setup"} <= seen_public


ADMIN_PREFIXES = ("/api/v1/users", "/api/v1/tokens", "/api/v1/audit", "/api/v1/notifications")
# Rule writes are an admin's (a rule sends commands and pages people); reads stay a viewer's
# and the preview (it changes nothing) an operator's.
ADMIN_WRITES = ("/api/v1/rules/{rule_id}",)


def needed_role(route: RouteContext) -> Role | None:
    """The highest role the route's dependencies require."""
    needed = [role for role in Role if require(role) in set(calls(route.dependant))]
    return max(needed, key=lambda r: r.rank) if needed else None


def test_roles_of_the_routes(tmp_path: Path) -> None:
    """viewer reads; operator sends and cancels commands, writes readings, previews rules and
    acknowledges and clears alarms; admin users, tokens, the audit log, rule writes and the
    notification log."""
    app = build_app(tmp_path)
    roles: dict[tuple[str, str], Role | None] = {}
    for route in routes(app):
        path = route.path or ""
        if isinstance(route.original_route, APIRoute) and path.startswith(("/api", "/metrics")):
            for method in route.methods or ():
                roles[(method, path)] = needed_role(route)
    for (method, path), role in sorted(roles.items()):
        if path in PUBLIC_PATHS:
            assert role is None, (method, path)
        elif (
            path.startswith(ADMIN_PREFIXES)
            or "credential" in path
            or (path.startswith(ADMIN_WRITES) and method != "GET")
        ):
            assert role is Role.ADMIN, (method, path)
        elif path.startswith("/api/v1/auth/") or method == "GET":
            assert role is Role.VIEWER, (method, path)
        else:
            assert role is not None, (method, path)
            assert role.at_least(Role.OPERATOR), (method, path)
    assert roles[("POST", "/api/v1/devices/{device_id}/commands")] is Role.OPERATOR
    assert roles[("DELETE", "/api/v1/devices/{device_id}/commands/{command_id}")] is Role.OPERATOR
    assert roles[("POST", "/api/nodes/{node_id}/actions")] is Role.OPERATOR
    assert roles[("GET", "/metrics")] is Role.VIEWER
    assert roles[("PUT", "/api/v1/rules/{rule_id}")] is Role.ADMIN
    assert roles[("DELETE", "/api/v1/rules/{rule_id}")] is Role.ADMIN
    assert roles[("POST", "/api/v1/rules/preview")] is Role.OPERATOR
    assert roles[("GET", "/api/v1/rules/{rule_id}/versions")] is Role.VIEWER
    assert roles[("GET", "/api/v1/alarms")] is Role.VIEWER
    assert roles[("POST", "/api/v1/alarms/{alarm_id}/acknowledge")] is Role.OPERATOR
    assert roles[("POST", "/api/v1/alarms/{alarm_id}/clear")] is Role.OPERATOR
    assert roles[("GET", "/api/v1/notifications")] is Role.ADMIN


def test_openapi_documents_both_security_schemes(tmp_path: Path) -> None:
    schema = build_app(tmp_path).openapi()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["apiToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["apiToken"]["description"],
    }
    assert schemes["session"]["type"] == "apiKey"
    assert schemes["session"]["in"] == "cookie"
    assert schemes["session"]["name"] == "fieldhub_session"
    devices = schema["paths"]["/api/v1/devices"]["get"]
    assert {"apiToken": []} in devices["security"]
    assert {"session": []} in devices["security"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
