"""`/api/v1/rules`: rule documents (docs/rules.md). Viewers read; admins write (each write a new
version, audited); operators preview (it reads stored readings and changes nothing, but can be
heavy: a week of a fleet's readings).

A document is sent as JSON or YAML (`Content-Type: application/json` or `application/yaml`) and
validated by `fieldhub.rules.model`: an invalid one answers 422 whose `details` name each field
(`condition.threshold.clear_below`), the same words as `fieldhub rules apply` prints."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
)
from starlette.exceptions import HTTPException

from fieldhub.api.auth import VIEWER, AdminDep, OperatorDep, audit_request
from fieldhub.api.deps import NowDep, RulesDep
from fieldhub.api.errors import BODY_RESPONSES, ERROR_RESPONSES, ErrorResponse
from fieldhub.api.params import parse_time
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.clock import US_PER_S
from fieldhub.errors import FieldhubError, Invalid, NotFound, TooLarge
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.protocol.timestamps import format_us
from fieldhub.rules.model import RULE_ID_PATTERN, Format, Rule, parse_document
from fieldhub.rules.preview import Preview
from fieldhub.schemas import Time
from fieldhub.security.principal import Principal
from fieldhub.store.types import RuleVersionRow

router = APIRouter(
    prefix="/api/v1/rules",
    tags=["rules"],
    # Reading is for viewers; writes take an AdminDep (audited), the preview an OperatorDep.
    dependencies=[VIEWER],
    route_class=AllMethodsRoute,
    responses={
        **ERROR_RESPONSES,
        **BODY_RESPONSES,
        409: {"model": ErrorResponse, "description": "Conflicts with the rule's state"},
        413: {"model": ErrorResponse, "description": "The document is over the size limit"},
    },
)

RuleIdPath = Annotated[str, Path(pattern=RULE_ID_PATTERN, description="The rule's id")]
VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
# A rule document is a few hundred bytes; a scope listing 10,000 device ids is ~250 KB.
MAX_DOCUMENT_BYTES = 1_000_000
# Content types a document may come as; YAML has no registered type, so the usual spellings.
FORMATS: dict[str, Format] = {
    "application/json": "json",
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
    "text/x-yaml": "yaml",
}
# A preview reads every stored reading of the devices in scope over the window: bounded.
MAX_PREVIEW_WINDOW_US = 31 * 86_400 * US_PER_S
DEFAULT_PREVIEW_WINDOW_US = 86_400 * US_PER_S
# Timer ticks a preview runs per device: each is a call on the event loop (a 1-s tick over 31
# days would be 2.7 million); at most this many, so a coarser tick_s for a long window.
MAX_PREVIEW_TICKS = 100_000
# Path segments below /api/v1/rules that are routes, not rule ids.
RESERVED_IDS = frozenset({"preview"})


class RulePublic(BaseModel):
    """One version of a rule: the document as stored, with who stored it and when."""

    id: str
    version: int
    enabled: bool
    author: str = Field(description="A username, `token:<id>`, or `demo`")
    created: Time
    deleted: Time | None = Field(description="When the rule was deleted (its versions stay)")
    document: dict[str, Any]

    @classmethod
    def of(cls, row: RuleVersionRow) -> RulePublic:
        return cls(
            id=row.rule_id,
            version=row.version,
            enabled=row.enabled,
            author=row.author,
            created=format_us(row.created_us),
            deleted=format_us(row.deleted_us) if row.deleted_us is not None else None,
            document=row.document,
        )


class RulesPublic(BaseModel):
    data: list[RulePublic]


class SpanPublic(BaseModel):
    """An alarm the rule would have raised: `cleared` null when still active at the end."""

    fired: Time
    cleared: Time | None
    fired_us: int
    cleared_us: int | None


class PlannedActionPublic(BaseModel):
    """An action that would have run, and why (`fire`, `clear`, `repeat`, `escalate`)."""

    at: Time
    at_us: int
    reason: str
    kind: str
    params: dict[str, Any]


class EdgePublic(BaseModel):
    kind: str
    at: Time
    at_us: int


class DevicePreviewPublic(BaseModel):
    device: str
    edges: list[EdgePublic]
    spans: list[SpanPublic]
    actions: list[PlannedActionPublic]
    truncated: bool = Field(description="true: more actions than a preview lists were planned")

    @classmethod
    def of(cls, device: str, result: Preview) -> DevicePreviewPublic:
        return cls(
            device=device,
            edges=[
                EdgePublic(kind=e.kind, at=format_us(e.ts_us), at_us=e.ts_us) for e in result.edges
            ],
            spans=[
                SpanPublic(
                    fired=format_us(s.fired_us),
                    cleared=format_us(s.cleared_us) if s.cleared_us is not None else None,
                    fired_us=s.fired_us,
                    cleared_us=s.cleared_us,
                )
                for s in result.spans
            ],
            actions=[
                PlannedActionPublic(
                    at=format_us(a.at_us),
                    at_us=a.at_us,
                    reason=a.reason,
                    kind=a.kind,
                    params=a.params,
                )
                for a in result.actions
            ],
            truncated=result.truncated,
        )


class PreviewPublic(BaseModel):
    """What the rule would have done from `start` to `end`, per device in its scope."""

    start: Time
    end: Time
    data: list[DevicePreviewPublic]


TimeParam = Annotated[str, StringConstraints(min_length=1, max_length=64)] | StrictInt | StrictFloat


class PreviewRequest(BaseModel):
    """`POST /api/v1/rules/preview`: a rule document (an object, or JSON/YAML text), the
    devices to run it for (default: every device in its scope) and the window (default: the
    last 24 hours up to now)."""

    model_config = ConfigDict(extra="forbid")

    rule: dict[str, Any] | Annotated[str, StringConstraints(max_length=MAX_DOCUMENT_BYTES)]
    devices: Annotated[list[str], Field(min_length=1, max_length=1_000)] | None = None
    start: TimeParam | None = Field(default=None, description="ISO 8601 or epoch")
    end: TimeParam | None = Field(default=None, description="ISO 8601 or epoch; default now")
    tick_s: Annotated[float, Field(ge=1, le=86_400)] = Field(
        default=60.0, description="Timer period for time-based conditions (no_data, for_s)"
    )


def validated(data: Any, *, where: tuple[str, ...]) -> Rule:
    """A rule from parsed data; 422 whose details locate each invalid field under `where`
    (the error handler names the first one in the message)."""
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {
                    "loc": (*where, *error["loc"]),
                    "msg": str(error["msg"]).removeprefix("Value error, "),
                    "type": error["type"],
                }
                for error in exc.errors()
            ]
        ) from None


def document_format(request: Request) -> Format:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    found = FORMATS.get(media)
    if found is None:
        raise HTTPException(
            415,
            f"send the rule as application/json or application/yaml, not {media or 'nothing'}",
        )
    return found


async def read_document(request: Request, rule_id: str) -> Rule:
    """The request body as a rule document for `rule_id` (a missing `id` is the path's)."""
    fmt = document_format(request)
    body = await request.body()
    if len(body) > MAX_DOCUMENT_BYTES:
        raise TooLarge(f"a rule document is at most {MAX_DOCUMENT_BYTES} bytes")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise Invalid("the document is not UTF-8", code="invalid_rule_document") from None
    data = parse_document(text, format=fmt)
    data.setdefault("id", rule_id)
    if data["id"] != rule_id:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "id"),
                    "msg": f"the document's id {data['id']!r} is not the path's {rule_id!r}",
                    "type": "value_error",
                }
            ]
        )
    return validated(data, where=("body",))


