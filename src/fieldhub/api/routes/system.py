"""The platform's vital signs as JSON (the dashboard's system page reads the same snapshot)."""

from __future__ import annotations

from fastapi import APIRouter

from fieldhub.api.auth import VIEWER
from fieldhub.api.deps import StatusDep
from fieldhub.api.errors import ERROR_RESPONSES
from fieldhub.status import SystemStatus

router = APIRouter(
    prefix="/api/v1/system", tags=["system"], responses=ERROR_RESPONSES, dependencies=[VIEWER]
)


@router.get("", response_model=SystemStatus)
async def system_status(status: StatusDep) -> SystemStatus:
    """Fleet counts, ingest rates and queues, live viewers and drops, broker state."""
    return await status.snapshot()
