"""`/api/v1/ml`: the window loop (docs/ml.md). Viewers read decisions, their statistics, the
models and a device's loop configuration; operators ask for a decision now; admins activate a
model version, roll back and configure a device's loop (each audited)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from fieldhub.api.auth import VIEWER, AdminDep, OperatorDep, audit_request
from fieldhub.api.cursors import decode_cursor, encode_cursor
from fieldhub.api.deps import DeviceIdDep, NowDep, StoreDep, WindowLoopDep
from fieldhub.api.errors import BODY_RESPONSES, ERROR_RESPONSES, ErrorResponse
from fieldhub.api.params import parse_time
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.clock import US_PER_S
from fieldhub.errors import FieldhubError, NotFound
from fieldhub.ml.guards import GuardConfig
from fieldhub.ml.loop import LoopConfig, WindowLoop
from fieldhub.ml.trigger import TriggerParams
from fieldhub.protocol.timestamps import format_us
from fieldhub.schemas import Time
from fieldhub.security.principal import Principal
from fieldhub.store.types import MlDecisionRow

router = APIRouter(
    prefix="/api/v1/ml",
    tags=["ml"],
    dependencies=[VIEWER],
    route_class=AllMethodsRoute,
    responses={**ERROR_RESPONSES, **BODY_RESPONSES},
)

LoopDep = WindowLoopDep
OUTCOMES = ("actuated", "held", "shadow", "refused", "fallback", "off", "error")
DEFAULT_STATS_WINDOW_US = 86_400 * US_PER_S


class DecisionPublic(BaseModel):
    """One decision: what started it, its inputs, the model's answer, each guard's verdict,
    the outcome and the command that carried it out (if any)."""

    seq: int
    id: str
    device_id: str
    at: Time
    trigger: str
    reason: str
    inputs: dict[str, Any]
    zscores: dict[str, Any] | None
    model: str | None
    model_version: int | None
    position: float | None
    confidence: float | None
    verdicts: list[dict[str, Any]]
    outcome: str
    target_position: int | None
    command_id: str | None
    latency_ms: float | None
    request: dict[str, Any] | None
    committed: Time | None = Field(
        description="When the reading (own trigger) or the request that started it was "
        "committed; null for the timer's and on-demand decisions"
    )

    @classmethod
    def of(cls, row: MlDecisionRow) -> DecisionPublic:
        return cls(
            seq=row.seq,
            id=row.decision_id,
            device_id=row.device_id,
            at=format_us(row.at_us),
            trigger=row.trigger,
            reason=row.reason,
            inputs=row.inputs,
            zscores=row.zscores,
            model=row.model_name,
            model_version=row.model_version,
            position=row.position,
            confidence=row.confidence,
            verdicts=row.verdicts,
            outcome=row.outcome,
            target_position=row.target_position,
            command_id=row.command_id,
            latency_ms=None if row.latency_us is None else row.latency_us / 1000,
            request=row.request,
            committed=None if row.committed_us is None else format_us(row.committed_us),
        )


class DecisionsPublic(BaseModel):
    data: list[DecisionPublic]
    next_cursor: str | None


class StatsPublic(BaseModel):
    """Decisions since `since`: per outcome, a confidence histogram in tenths, latency."""

    since: Time
    total: int
    outcomes: dict[str, int]
    confidence_histogram: list[int] = Field(description="10 buckets: [0, 0.1) ... [0.9, 1]")
    latency_p50_ms: float | None
    latency_p99_ms: float | None


class ModelVersionPublic(BaseModel):
    """One version in the registry: its manifest (metrics, training, checksums)."""

    version: int
    parent: int | None
    active: bool
    created: Time
    manifest: dict[str, Any]


class ModelsPublic(BaseModel):
    name: str
    active: int | None
    serving: int | None = Field(description="The version the loop is evaluating right now")
    versions: list[ModelVersionPublic]
    history: list[dict[str, Any]]


class DeviceLoopPublic(BaseModel):
    """A device's loop configuration (`configured`: its own, else the fleet default of
    `ml_mode`) and its guard state."""

    device_id: str
    configured: bool
    config: LoopConfig
    state: dict[str, Any] | None


class DeviceLoopIn(BaseModel):
    """A device's loop configuration; what is left out takes its default."""

    guards: GuardConfig = Field(default_factory=GuardConfig)
    trigger: TriggerParams = Field(default_factory=TriggerParams)


async def _audited(
    request: Request,
    principal: Principal,
    action: str,
    target: str,
    detail: dict[str, object],
    outcome: str = "ok",
) -> None:
    await audit_request(request, principal, action, target=target, outcome=outcome, detail=detail)


@router.get("/decisions", response_model=DecisionsPublic)
async def list_decisions(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    device: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    outcome: Annotated[str | None, Query(pattern="^(" + "|".join(OUTCOMES) + ")$")] = None,
) -> DecisionsPublic:
    """Decisions newest first, of one device or outcome if asked."""
    before = decode_cursor(cursor, int)[0] if cursor else None
    rows = await store.list_ml_decisions(
        device=device, limit=limit + 1, before_seq=before, outcome=outcome
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].seq) if len(rows) > limit else None
    return DecisionsPublic(data=[DecisionPublic.of(r) for r in page], next_cursor=next_cursor)


