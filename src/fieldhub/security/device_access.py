"""Device MQTT credentials: issued, rotated and revoked here, enforced by the broker.

The database holds each device's credential (a hash of its secret only); the broker's password
and ACL files are rendered from it, so a change here is applied by asking the broker to reload
(`on_change`), and a revoked device is disconnected by that reload (docs/security.md).

A device logs in with a username derived from its id (`device_username`): the id itself, or a
MAC's 12 hex digits, because Mosquitto's password file separates username and hash with `:`.
The broker makes the username the client id, and its ACL binds it to the device's topics under
that same spelling, which fieldhub reads as the same device; so the node's config.json gets it
as its device_id.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fieldhub.broker import access
from fieldhub.broker.passwd import hash_password
from fieldhub.clock import SYSTEM_CLOCK, Clock
from fieldhub.errors import Invalid, NotFound
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.store.base import Store
from fieldhub.store.types import DeviceCredentialRow

# 24 random bytes (32 characters): far beyond brute force over MQTT, and short enough to type
# into the first-boot portal when it must be.
SECRET_BYTES = 24


@dataclass(frozen=True, slots=True)
class NodeEndpoint:
    """Where provisioned nodes are told to connect: the broker's address and ports, and the CA
    file name on the node when the TLS listener is on."""

    host: str
    port: int
    tls_port: int | None = None
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A device's new secret: shown once, never stored in the clear."""

    device_id: str
    username: str
    password: str
    rotated: bool

    def __repr__(self) -> str:  # a secret must not reach a log through a repr
        return f"IssuedCredential(device_id={self.device_id!r}, username={self.username!r})"

    def node_config(
        self, *, host: str, port: int, tls: bool, ca_file: str | None
    ) -> dict[str, object]:
        """The part of the node's `config.json` this credential fills in (firmware/README.md)."""
        mqtt: dict[str, object] = {
            "host": host,
            "port": port,
            "user": self.username,
            "password": self.password,
            "tls": tls,
        }
        if tls and ca_file is not None:
            mqtt["ca"] = ca_file
        # The username is the id spelling the broker lets the node use in its topics.
        return {"device_id": self.username, "mqtt": mqtt}


def device_username(device_id: str) -> str:
    """The broker username of a device (broker/access.py); Invalid when the id cannot be one."""
    try:
        return access.device_username(canonical_device_id(device_id))
    except (InvalidDeviceId, ValueError) as exc:
        raise Invalid(
            f"{exc}; give the device an id of letters, digits and _ . @ ~ - (config.json "
            "device_id) before provisioning it",
            code="invalid_device_id",
        ) from None


class DeviceAccess:
    """Issue, rotate and revoke device credentials; `on_change` reloads the broker."""

    def __init__(
        self,
        store: Store,
        *,
        node_endpoint: NodeEndpoint,
        on_change: Callable[[], Awaitable[None]] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.node_endpoint = node_endpoint
        self.on_change = on_change
        self.clock = clock

    @property
    def enforced(self) -> bool:
        """Whether a broker applies these credentials (fieldhub's embedded one with
        authentication on); otherwise they are only kept, for an external broker's operator."""
        return self.on_change is not None

    async def issue(self, device_id: str) -> IssuedCredential:
        """A new secret for the device (its first, or one replacing the old, which stops working
        at once); applied to the broker before this returns."""
        username = device_username(device_id)
        device_id = canonical_device_id(device_id)
        existing = await self.store.get_device_credential(device_id)
        now = self.clock.now_us()
        password = secrets.token_urlsafe(SECRET_BYTES)
        await self.store.put_device_credential(
            DeviceCredentialRow(
                device_id=device_id,
                password_hash=hash_password(password),
                created_us=existing.created_us if existing is not None else now,
                rotated_us=now,
            )
        )
        await self._apply()
        return IssuedCredential(
            device_id=device_id,
            username=username,
            password=password,
            rotated=existing is not None and existing.revoked_us is None,
        )

    async def revoke(self, device_id: str) -> None:
        """Revoke the device's credential: the broker disconnects it and refuses it from now on."""
        device_id = canonical_device_id(device_id)
        if not await self.store.revoke_device_credential(device_id, self.clock.now_us()):
            raise NotFound(f"device {device_id!r} has no credential to revoke")
        await self._apply()

    async def get(self, device_id: str) -> DeviceCredentialRow:
        """The device's credential record (no secret in it); NotFound when it has none."""
        device_id = canonical_device_id(device_id)
        row = await self.store.get_device_credential(device_id)
        if row is None:
            raise NotFound(f"device {device_id!r} has no credential")
        return row

    async def list(self) -> list[DeviceCredentialRow]:
        """Every device credential, revoked ones included."""
        return await self.store.list_device_credentials()

    async def active(self) -> tuple[access.DeviceCredential, ...]:
        """Every credential in force: what the broker's files are rendered from."""
        return tuple(
            access.DeviceCredential(row.device_id, row.password_hash)
            for row in await self.store.list_device_credentials()
            if row.revoked_us is None
        )

    async def _apply(self) -> None:
        if self.on_change is not None:
            await self.on_change()
