"""`/api/v1/alarms`: the alarms rules raised (docs/rules.md). Viewers read; operators acknowledge
and clear (audited). A move the alarm's state does not allow (acknowledging a cleared alarm)
answers 409 and changes nothing."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from fieldhub.api.auth import VIEWER, OperatorDep, audit_request
from fieldhub.api.cursors import decode_cursor, encode_cursor
from fieldhub.api.deps import RulesDep, StoreDep
from fieldhub.api.errors import BODY_RESPONSES, ERROR_RESPONSES, ErrorResponse
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.errors import FieldhubError, Invalid, NotFound
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.protocol.timestamps import format_us
from fieldhub.rules.model import RULE_ID_PATTERN
from fieldhub.schemas import AlarmPublic, Time
from fieldhub.security.principal import Principal
from fieldhub.store.types import AlarmEventRow, AlarmRow, AlarmState

router = APIRouter(
    prefix="/api/v1/alarms",
    tags=["alarms"],
    dependencies=[VIEWER],
    route_class=AllMethodsRoute,
    responses={
        **ERROR_RESPONSES,
        **BODY_RESPONSES,
        409: {"model": ErrorResponse, "description": "The alarm's state does not allow the move"},
    },
)

AlarmIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9-]{1,64}$", description="The alarm's id")]
Comment = Annotated[str, StringConstraints(max_length=1000)]


class AlarmEventPublic(BaseModel):
    """One step of an alarm's life."""

    at: Time
    state: AlarmState
    actor: str = Field(description="`rule:<id>` for the engine, else a username or `token:<id>`")
    comment: str | None

    @classmethod
    def of(cls, row: AlarmEventRow) -> AlarmEventPublic:
        return cls(at=format_us(row.at_us), state=row.state, actor=row.actor, comment=row.comment)


class AlarmDetailPublic(AlarmPublic):
    """An alarm with its events, oldest first."""

    events: list[AlarmEventPublic]


class AlarmsPublic(BaseModel):
    """A page of alarms, newest first (by raised time)."""

    data: list[AlarmPublic]
    next_cursor: str | None


class AlarmMove(BaseModel):
    """`POST /api/v1/alarms/{id}/acknowledge` or `/clear`: an optional comment."""

    model_config = ConfigDict(extra="forbid")

    comment: Comment | None = None


@router.get("", response_model=AlarmsPublic)
async def list_alarms(
    rules: RulesDep,
    state: Annotated[
        Literal["open", "active", "acknowledged", "cleared"] | None,
        Query(description="`open`: active or acknowledged"),
    ] = None,
    device: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    rule: Annotated[str | None, Query(pattern=RULE_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(min_length=1, max_length=400)] = None,
) -> AlarmsPublic:
    """Alarms newest first, filtered by state, device (any MAC spelling) and rule."""
    device_id: str | None = None
    if device is not None:
        try:
            device_id = canonical_device_id(device)
        except InvalidDeviceId as exc:
            raise Invalid(f"device: {exc}") from None
    before: tuple[int, str] | None = None
    if cursor:
        raised_us, alarm_id = decode_cursor(cursor, int, str)
        before = (raised_us, alarm_id)
    rows = await rules.alarms(
        state=state, device=device_id, rule_id=rule, limit=limit + 1, before=before
    )
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1].raised_us, page[-1].alarm_id) if len(rows) > limit else None
    )
    return AlarmsPublic(data=[AlarmPublic.of(r) for r in page], next_cursor=next_cursor)


@router.get("/{alarm_id}", response_model=AlarmDetailPublic)
async def get_alarm(store: StoreDep, alarm_id: AlarmIdPath) -> AlarmDetailPublic:
    """One alarm with every step of its life."""
    row = await store.get_alarm(alarm_id)
    if row is None:
        raise NotFound(f"no alarm {alarm_id}")
    events = await store.alarm_events(alarm_id)
    return AlarmDetailPublic(
        **AlarmPublic.of(row).model_dump(), events=[AlarmEventPublic.of(e) for e in events]
    )


async def _move(
    principal: Principal,
    request: Request,
    rules: RulesDep,
    alarm_id: str,
    body: AlarmMove | None,
    to: Literal["acknowledge", "clear"],
) -> AlarmPublic:
    comment = body.comment if body is not None and body.comment else None
    action = f"alarm.{to}"
    target = f"alarm:{alarm_id}"
    move = rules.acknowledge if to == "acknowledge" else rules.clear
    try:
        row: AlarmRow = await move(alarm_id, actor=principal.name, comment=comment)
    except FieldhubError as exc:
        await audit_request(
            request, principal, action, target=target, outcome="failed",
            detail={"code": exc.code},
        )  # fmt: skip
        raise
    await audit_request(
        request,
        principal,
        action,
        target=target,
        detail={"rule": row.rule_id, "device": row.device_id, "comment": comment},
    )
    return AlarmPublic.of(row)


@router.post("/{alarm_id}/acknowledge", response_model=AlarmPublic)
async def acknowledge_alarm(
    principal: OperatorDep,
    request: Request,
    rules: RulesDep,
    alarm_id: AlarmIdPath,
    body: AlarmMove | None = None,
) -> AlarmPublic:
    """Acknowledge an active alarm: repeats and escalation stop; it stays open until cleared."""
    return await _move(principal, request, rules, alarm_id, body, "acknowledge")


@router.post("/{alarm_id}/clear", response_model=AlarmPublic)
async def clear_alarm(
    principal: OperatorDep,
    request: Request,
    rules: RulesDep,
    alarm_id: AlarmIdPath,
    body: AlarmMove | None = None,
) -> AlarmPublic:
    """Clear an open alarm by hand, acknowledged or not."""
    return await _move(principal, request, rules, alarm_id, body, "clear")
