"""The ASGI app of `fieldhub up`: the platform's lifespan, its parts on `app.state`, the routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp

from fieldhub import __version__
from fieldhub.api.errors import install_error_handlers
from fieldhub.api.request_ids import RequestIds
from fieldhub.api.routes import (
    alarms,
    audit,
    auth,
    command_states,
    commands,
    dead_letters,
    device_credentials,
    devices,
    export,
    fastapi_compat,
    flask_compat,
    fleet,
    health,
    ingest,
    live,
    ml,
    notifications,
    rules,
    system,
    tokens,
    users,
)
from fieldhub.platform import Platform
from fieldhub.web import pages

log = logging.getLogger("fieldhub")

# The Host names a demo (no authentication, loopback only) answers to.
DEMO_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


class FieldhubApp(FastAPI):
    """FastAPI with the request-id middleware around its whole stack. `add_middleware` would
    put it inside Starlette's ServerErrorMiddleware, whose 500 answers would then go out
    without an X-Request-ID and be logged without the request's id."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIds(super().build_middleware_stack())


def create_app(platform: Platform, *, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The ASGI app; its lifespan starts and stops the platform."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await platform.stop()

    app = FieldhubApp(
        title="fieldhub",
        version=__version__,
        description="Telemetry, devices and dead letters of an ESP32 fleet.",
        lifespan=lifespan,
    )
    if not platform.settings.auth:
        # Demo mode is open, and only loopback can reach it; but a web page the user visits can
        # point a name it controls at 127.0.0.1 (DNS rebinding) and then read the open API as
        # a same-origin page. Answering only requests addressed to a loopback name stops that.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(DEMO_HOSTS))
    # One attribute per part: routes depend on the part they use (api/deps.py), not on Platform.
    app.state.store = platform.store
    app.state.commands = platform.commands
    app.state.ingest = platform.ingest
    app.state.decoder = platform.decoder
    app.state.status = platform.status
    app.state.live = platform.live
    app.state.registry = platform.registry
    app.state.auth = platform.auth
    app.state.device_access = platform.device_access
    app.state.rules = platform.rules
    app.state.ml = platform.ml
    install_error_handlers(app)
    for module in (
        health,
        devices,
        device_credentials,
        commands,
        command_states,
        dead_letters,
        ingest,
        system,
        live,
        flask_compat,
        fastapi_compat,
        export,
        fleet,
        auth,
        users,
        tokens,
        audit,
        rules,
        alarms,
        notifications,
        ml,
    ):
        app.include_router(module.router)
    pages.mount(app)
    return app
