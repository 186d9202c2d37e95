"""The dashboard's pages: server-rendered with Jinja2, kept live by the ES modules in static/.

Each page renders complete from the store (a reload never loses anything), then the ES module
subscribes to `/api/v1/live` and patches the page in place. No build step, no Node at runtime.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from fieldhub import clock
from fieldhub.api.cursors import decode_cursor, encode_cursor
from fieldhub.api.deps import DecoderDep, StatusDep, StoreDep, WindowLoopDep
from fieldhub.errors import Invalid
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.protocol.messages import RejectReason
from fieldhub.protocol.payload import payload_preview
from fieldhub.rules.model import RULE_ID_PATTERN
from fieldhub.security.roles import Role
from fieldhub.store.types import AlarmRow, AlarmState, PresenceState
from fieldhub.web import login
from fieldhub.web.access import (
    AdminPage,
    LoginRequired,
    PageForbidden,
    ViewerPage,
    login_url,
)
from fieldhub.web.templating import HERE, templates

router = APIRouter(include_in_schema=False)

FLEET_PAGE_ROWS = 50
DEAD_LETTER_PAGE_ROWS = 50
AUDIT_PAGE_ROWS = 50
NOTIFICATION_PAGE_ROWS = 50
# The alarms page: every open alarm up to this many, then the most recent cleared ones.
OPEN_ALARM_ROWS = 500
CLEARED_ALARM_ROWS = 50
# Open alarms counted for the fleet page's badges: beyond this the total says "N+".
ALARM_COUNT_LIMIT = 1000
# Open alarms list first, active before acknowledged; within a state newest first.
ALARM_STATE_ORDER: dict[str, int] = {"active": 0, "acknowledged": 1, "cleared": 2}
DAY_US = 86_400 * 1_000_000

# Offered in the audit page's action filter (any action can still be typed): what
# fieldhub.security records today. Kept here, not imported, so the page does not break when an
# action is added; the filter matches the stored name exactly.
AUDIT_ACTIONS = (
    "login",
    "login_failed",
    "logout",
    "setup",
    "command.send",
    "command.cancel",
    "user.create",
    "user.update",
    "user.delete",
    "token.create",
    "token.revoke",
    "device.provision",
    "device.rotate",
    "device.revoke",
)


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
    _viewer: ViewerPage,
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
    open_alarms = await store.list_alarms(state="open", limit=ALARM_COUNT_LIMIT + 1)
    context = {
        "page": "fleet",
        "devices": page,
        "latest": latest,
        "alarms_by_device": _by_device(open_alarms[:ALARM_COUNT_LIMIT]),
        "open_alarms": min(len(open_alarms), ALARM_COUNT_LIMIT),
        "open_alarms_more": len(open_alarms) > ALARM_COUNT_LIMIT,
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
async def device(
    request: Request, _viewer: ViewerPage, store: StoreDep, loop: WindowLoopDep, device_id: str
) -> Response:
    """Charts per metric (history, then live), attributes, presence timeline; the window
    loop's decisions for a device it decided for or was configured for (device.js)."""
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
    alarms = await store.list_alarms(state="open", device=row.device_id, limit=OPEN_ALARM_ROWS)
    context = {
        "page": "device",
        "device": row,
        "metrics": await store.device_metrics(row.device_id),
        "alarms": _alarm_order(alarms),
        # The "Window decisions" section: only where the loop decided or was told how to.
        "window_loop": loop.is_configured(row.device_id)
        or bool(await store.list_ml_decisions(device=row.device_id, limit=1)),
    }
    return templates.TemplateResponse(request, "device.html", context)


def _by_device(alarms: list[AlarmRow]) -> dict[str, list[str]]:
    """Open alarm ids per device (the fleet page's badges)."""
    found: dict[str, list[str]] = {}
    for alarm in alarms:
        found.setdefault(alarm.device_id, []).append(alarm.alarm_id)
    return found


def _alarm_order(alarms: list[AlarmRow]) -> list[AlarmRow]:
    """Active first, then acknowledged, then cleared; newest first within each (the order
    static/alarms.js keeps when a live frame moves a row)."""
    return sorted(alarms, key=lambda a: (ALARM_STATE_ORDER[a.state], -a.raised_us, a.alarm_id))


