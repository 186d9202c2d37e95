"""A request id for every HTTP request: in each log line made while serving it, in the
`X-Request-ID` header of every response, and in one access line when it ends.

Pure ASGI rather than Starlette's BaseHTTPMiddleware: that one runs the app in another task,
so the context variable would not reach it, and it buffers streamed responses (exports). The app
wraps its whole middleware stack in this (app.py), outside Starlette's ServerErrorMiddleware, so
a 500 carries the header too.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fieldhub import logs

HEADER = "X-Request-ID"

# What an incoming X-Request-ID may be to be kept (a proxy's or a client's id, so one id follows
# the request through every log): printable ASCII without spaces, up to 128 characters, which
# fits a UUID, a W3C trace id and the ids proxies make. Anything else (too long, control
# characters, non-ASCII) is replaced by one of ours, so a client cannot put a megabyte or a
# forged line into the log.
INCOMING_ID = re.compile(r"[\x21-\x7e]{1,128}")

access_log = logging.getLogger("fieldhub.access")


def new_request_id() -> str:
    """An id of our own: 32 hex digits (a random UUID), unique enough to find one request."""
    return uuid.uuid4().hex


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID when it is acceptable (`INCOMING_ID`), else a new one."""
    incoming = Headers(scope=scope).get(HEADER)
    if incoming is not None and INCOMING_ID.fullmatch(incoming):
        return incoming
    return new_request_id()


class RequestIds:
    """Sets `fieldhub.logs.request_id` for the request, adds `X-Request-ID` to its response
    and, at debug level, logs one access line: method, path (no query string: it can hold a
    token), status and duration. WebSockets get the id for their logs, no header (the
    handshake's response is the server's)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        token = logs.request_id.set(rid)
        # Handlers reach it as request.state.request_id (the error body, api/errors.py).
        scope.setdefault("state", {})["request_id"] = rid
        if scope["type"] == "websocket":
            try:
                await self.app(scope, receive, send)
            finally:
                logs.request_id.reset(token)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            # Left set: the server logs the exception after this returns, in this task, and
            # that line should carry the id too. The task ends with the request.
            self._access(scope, status or 500, started, rid)
            raise
        self._access(scope, status, started, rid)
        logs.request_id.reset(token)

    @staticmethod
    def _access(scope: Scope, status: int, started: float, rid: str) -> None:
        if not access_log.isEnabledFor(logging.DEBUG):
            return
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        method, path = scope["method"], scope["path"]
        access_log.debug(
            "%s %s %d %.1f ms %s",
            method,
            path,
            status,
            duration_ms,
            rid,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": duration_ms,
                "request_id": rid,
            },
        )
