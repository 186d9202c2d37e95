"""Commands sent through any of the APIs (fieldhub's own, the stacks' compatible ones), each
recorded in the audit log with who sent it and from where, refused or not."""

from __future__ import annotations

from fastapi import Request

from fieldhub.api.auth import audit_request
from fieldhub.commands.service import CommandService, NewCommand
from fieldhub.errors import FieldhubError
from fieldhub.security.principal import Principal
from fieldhub.store.types import CommandRow, DeviceRow


async def submit_audited(
    request: Request,
    principal: Principal,
    commands: CommandService,
    device: DeviceRow,
    new: NewCommand,
    detail: dict[str, object],
) -> tuple[CommandRow, bool]:
    """`CommandService.submit`, audited as `command.send` (`failed` with the refusal's code)."""
    try:
        row, created = await commands.submit(device, new)
    except FieldhubError as exc:
        await audit_request(
            request,
            principal,
            "command.send",
            target=f"device:{device.device_id}",
            outcome="failed",
            detail={**detail, "code": exc.code},
        )
        raise
    await audit_request(
        request,
        principal,
        "command.send",
        target=f"device:{device.device_id}/command:{row.command_id}",
        detail={**detail, "repeat": not created},
    )
    return row, created
