"""Device MQTT credentials (admin): issue or rotate (the secret is in that answer only), look
up, list, revoke (the broker disconnects the device at once). docs/security.md."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, Field

from fieldhub.api.auth import ADMIN, AdminDep, audit_request
from fieldhub.api.deps import DeviceAccessDep, DeviceIdDep
from fieldhub.api.errors import ERROR_RESPONSES
from fieldhub.api.routing import AllMethodsRoute
from fieldhub.net import is_loopback
from fieldhub.protocol.timestamps import format_us
from fieldhub.schemas import Time
from fieldhub.security.device_access import device_username
from fieldhub.store.types import DeviceCredentialRow

router = APIRouter(
    tags=["device credentials"],
    dependencies=[ADMIN],
    route_class=AllMethodsRoute,
    responses=ERROR_RESPONSES,
)

# Addresses a device can never be told to connect to: the embedded broker may listen on every
# interface, and then the address the admin used to reach fieldhub is the best guess.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class DeviceCredentialPublic(BaseModel):
    """A device's credential, without its secret."""

    device_id: str
    username: str = Field(description="What the device logs in to the broker with")
    created: Time
    rotated: Time
    revoked: Time | None


class IssuedCredentialPublic(BaseModel):
    """A new secret, shown in this answer only: flash `config` into the node's config.json."""

    device_id: str
    username: str
    password: str = Field(description="Shown once; fieldhub keeps only a hash")
    rotated: bool = Field(description="True when it replaced a secret in force (now refused)")
    enforced: bool = Field(
        description="True when fieldhub's embedded broker already applies it; False with an "
        "external broker (give it the credential yourself: docs/security.md) or in demo mode"
    )
    config: dict[str, object] = Field(description="The node's config.json entries to set")


def _public(row: DeviceCredentialRow) -> DeviceCredentialPublic:
    return DeviceCredentialPublic(
        device_id=row.device_id,
        username=device_username(row.device_id),
        created=format_us(row.created_us),
        rotated=format_us(row.rotated_us),
        revoked=format_us(row.revoked_us) if row.revoked_us is not None else None,
    )


@router.post(
    "/api/v1/devices/{device_id}/credentials",
    status_code=status.HTTP_201_CREATED,
    response_model=IssuedCredentialPublic,
)
async def issue_credential(
    device_id: DeviceIdDep,
    access: DeviceAccessDep,
    admin: AdminDep,
    request: Request,
    host: Annotated[
        str | None, Query(max_length=253, description="Broker address the node should use")
    ] = None,
) -> IssuedCredentialPublic:
    """A new secret for the device: its first, or one replacing the old (which stops working
    and is disconnected at once). The answer holds the secret; nothing else ever will."""
    issued = await access.issue(device_id)
    await audit_request(
        request,
        admin,
        "device.credential.rotate" if issued.rotated else "device.credential.issue",
        target=f"device:{issued.device_id}",
    )
    node = access.node_endpoint
    broker_host = host or node.host
    if broker_host in WILDCARD_HOSTS or is_loopback(broker_host):
        broker_host = request.url.hostname or broker_host
    return IssuedCredentialPublic(
        device_id=issued.device_id,
        username=issued.username,
        password=issued.password,
        rotated=issued.rotated,
        enforced=access.enforced,
        config=issued.node_config(
            host=broker_host,
            port=node.tls_port or node.port,
            tls=node.tls_port is not None,
            ca_file=node.ca_file,
        ),
    )


@router.get("/api/v1/devices/{device_id}/credentials", response_model=DeviceCredentialPublic)
async def get_credential(
    device_id: DeviceIdDep, access: DeviceAccessDep, admin: AdminDep
) -> DeviceCredentialPublic:
    """The device's credential record; 404 when it has none."""
    return _public(await access.get(device_id))


@router.delete("/api/v1/devices/{device_id}/credentials", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_credential(
    device_id: DeviceIdDep,
    access: DeviceAccessDep,
    admin: AdminDep,
    request: Request,
) -> None:
    """Revoke the device's credential: the broker disconnects it and refuses it from now on."""
    await access.revoke(device_id)
    await audit_request(request, admin, "device.credential.revoke", target=f"device:{device_id}")


@router.get("/api/v1/device-credentials", response_model=list[DeviceCredentialPublic])
async def list_credentials(
    access: DeviceAccessDep, admin: AdminDep
) -> list[DeviceCredentialPublic]:
    """Every device credential, revoked ones included (no secrets)."""
    return [_public(row) for row in await access.list()]