async def rule_exists(rules: RulesDep, rule_id: str) -> bool:
    """Whether the rule has a current version (the engine answers NotFound otherwise)."""
    try:
        await rules.get_rule(rule_id)
    except NotFound:
        return False
    return True


async def audited(
    request: Request,
    principal: Principal,
    action: str,
    rule_id: str,
    detail: dict[str, object],
    outcome: str = "ok",
) -> None:
    await audit_request(
        request, principal, action, target=f"rule:{rule_id}", outcome=outcome, detail=detail
    )


@router.get("", response_model=RulesPublic)
async def list_rules(rules: RulesDep) -> RulesPublic:
    """Every rule's current version, by id (deleted rules left out)."""
    return RulesPublic(data=[RulePublic.of(row) for row in await rules.list_rules()])


@router.post("/preview", response_model=PreviewPublic)
async def preview_rule(
    principal: OperatorDep, rules: RulesDep, now: NowDep, body: PreviewRequest
) -> PreviewPublic:
    """What a rule (need not be stored) would have done over stored readings: the edges, the
    alarm spans and the actions, per device, through the live engine's evaluation code. Nothing
    is sent or stored."""
    data = (
        parse_document(body.rule, format="yaml") if isinstance(body.rule, str) else body.rule
    )  # YAML reads JSON text too
    rule = validated(data, where=("body", "rule"))
    end_us = parse_time("end", str(body.end)) if body.end is not None else now
    assert end_us is not None
    start_us = (
        parse_time("start", str(body.start))
        if body.start is not None
        else end_us - DEFAULT_PREVIEW_WINDOW_US
    )
    assert start_us is not None
    if start_us >= end_us:
        raise Invalid(f"start ({format_us(start_us)}) must be before end ({format_us(end_us)})")
    if end_us - start_us > MAX_PREVIEW_WINDOW_US:
        raise Invalid("a preview covers at most 31 days: narrow start..end")
    if (end_us - start_us) / (body.tick_s * US_PER_S) > MAX_PREVIEW_TICKS:
        raise Invalid(
            f"tick_s: {body.tick_s:g} s over this window is more than {MAX_PREVIEW_TICKS} ticks; "
            f"use at least {math.ceil((end_us - start_us) / US_PER_S / MAX_PREVIEW_TICKS)} s"
        )
    devices: list[str] | None = None
    if body.devices is not None:
        try:
            devices = sorted({canonical_device_id(d) for d in body.devices})
        except InvalidDeviceId as exc:
            raise Invalid(f"devices: {exc}") from None
    results = await rules.preview(
        rule, devices=devices, start_us=start_us, end_us=end_us, tick_s=body.tick_s
    )
    return PreviewPublic(
        start=format_us(start_us),
        end=format_us(end_us),
        data=[DevicePreviewPublic.of(device, results[device]) for device in sorted(results)],
    )


