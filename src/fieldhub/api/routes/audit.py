"""`GET /api/v1/audit` (admin): who did what, when, from where; newest first, paginated."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fieldhub.api.auth import ADMIN, AuthDep
from fieldhub.api.cursors import decode_cursor, encode_cursor
from fieldhub.api.errors import ERROR_RESPONSES
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.protocol.timestamps import format_us
from fieldhub.schemas import Time
from fieldhub.store.types import AuditRow

router = APIRouter(
    prefix="/api/v1/audit",
    tags=["audit"],
    dependencies=[ADMIN],
    route_class=AllMethodsRoute,
    responses=ERROR_RESPONSES,
)


class AuditEntryPublic(BaseModel):
    """One audit entry. `actor`: a username, `token:<id>`, `device:<id>`, `system`,
    `anonymous` (failed logins) or `demo`."""

    seq: int
    at: Time
    actor: str
    action: str
    target: str | None
    address: str | None
    outcome: str
    detail: dict[str, object]

    @classmethod
    def of(cls, row: AuditRow) -> AuditEntryPublic:
        return cls(
            seq=row.seq,
            at=format_us(row.at_us),
            actor=row.actor,
            action=row.action,
            target=row.target,
            address=row.address,
            outcome=row.outcome,
            detail=row.detail,
        )


class AuditPublic(BaseModel):
    data: list[AuditEntryPublic]
    next_cursor: str | None


@router.get("", response_model=AuditPublic)
async def list_audit(
    auth: AuthDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    actor: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    action: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
) -> AuditPublic:
    """Entries newest first, optionally of one actor or one action (exact names)."""
    before = decode_cursor(cursor, int)[0] if cursor else None
    rows = await auth.store.list_audit(
        limit=limit + 1, before_seq=before, actor=actor, action=action
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].seq) if len(rows) > limit else None
    return AuditPublic(data=[AuditEntryPublic.of(r) for r in page], next_cursor=next_cursor)
