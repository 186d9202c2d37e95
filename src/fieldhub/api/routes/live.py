"""`/api/v1/live`: the WebSocket of docs/live.md.

Who may open it (docs/security.md): the handshake must carry an API token
(`Authorization: Bearer`, for programs) or the session cookie (browsers: a page of the
dashboard sends it by itself; no token in the URL, where logs and history would keep it). A
browser's `Origin` must be the page's own site or one of settings.http_origins, which stops a
page on another site from reading the fleet through a signed-in browser (the cookie is
SameSite=Strict too) or through a demo instance on the same machine. A refused handshake is
closed before it is accepted (code 1008, which the HTTP server sends as a 403). An open socket
checks its credentials again every REAUTH_INTERVAL_S and closes (1008) once they stop checking:
a revoked token or an ended session does not keep streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from fieldhub.api.auth import auth_service, authenticate, client_address, origin_allowed
from fieldhub.errors import Unauthenticated
from fieldhub.live.hub import LiveHub, Viewer, encode
from fieldhub.live.subscriptions import Subscribe

router = APIRouter(tags=["live"])
log = logging.getLogger("fieldhub.live")

# WebSocket close code "policy violation" (RFC 6455): no or bad credentials, foreign Origin.
POLICY_VIOLATION = 1008
REAUTH_INTERVAL_S = 60.0

# A subscribe frame lists at most 1,000 ids; anything bigger is not one.
MAX_CLIENT_FRAME_BYTES = 64 * 1024


def _error(code: str, message: str) -> str:
    return encode({"type": "error", "error": {"code": code, "message": message}})


def _parse(raw: str | bytes | None) -> Subscribe | str:
    """The subscription in a client frame, or the error frame to answer with."""
    if raw is None:
        return _error("bad_frame", "send JSON text frames")
    size = len(raw.encode()) if isinstance(raw, str) else len(raw)
    if size > MAX_CLIENT_FRAME_BYTES:
        return _error("frame_too_large", f"frames are at most {MAX_CLIENT_FRAME_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _error("malformed_json", f"not JSON: {exc}")
    try:
        return Subscribe.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'frame'}: {e['msg']}" for e in exc.errors()
        )
        return _error("invalid_subscription", problems)


async def _send_frames(websocket: WebSocket, viewer: Viewer) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while True:
            await websocket.send_text(await viewer.next_frame())


async def refusal(websocket: WebSocket) -> str | None:
    """Why the handshake is refused, or None when it may be accepted."""
    origin = websocket.headers.get("origin")
    # No Origin: not a browser (browsers always send one on a WebSocket); credentials decide.
    if origin is not None and not origin_allowed(
        origin, websocket.headers.get("host"), auth_service(websocket).allowed_origins
    ):
        return f"origin {origin[:100]!r} may not open this socket"
    try:
        principal = await authenticate(websocket)
    except Unauthenticated as exc:
        return exc.message
    if principal is None:
        return "authentication required: an API token (Authorization: Bearer) or a session"
    return None


async def _recheck(websocket: WebSocket) -> None:
    """Close the socket once its credentials stop checking (revoked, expired, logged out)."""
    while True:
        await asyncio.sleep(REAUTH_INTERVAL_S)
        try:
            still = await authenticate(websocket)
        except Unauthenticated:
            still = None
        if still is None:
            with contextlib.suppress(RuntimeError, OSError):
                await websocket.close(code=POLICY_VIOLATION, reason="credentials no longer valid")
            return


@router.websocket("/api/v1/live")
async def live(websocket: WebSocket) -> None:
    """Live readings, presence, devices, dead letters and stats; see docs/live.md."""
    hub: LiveHub = websocket.app.state.live
    reason = await refusal(websocket)
    if reason is not None:
        log.info("live socket refused from %s: %s", client_address(websocket) or "-", reason)
        await websocket.close(code=POLICY_VIOLATION, reason=reason[:120])
        return
    await websocket.accept()
    recheck = (
        asyncio.create_task(_recheck(websocket), name="live.reauth")
        if auth_service(websocket).enabled
        else None
    )
    viewer = hub.new_viewer()
    viewer.push(hub.hello())
    sender = asyncio.create_task(_send_frames(websocket, viewer), name="live.send")
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            parsed = _parse(message.get("text") or message.get("bytes"))
            if isinstance(parsed, str):
                viewer.push(parsed)
                continue
            key = parsed.key()
            hub.attach(viewer, key)
            viewer.push(encode({"type": "subscribed", **key.describe()}))
    except WebSocketDisconnect:
        pass
    finally:
        hub.detach(viewer)
        for task in (sender, recheck):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