@router.get("/alarms", response_class=HTMLResponse)
async def alarms(
    request: Request,
    _viewer: ViewerPage,
    store: StoreDep,
    state: Literal["open", "active", "acknowledged", "cleared", ""] = "",
    device: Annotated[str | None, Query(max_length=200)] = None,
    rule: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Open alarms first (active, then acknowledged), then recent cleared ones; filters by
    state, device and rule; acknowledge and clear for operators (alarms.js, through the API)."""
    device_id = _device_param(device, "device")
    rule_id = (rule or "").strip() or None
    if rule_id is not None and not re.fullmatch(RULE_ID_PATTERN, rule_id):
        raise Invalid(f"rule: {rule_id!r} is not a rule id")
    wanted: AlarmState | Literal["open"] | None = state or None
    rows: list[AlarmRow] = []
    if wanted in (None, "open", "active", "acknowledged"):
        rows += await store.list_alarms(
            state=wanted or "open", device=device_id, rule_id=rule_id, limit=OPEN_ALARM_ROWS
        )
    if wanted in (None, "cleared"):
        rows += await store.list_alarms(
            state="cleared", device=device_id, rule_id=rule_id, limit=CLEARED_ALARM_ROWS
        )
    filters = {"state": state, "device": device_id or "", "rule": rule_id or ""}
    context = {
        "page": "alarms",
        "alarms": _alarm_order(rows),
        "filters": filters,
        "filtered": any(filters.values()),
        "rules": [r.rule_id for r in await store.list_rules()],
        "cleared_rows": CLEARED_ALARM_ROWS,
    }
    return templates.TemplateResponse(request, "alarms.html", context)


def _first_device(scope: object) -> str:
    """The device a rule page previews first: the scope's own device (or its first listed),
    else none (the page asks for one)."""
    if not isinstance(scope, dict):
        return ""
    if isinstance(scope.get("device"), str):
        return str(scope["device"])
    devices = scope.get("devices")
    if isinstance(devices, list) and devices and isinstance(devices[0], str):
        return devices[0]
    return ""


@router.get("/rules", response_class=HTMLResponse)
async def rules(request: Request, _viewer: ViewerPage, store: StoreDep) -> Response:
    """Every rule's current version: enabled, severity, scope and condition at a glance."""
    rows = await store.list_rules()
    context = {
        "page": "rules",
        "rules": [(row, _compact(row.document.get("condition"))) for row in rows],
        "scopes": {row.rule_id: _compact(row.document.get("scope")) for row in rows},
    }
    return templates.TemplateResponse(request, "rules.html", context)


@router.get("/rules/{rule_id}", response_class=HTMLResponse)
async def rule(
    request: Request,
    _viewer: ViewerPage,
    store: StoreDep,
    rule_id: str,
    device: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """One rule: its document (admins edit it), its alarms, and its preview drawn on the
    metric's chart (operators; rule.js through POST /api/v1/rules/preview)."""
    row = await store.get_rule(rule_id) if re.fullmatch(RULE_ID_PATTERN, rule_id) else None
    if row is None or row.deleted_us is not None:
        return templates.TemplateResponse(
            request,
            "not_found.html",
            {"page": "none", "what": f"rule {rule_id}"},
            status_code=404,
        )
    device_id = _device_param(device, "device") or _first_device(row.document.get("scope"))
    context = {
        "page": "rules",
        "rule": row,
        "document": json.dumps(row.document, indent=2, ensure_ascii=False),
        "device": device_id,
        "alarms": _alarm_order(
            await store.list_alarms(state="open", rule_id=row.rule_id, limit=OPEN_ALARM_ROWS)
        ),
    }
    return templates.TemplateResponse(request, "rule.html", context)


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")) if value else ""


@router.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters(
    request: Request,
    _viewer: ViewerPage,
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


@router.get("/ml", response_class=HTMLResponse)
async def ml(
    request: Request,
    _viewer: ViewerPage,
    device: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The window loop (docs/ml.md): decisions per device, the confidence histogram, latency,
    accuracy against later manual commands, a device's window against the model, feature
    correlations, recent decisions and the model versions (ml.js, refreshed from the API;
    admins activate and roll back there)."""
    context = {"page": "ml", "device": _device_param(device, "device") or ""}
    return templates.TemplateResponse(request, "ml.html", context)


@router.get("/system", response_class=HTMLResponse)
async def system(request: Request, _viewer: ViewerPage, status: StatusDep) -> Response:
    """Ingest rate, batch latency, queues, drops, broker state; updated every second."""
    context = {"page": "system", "status": await status.snapshot()}
    return templates.TemplateResponse(request, "system.html", context)


@router.get("/audit", response_class=HTMLResponse)
async def audit(
    request: Request,
    _admin: AdminPage,
    store: StoreDep,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The audit log, newest first, filtered by actor and action; admins only."""
    before = decode_cursor(cursor, int)[0] if cursor else None
    actor = (actor or "").strip() or None
    action = (action or "").strip() or None
    rows = await store.list_audit(
        limit=AUDIT_PAGE_ROWS + 1, before_seq=before, actor=actor, action=action
    )
    page = rows[:AUDIT_PAGE_ROWS]
    filters = {k: v for k, v in (("actor", actor), ("action", action)) if v}
    next_cursor = encode_cursor(page[-1].seq) if len(rows) > AUDIT_PAGE_ROWS else None
    context = {
        "page": "audit",
        "entries": [(row, _detail_text(row.detail)) for row in page],
        "filters": {"actor": actor or "", "action": action or ""},
        "filtered": bool(filters),
        "query": urlencode(filters),
        "next_query": urlencode({**filters, "cursor": next_cursor}) if next_cursor else None,
        "first_page": cursor is None,
        "actions": AUDIT_ACTIONS,
    }
    return templates.TemplateResponse(request, "audit.html", context)


@router.get("/notifications", response_class=HTMLResponse)
async def notifications(
    request: Request,
    _admin: AdminPage,
    store: StoreDep,
    rule: Annotated[str | None, Query(max_length=64)] = None,
    alarm: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The notification log: every delivery attempt of the rules' webhooks, e-mails, MQTT
    publishes and commands, newest first; admins only (targets are who gets paged)."""
    before = decode_cursor(cursor, int)[0] if cursor else None
    rule_id = (rule or "").strip() or None
    if rule_id is not None and not re.fullmatch(RULE_ID_PATTERN, rule_id):
        raise Invalid(f"rule: {rule_id!r} is not a rule id")
    alarm_id = (alarm or "").strip() or None
    rows = await store.list_notification_log(
        limit=NOTIFICATION_PAGE_ROWS + 1, before_seq=before, rule_id=rule_id, alarm_id=alarm_id
    )
    page = rows[:NOTIFICATION_PAGE_ROWS]
    filters = {k: v for k, v in (("rule", rule_id), ("alarm", alarm_id)) if v}
    next_cursor = encode_cursor(page[-1].seq) if len(rows) > NOTIFICATION_PAGE_ROWS else None
    context = {
        "page": "notifications",
        "entries": [(row, _detail_text(row.detail)) for row in page],
        "filters": {"rule": rule_id or "", "alarm": alarm_id or ""},
        "filtered": bool(filters),
        "query": urlencode(filters),
        "next_query": urlencode({**filters, "cursor": next_cursor}) if next_cursor else None,
        "first_page": cursor is None,
    }
    return templates.TemplateResponse(request, "notifications.html", context)


def _detail_text(detail: dict[str, object]) -> str:
    return json.dumps(detail, sort_keys=True, default=str) if detail else ""


@router.get("/admin", response_class=HTMLResponse)
async def admin(request: Request, _admin: AdminPage, store: StoreDep) -> Response:
    """Users and API tokens (admin.js creates and revokes through /api/v1); admins only."""
    context = {
        "page": "admin",
        "users": await store.list_users(),
        "tokens": await store.list_api_tokens(),
        "roles": [role.value for role in Role],
        "now_us": clock.now_us(),
    }
    return templates.TemplateResponse(request, "admin.html", context)


async def _to_login(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    # 303: the browser follows with a GET whatever the method was.
    return RedirectResponse(login_url(exc.next_path), status_code=303)


async def _forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageForbidden)
    context = {"page": "none", "needed": exc.needed.value}
    return templates.TemplateResponse(request, "forbidden.html", context, status_code=403)


def mount(app: FastAPI) -> None:
    """Add the pages, the login and setup pages and their static files to `app`."""
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(PageForbidden, _forbidden)
    app.include_router(login.router)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
