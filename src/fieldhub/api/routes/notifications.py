"""`GET /api/v1/notifications` (admin): the notification log, every delivery attempt of a rule's
webhooks, e-mails and MQTT publishes, newest first. Admin only: targets are URLs and addresses
(no secrets are ever logged, but who gets paged is the operator's business)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fieldhub.api.auth import ADMIN
from fieldhub.api.cursors import decode_cursor, encode_cursor
from fieldhub.api.deps import StoreDep
from fieldhub.api.errors import ERROR_RESPONSES
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.protocol.timestamps import format_us
from fieldhub.rules.model import RULE_ID_PATTERN
from fieldhub.schemas import Time
from fieldhub.store.types import NotificationRow

router = APIRouter(
    prefix="/api/v1/notifications",
    tags=["alarms"],
    dependencies=[ADMIN],
    route_class=AllMethodsRoute,
    responses=ERROR_RESPONSES,
)


class NotificationPublic(BaseModel):
    """One delivery attempt. `outcome`: delivered, retry, failed, dropped..."""

    seq: int
    at: Time
    rule: str
    alarm: str | None
    kind: str
    target: str
    outcome: str
    attempt: int
    detail: dict[str, object]

    @classmethod
    def of(cls, row: NotificationRow) -> NotificationPublic:
        return cls(
            seq=row.seq,
            at=format_us(row.at_us),
            rule=row.rule_id,
            alarm=row.alarm_id,
            kind=row.kind,
            target=row.target,
            outcome=row.outcome,
            attempt=row.attempt,
            detail=row.detail,
        )


class NotificationsPublic(BaseModel):
    data: list[NotificationPublic]
    next_cursor: str | None


@router.get("", response_model=NotificationsPublic)
async def list_notifications(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    rule: Annotated[str | None, Query(pattern=RULE_ID_PATTERN)] = None,
    alarm: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> NotificationsPublic:
    """Entries newest first, optionally of one rule or one alarm."""
    before = decode_cursor(cursor, int)[0] if cursor else None
    rows = await store.list_notification_log(
        limit=limit + 1, before_seq=before, rule_id=rule, alarm_id=alarm
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].seq) if len(rows) > limit else None
    return NotificationsPublic(
        data=[NotificationPublic.of(r) for r in page], next_cursor=next_cursor
    )
