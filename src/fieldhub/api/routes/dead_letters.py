"""Dead letters: every rejected message with its reason and raw payload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fieldhub.api.auth import VIEWER
from fieldhub.api.cursors import decode_cursor, encode_cursor
from fieldhub.api.deps import StoreDep
from fieldhub.api.errors import ERROR_RESPONSES
from fieldhub.errors import Invalid
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.schemas import DeadLetterPublic, DeadLettersPublic

router = APIRouter(
    prefix="/api/v1/dead-letters",
    tags=["dead letters"],
    responses=ERROR_RESPONSES,
    dependencies=[VIEWER],
)


@router.get("", response_model=DeadLettersPublic)
async def list_dead_letters(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    reason: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    device: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> DeadLettersPublic:
    """Rejected messages, newest first, optionally by reason or device."""
    before = decode_cursor(cursor, int)[0] if cursor else None
    device_id = None
    if device is not None:
        try:
            device_id = canonical_device_id(device)
        except InvalidDeviceId as exc:
            raise Invalid(f"device: {exc}") from None
    rows = await store.list_dead_letters(
        limit=limit + 1, before_id=before, reason=reason, device_id=device_id
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].id) if len(rows) > limit else None
    return DeadLettersPublic(data=[DeadLetterPublic.of(r) for r in page], next_cursor=next_cursor)