@router.get("/{rule_id}", response_model=RulePublic)
async def get_rule(rules: RulesDep, rule_id: RuleIdPath) -> RulePublic:
    """A rule's current version (404 when unknown or deleted)."""
    return RulePublic.of(await rules.get_rule(rule_id))


@router.get("/{rule_id}/versions", response_model=RulesPublic)
async def rule_versions(rules: RulesDep, rule_id: RuleIdPath) -> RulesPublic:
    """Every version of a rule, oldest first, deleted rules included."""
    rows = await rules.history(rule_id)
    return RulesPublic(data=[RulePublic.of(row) for row in rows])


@router.get("/{rule_id}/versions/{version}", response_model=RulePublic)
async def rule_version(rules: RulesDep, rule_id: RuleIdPath, version: VersionPath) -> RulePublic:
    """One version of a rule."""
    return RulePublic.of(await rules.get_rule(rule_id, version))


@router.put(
    "/{rule_id}",
    response_model=RulePublic,
    responses={
        200: {"model": RulePublic, "description": "A new version of an existing rule"},
        201: {"model": RulePublic, "description": "A new rule (or a deleted one again)"},
        415: {"model": ErrorResponse, "description": "Neither JSON nor YAML"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The rule document (docs/rules.md); `id` may be left out",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def put_rule(
    principal: AdminDep,
    request: Request,
    response: Response,
    rules: RulesDep,
    rule_id: RuleIdPath,
) -> RulePublic:
    """Store a document as the rule's next version, live at once (201 when the rule is new)."""
    if rule_id in RESERVED_IDS:
        raise Invalid(f"{rule_id!r} is reserved (a route below /api/v1/rules); choose another id")
    rule = await read_document(request, rule_id)
    existed = await rule_exists(rules, rule_id)
    try:
        row = await rules.apply(rule, author=principal.name)
    except FieldhubError as exc:
        await audited(request, principal, "rule.apply", rule_id, {"code": exc.code}, "failed")
        raise
    await audited(
        request,
        principal,
        "rule.apply",
        rule_id,
        {"version": row.version, "enabled": row.enabled, "created": not existed},
    )
    response.status_code = 200 if existed else 201
    return RulePublic.of(row)


async def _set_enabled(
    principal: Principal, request: Request, rules: RulesDep, rule_id: str, enabled: bool
) -> RulePublic:
    action = "rule.enable" if enabled else "rule.disable"
    try:
        row = await rules.set_enabled(rule_id, enabled, author=principal.name)
    except FieldhubError as exc:
        await audited(request, principal, action, rule_id, {"code": exc.code}, "failed")
        raise
    await audited(request, principal, action, rule_id, {"version": row.version})
    return RulePublic.of(row)


@router.post("/{rule_id}/enable", response_model=RulePublic)
async def enable_rule(
    principal: AdminDep, request: Request, rules: RulesDep, rule_id: RuleIdPath
) -> RulePublic:
    """Enable a rule (a new version with `enabled: true`)."""
    return await _set_enabled(principal, request, rules, rule_id, True)


@router.post("/{rule_id}/disable", response_model=RulePublic)
async def disable_rule(
    principal: AdminDep, request: Request, rules: RulesDep, rule_id: RuleIdPath
) -> RulePublic:
    """Disable a rule (a new version with `enabled: false`): it stops evaluating at once."""
    return await _set_enabled(principal, request, rules, rule_id, False)


@router.delete("/{rule_id}", status_code=204, response_class=Response)
async def delete_rule(
    principal: AdminDep, request: Request, rules: RulesDep, rule_id: RuleIdPath
) -> Response:
    """Delete a rule: it stops at once; its versions and alarms stay as history."""
    try:
        await rules.delete(rule_id, actor=principal.name)
    except FieldhubError as exc:
        await audited(request, principal, "rule.delete", rule_id, {"code": exc.code}, "failed")
        raise
    await audited(request, principal, "rule.delete", rule_id, {})
    return Response(status_code=204)
