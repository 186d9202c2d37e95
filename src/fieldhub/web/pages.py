"""The dashboard's pages: server-rendered with Jinja2, kept live by the ES modules in static/.

Each page renders complete from the store (a reload never loses anything), then the ES module
subscribes to `/api/v1/live` and patches the page in place. No build step, no Node at runtime.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from fieldhub import __version__, clock
from fieldhub.api.cursors import decode_cursor, encode_cursor
from fieldhub.api.deps import DecoderDep, StatusDep, StoreDep
from fieldhub.errors import Invalid
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.protocol.messages import RejectReason
from fieldhub.protocol.payload import payload_preview
from fieldhub.protocol.timestamps import format_us
from fieldhub.store.types import PresenceState

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

FLEET_PAGE_ROWS = 50
DEAD_LETTER_PAGE_ROWS = 50
DAY_US = 86_400 * 1_000_000


def format_value(value: float) -> str:
    """A reading as the dashboard shows it: at most two decimals, no trailing zeros.

    static/format.js formats live values the same way (`formatValue`); keep them in step.
    """
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _ago(ts_us: int | None) -> str:
    if ts_us is None:
        return ""
    seconds = max(0, int(time.time() - ts_us / 1e6))
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


templates.env.filters["value"] = format_value
templates.env.filters["iso"] = lambda us: format_us(us) if us is not None else ""
templates.env.filters["ago"] = _ago
templates.env.globals["version"] = __version__


def _device_param(raw: str | None, field: str) -> str | None:
    if not raw:
        return None
    try:
        return canonical_device_id(raw)
    except InvalidDeviceId as exc:
        raise Invalid(f"{field}: {exc}") from None


@router.get("/", response_class=HTMLResponse)
async def fleet(
    request: Request,
    store: StoreDep,
    decoder: DecoderDep,
    status: StatusDep,
    search: Annotated[str | None, Query(max_length=100)] = None,
    presence: Literal["online", "offline", "stale", ""] = "",
    profile: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = FLEET_PAGE_ROWS,
    fragment: Literal["rows", ""] = "",
) -> Response:
    """Every device with presence, last values and last seen; filters; counts on top."""
    now = clock.now_us()
    after = decode_cursor(cursor, str)[0] if cursor else None
    state: PresenceState | None = presence or None
    filters = {"profile": profile or None, "presence": state, "search": search or None}
    rows = await store.list_devices(
        profile=profile or None,
        presence=state,
        search=search or None,
        limit=limit + 1,
        after=after,
        now_us=now,
    )
    page = rows[:limit]
    latest = await store.latest_values([r.device_id for r in page])
    context = {
        "page": "fleet",
        "devices": page,
        "latest": latest,
        "next_cursor": encode_cursor(page[-1].device_id) if len(rows) > limit else None,
        "matching": await store.count_devices(
            profile=profile or None, presence=state, search=search or None, now_us=now
        ),
        "filters": {"search": search or "", "presence": presence, "profile": profile or ""},
        "filtered": any(filters.values()),
        "query": urlencode({k: v for k, v in filters.items() if v}),
        "first_page": cursor is None,
        "profiles": [p.name for p in decoder.table.profiles],
        "limit": limit,
        "status": await status.snapshot(),
    }
    name = "fleet_rows.html" if fragment == "rows" else "fleet.html"
    return templates.TemplateResponse(request, name, context)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
async def device(request: Request, store: StoreDep, device_id: str) -> Response:
    """Charts per metric (history, then live), attributes, presence timeline."""
    now = clock.now_us()
    canonical = _device_param(device_id, "device")
    row = await store.get_device(canonical, now_us=now) if canonical else None
    if row is None:
        return templates.TemplateResponse(
            request,
            "not_found.html",
            {"page": "none", "what": f"device {device_id}"},
            status_code=404,
        )
    context = {
        "page": "device",
        "device": row,
        "metrics": await store.device_metrics(row.device_id),
    }
    return templates.TemplateResponse(request, "device.html", context)


@router.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters(
    request: Request,
    store: StoreDep,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    device: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Rejected messages, newest first, filtered by reason and device."""
    device_id = _device_param(device, "device")
    before = decode_cursor(cursor, int)[0] if cursor else None
    rows = await store.list_dead_letters(
        limit=DEAD_LETTER_PAGE_ROWS + 1,
        before_id=before,
        reason=reason or None,
        device_id=device_id,
    )
    page = rows[:DEAD_LETTER_PAGE_ROWS]
    context = {
        "page": "dead-letters",
        "letters": [(r, payload_preview(r.payload)) for r in page],
        "next_cursor": encode_cursor(page[-1].id) if len(rows) > DEAD_LETTER_PAGE_ROWS else None,
        "reasons": [r.value for r in RejectReason],
        "filters": {"reason": reason or "", "device": device_id or ""},
        "first_page": cursor is None,
    }
    return templates.TemplateResponse(request, "dead_letters.html", context)


@router.get("/system", response_class=HTMLResponse)
async def system(request: Request, status: StatusDep) -> Response:
    """Ingest rate, batch latency, queues, drops, broker state; updated every second."""
    context = {"page": "system", "status": await status.snapshot()}
    return templates.TemplateResponse(request, "system.html", context)


def mount(app: FastAPI) -> None:
    """Add the pages and their static files to `app`."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