@router.get("/decisions/{decision_id}", response_model=DecisionPublic)
async def get_decision(
    store: StoreDep, decision_id: Annotated[str, Path(min_length=1, max_length=64)]
) -> DecisionPublic:
    """One decision."""
    row = await store.get_ml_decision(decision_id)
    if row is None:
        raise NotFound(f"no decision {decision_id}", code="decision_not_found")
    return DecisionPublic.of(row)


@router.get("/stats", response_model=StatsPublic)
async def decision_stats(
    store: StoreDep,
    now: NowDep,
    since: Annotated[
        str | None, Query(description="ISO 8601 or epoch; default 24 h ago", max_length=64)
    ] = None,
    device: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> StatsPublic:
    """What the ML page charts: decisions per outcome, confidence histogram, latency."""
    given = parse_time("since", since)
    since_us = given if given is not None else now - DEFAULT_STATS_WINDOW_US
    stats = await store.ml_decision_stats(since_us=since_us, device=device)
    return StatsPublic(
        since=format_us(since_us),
        total=stats.total,
        outcomes=stats.outcomes,
        confidence_histogram=list(stats.confidence),
        latency_p50_ms=None if stats.latency_p50_us is None else stats.latency_p50_us / 1000,
        latency_p99_ms=None if stats.latency_p99_us is None else stats.latency_p99_us / 1000,
    )


async def _models(loop: WindowLoop) -> ModelsPublic:
    registry, name = loop.registry, loop.model_name
    versions, active, history = await asyncio.gather(
        asyncio.to_thread(registry.versions, name),
        asyncio.to_thread(registry.active, name),
        asyncio.to_thread(registry.history, name),
    )
    serving = loop.model.manifest.version if loop.model is not None else None
    return ModelsPublic(
        name=name,
        active=active,
        serving=serving,
        versions=[
            ModelVersionPublic(
                version=m.version,
                parent=m.parent,
                active=m.version == active,
                created=format_us(m.created_us),
                manifest=m.model_dump(mode="json"),
            )
            for m in versions
        ],
        history=[
            {"version": a.version, "at": format_us(a.at_us), "by": a.by, "action": a.action}
            for a in history
        ],
    )


@router.get("/models", response_model=ModelsPublic)
async def list_models(loop: LoopDep) -> ModelsPublic:
    """The window model's versions, the active one and the activation history."""
    return await _models(loop)


@router.post("/models/{version}/activate", response_model=ModelsPublic)
async def activate_model(
    principal: AdminDep,
    request: Request,
    loop: LoopDep,
    version: Annotated[int, Path(ge=1, le=2**31 - 1)],
) -> ModelsPublic:
    """Validate a version (checksums, golden outputs) and serve it; one that fails is refused
    (422) and the version serving stays."""
    target = f"model:{loop.model_name}/{version}"
    try:
        await loop.activate(version, by=principal.name)
    except FieldhubError as exc:
        await _audited(request, principal, "ml.activate", target, {"code": exc.code}, "failed")
        raise
    await _audited(request, principal, "ml.activate", target, {})
    return await _models(loop)


@router.post(
    "/models/rollback",
    response_model=ModelsPublic,
    responses={409: {"model": ErrorResponse, "description": "No earlier version to go back to"}},
)
async def rollback_model(principal: AdminDep, request: Request, loop: LoopDep) -> ModelsPublic:
    """Serve the version that was active before the active one."""
    target = f"model:{loop.model_name}"
    try:
        await loop.rollback(by=principal.name)
    except FieldhubError as exc:
        await _audited(request, principal, "ml.rollback", target, {"code": exc.code}, "failed")
        raise
    await _audited(request, principal, "ml.rollback", target, {})
    return await _models(loop)


def _device_public(loop: WindowLoop, device_id: str) -> DeviceLoopPublic:
    state = loop.state_of(device_id)
    return DeviceLoopPublic(
        device_id=device_id,
        configured=loop.is_configured(device_id),
        config=loop.config_of(device_id),
        state=None if state is None else state.to_json(),
    )


@router.get("/devices/{device_id}", response_model=DeviceLoopPublic)
async def get_device_loop(loop: LoopDep, device_id: DeviceIdDep) -> DeviceLoopPublic:
    """A device's loop configuration and guard state."""
    return _device_public(loop, device_id)


@router.put("/devices/{device_id}", response_model=DeviceLoopPublic)
async def configure_device_loop(
    principal: AdminDep,
    request: Request,
    loop: LoopDep,
    device_id: DeviceIdDep,
    body: DeviceLoopIn,
) -> DeviceLoopPublic:
    """Set a device's guards and trigger parameters (422 naming the field for a bad one)."""
    config = LoopConfig(guards=body.guards, trigger=body.trigger)
    await loop.configure(device_id, config)
    await _audited(
        request, principal, "ml.configure", f"device:{device_id}", config.model_dump(mode="json")
    )
    return _device_public(loop, device_id)


@router.post("/devices/{device_id}/decide", response_model=DecisionPublic)
async def decide_now(
    principal: OperatorDep, request: Request, loop: LoopDep, device_id: DeviceIdDep
) -> DecisionPublic:
    """A decision now from the device's current window means (the guards still apply)."""
    row = await loop.decide_now(device_id)
    await _audited(request, principal, "ml.decide", f"device:{device_id}", {"outcome": row.outcome})
    return DecisionPublic.of(row)
