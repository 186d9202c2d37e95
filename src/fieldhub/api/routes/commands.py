"""Commands to a device: send, follow, list, cancel (docs/commands.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from fieldhub.api.audited import submit_audited
from fieldhub.api.auth import VIEWER, OperatorDep, audit_request
from fieldhub.api.cursors import decode_cursor, encode_cursor
from fieldhub.api.deps import CommandsDep, DeviceIdDep, NowDep, StoreDep
from fieldhub.api.errors import ERROR_RESPONSES, ErrorResponse
from fieldhub.api.params import parse_time
from fieldhub.api.routes.devices import device_or_404
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.commands.service import NewCommand
from fieldhub.errors import FieldhubError, NotFound
from fieldhub.protocol.command_states import CommandState
from fieldhub.schemas import (
    CommandPublic,
    CommandsPublic,
    CommandTypePublic,
    CommandTypesPublic,
)

router = APIRouter(
    prefix="/api/v1/devices",
    tags=["commands"],
    route_class=AllMethodsRoute,
    # Reading is for viewers; sending and cancelling take an OperatorDep (and are audited).
    dependencies=[VIEWER],
    responses={
        **ERROR_RESPONSES,
        400: {"model": ErrorResponse, "description": "The body is not JSON"},
        409: {"model": ErrorResponse, "description": "Conflicts with the command's state or id"},
        413: {"model": ErrorResponse, "description": "Encoded command over the format's limit"},
        429: {"model": ErrorResponse, "description": "Rate limit or queue limit of the device"},
    },
)

# Ids on the wire: the firmware takes up to 64 characters; these are safe in any JSON or log.
CommandId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
MAX_WAIT_S = 30.0


class CommandRequest(BaseModel):
    """`POST /api/v1/devices/{id}/commands`."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: Annotated[float, Field(ge=0.5, le=3600, strict=True)] | None = Field(
        default=None, description="Seconds from sent to an answer; default per format"
    )
    expires_at: (
        Annotated[str, StringConstraints(min_length=1, max_length=64)] | StrictInt | None
    ) = Field(default=None, description="ISO 8601 or epoch; default one hour from now")
    id: CommandId | None = Field(default=None, description="Idempotency key; default a UUID")


@router.post(
    "/{device_id}/commands",
    response_model=CommandPublic,
    status_code=201,
    responses={200: {"model": CommandPublic, "description": "An earlier request's id and body"}},
)
async def send_command(
    principal: OperatorDep,
    http: Request,
    store: StoreDep,
    commands: CommandsDep,
    device_id: DeviceIdDep,
    now: NowDep,
    body: CommandRequest,
    response: Response,
    wait_s: Annotated[
        float, Query(ge=0, le=MAX_WAIT_S, description="Answer once final or after this long")
    ] = 0,
) -> CommandPublic:
    """Send a command: 201 with the command (pending, or final when `wait_s` let it finish);
    200 when `id` repeats an earlier identical request."""
    device = await device_or_404(store, device_id, now)
    expires = str(body.expires_at) if body.expires_at is not None else None
    new = NewCommand(
        name=body.name,
        params=body.params,
        timeout_s=body.timeout_s,
        expires_us=parse_time("expires_at", expires),
        command_id=body.id,
    )
    # Refusals are domain errors (fieldhub.errors); api/errors.py gives each its status.
    detail: dict[str, object] = {"name": body.name, "params": body.params}
    row, created = await submit_audited(http, principal, commands, device, new, detail)
    if not created:
        response.status_code = 200
    if wait_s <= 0:
        # As stored when accepted (pending, or an earlier request's command as it now is):
        # what happens next is for GET or the live `command` frames to tell.
        return CommandPublic.of(row, history=True)
    final = await commands.wait(device_id, row.command_id, wait_s)
    if final is None:
        final = await store.get_command(device_id, row.command_id)
    return CommandPublic.of(final or row, history=True)


@router.get("/{device_id}/commands", response_model=CommandsPublic)
async def list_commands(
    store: StoreDep,
    device_id: DeviceIdDep,
    now: NowDep,
    state: CommandState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
) -> CommandsPublic:
    """A device's commands, newest first, optionally of one state; paginated."""
    await device_or_404(store, device_id, now)
    before: tuple[int, str] | None = None
    if cursor:
        created_us, command_id = decode_cursor(cursor, int, str)
        before = (created_us, command_id)
    rows = await store.list_commands(device_id, state=state, limit=limit + 1, before=before)
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1].created_us, page[-1].command_id) if len(rows) > limit else None
    )
    return CommandsPublic(data=[CommandPublic.of(r) for r in page], next_cursor=next_cursor)


CommandIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


@router.get("/{device_id}/commands/{command_id}", response_model=CommandPublic)
async def get_command(
    store: StoreDep, device_id: DeviceIdDep, command_id: CommandIdPath
) -> CommandPublic:
    """One command with its whole history."""
    row = await store.get_command(device_id, command_id)
    if row is None:
        raise NotFound(f"device {device_id!r} has no command {command_id!r}")
    return CommandPublic.of(row, history=True)


@router.delete("/{device_id}/commands/{command_id}", response_model=CommandPublic)
async def cancel_command(
    principal: OperatorDep,
    http: Request,
    store: StoreDep,
    commands: CommandsDep,
    device_id: DeviceIdDep,
    command_id: CommandIdPath,
    now: NowDep,
) -> CommandPublic:
    """Cancel a command not yet handed to the broker; 409 once it was."""
    await device_or_404(store, device_id, now)
    target = f"device:{device_id}/command:{command_id}"
    try:
        await commands.cancel(device_id, command_id)
    except FieldhubError as exc:
        await audit_request(
            http,
            principal,
            "command.cancel",
            target=target,
            outcome="failed",
            detail={"code": exc.code},
        )
        raise
    await audit_request(http, principal, "command.cancel", target=target)
    row = await store.get_command(device_id, command_id)
    if row is None:  # pragma: no cover - cancelled a moment ago
        raise NotFound(f"device {device_id!r} has no command {command_id!r}")
    return CommandPublic.of(row, history=True)


@router.get("/{device_id}/command-types", response_model=CommandTypesPublic)
async def command_types(
    store: StoreDep, commands: CommandsDep, device_id: DeviceIdDep, now: NowDep
) -> CommandTypesPublic:
    """How the device is commanded: its format, topic and known commands with param schemas."""
    device = await device_or_404(store, device_id, now)
    fmt = commands.format_of(device)
    if fmt is None:
        return CommandTypesPublic(format=None, topic=None, accepts_other_names=False, commands=[])
    return CommandTypesPublic(
        format=fmt.name,
        topic=fmt.topic(device.topic_id or device.device_id),
        accepts_other_names=fmt.open_catalogue,
        commands=[
            CommandTypePublic(
                name=spec.name, description=spec.description, params_schema=spec.schema()
            )
            for spec in fmt.commands.values()
        ],
    )
