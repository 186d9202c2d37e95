"""`/api/v1/live`: the WebSocket of docs/live.md."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from fieldhub.live.hub import LiveHub, Viewer, encode
from fieldhub.live.subscriptions import Subscribe

router = APIRouter(tags=["live"])

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


@router.websocket("/api/v1/live")
async def live(websocket: WebSocket) -> None:
    """Live readings, presence, devices, dead letters and stats; see docs/live.md."""
    hub: LiveHub = websocket.app.state.live
    await websocket.accept()
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
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
