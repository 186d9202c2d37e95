"""The FastAPI/RabbitMQ stack's REST shapes (its `backend/api/schemas.py`), as fieldhub serves them.

Field names and types are the stack's: `NodeResponse`, `SensorDataResponse`, `NodeAction`,
`ActionResponse`, the `{"count"}` of `/nodes/count` and the dict of `/dashboard/stats`. Errors
are FastAPI's own shape, as the stack's were: `{"detail": "<text>"}`, and for a request that
breaks the schema `{"detail": [{"loc", "msg", "type", ...}]}` with 422.
docs/compat-fastapi.md says where values differ.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field


class NodeResponse(BaseModel):
    """A node (an ESP32 of the stack), as its `nodes` table row was answered."""

    id: int = Field(description="The MAC as a 48-bit integer (another id: its first-seen time)")
    node_id: str = Field(description="The device id: its MAC, as the firmware spells it")
    name: str | None = Field(description="`ESP32-` and the id's last 6 characters, as the worker")
    mac_address: str | None
    created_at: datetime = Field(description="When fieldhub first heard the node (UTC)")
    last_seen: datetime | None = Field(description="Its last message (UTC)")
    is_active: str | None = Field(description='"true": fieldhub deactivates no node')
    status: str | None = Field(description='"online" while fieldhub sees it online, else "offline"')


class NodeCount(BaseModel):
    """`GET /api/nodes/count`."""

    count: int


class SensorDataResponse(BaseModel):
    """One message a node published on `devices/{MAC}/data`, as its `sensor_data` row."""

    id: int = Field(description="The message's time in epoch microseconds (unique per node)")
    node_id: str
    data: dict[str, Any] = Field(
        description="The message's numeric fields under the firmware's names (its booleans as "
        "true/false); text fields are kept as the node's latest attributes, not per message"
    )
    received_at: datetime


class NodeAction(BaseModel):
    """`POST /api/nodes/{node_id}/actions`: the firmware's action and its parameters."""

    action: Annotated[str, Field(max_length=64)]
    url: str | None = None
    angle: int | None = None
    value: Any = None


class ActionResponse(BaseModel):
    """The stack's answer to an action, plus the id of the command fieldhub tracks for it."""

    message: str
    command_id: str = Field(
        description="fieldhub's addition: GET /api/v1/devices/{id}/commands/{command_id}"
    )


class DashboardStats(BaseModel):
    """`GET /api/dashboard/stats`."""

    total_devices: int
    active_devices: int = Field(description="Nodes fieldhub sees online now")
    data_points_24h: int = Field(description="Messages the nodes sent in the last 24 hours")
    system_health: str = Field(description='"healthy" (the database answered)')
    timestamp: str = Field(description="Now, ISO 8601 UTC")


class DetailError(BaseModel):
    """FastAPI's error shape, which the stack's clients read: `{"detail": "<text>"}`."""

    detail: str


class ValidationDetailError(BaseModel):
    """A 422: FastAPI's validation errors (`[{"loc", "msg", "type"}]`), or the reason a command
    was refused (text)."""

    detail: str | list[dict[str, Any]]
