"""Admission: whether fieldhub takes a command, and storing it when it does.

In order: the device has a command format, the command fits it (name, params, encoded size), its
expiry is ahead, its id is new (or repeats the same command: idempotent), the device's queue has
room, and its rate limit a token. Refusals are the domain's errors (`fieldhub.errors`), each with
the `code` the API answers; nothing here knows of HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fieldhub.clock import US_PER_S, Clock
from fieldhub.commands.formats import FORMATS, CommandError, CommandFormat, Outgoing
from fieldhub.commands.ratelimit import RateLimiter
from fieldhub.errors import Conflict, FieldhubError, Invalid, Overloaded, TooLarge
from fieldhub.protocol.command_states import CommandState
from fieldhub.store.base import Store
from fieldhub.store.types import CommandRow, DeviceRow

# A full queue drains as its commands end (acks arrive within milliseconds to seconds), so a
# client is told to look again shortly rather than after a whole command timeout.
QUEUE_FULL_RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class CommandLimits:
    """Per-device limits and defaults (Settings `command_*`)."""

    rate_per_s: float = 5.0
    burst: int = 20
    queue_max: int = 100
    default_expiry_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class NewCommand:
    """A validated API request."""

    name: str
    params: dict[str, Any]
    timeout_s: float | None = None
    expires_us: int | None = None
    command_id: str | None = None


@dataclass(frozen=True, slots=True)
class Admitted:
    """A command admission let through: as stored, its format, and whether it is new (False: an
    earlier request with the same id and body)."""

    row: CommandRow
    fmt: CommandFormat
    created: bool


def refusal(exc: CommandError) -> FieldhubError:
    """The domain error for what a format refused: over its size limit, or invalid."""
    if exc.code == "payload_too_large":
        return TooLarge(exc.message, code=exc.code)
    return Invalid(exc.message, code=exc.code)


class Admission:
    """Validates, bounds and stores new commands (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        limits: CommandLimits,
        queued: Callable[[str], int],
        default_formats: Mapping[str, str | None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits
        self._queued = queued
        self._default_formats = dict(default_formats or {})
        self._rate = RateLimiter(limits.rate_per_s, limits.burst)

    def format_of(self, device: DeviceRow) -> CommandFormat | None:
        """How to command `device`: what its messages said, else its profile's default."""
        name = device.command_format or self._default_formats.get(device.profile)
        return FORMATS.get(name) if name else None

    async def admit(self, device: DeviceRow, request: NewCommand) -> Admitted:
        """Check and store the command, or return the one an earlier request with its id made.

        Raises Invalid, TooLarge, Conflict or Overloaded (with `retry_after_s`) otherwise.
        """
        fmt = self.format_of(device)
        if fmt is None:
            raise Invalid(
                f"device {device.device_id!r} ({device.profile} profile) has no command "
                "down-link: its stack sends data only",
                code="commands_unsupported",
            )
        now = self._clock.now_us()
        command_id = request.command_id or str(uuid.uuid4())
        topic_id = device.topic_id or device.device_id
        try:
            fmt.validate(request.name, request.params)
            fmt.encode(Outgoing(command_id, request.name, request.params, topic_id, now))
        except CommandError as exc:
            raise refusal(exc) from None
        expires_us = request.expires_us
        if expires_us is None:
            expires_us = now + int(self._limits.default_expiry_s * US_PER_S)
        elif expires_us <= now:
            raise Invalid("expires_at is in the past", code="invalid_parameter")
        if request.command_id is not None:
            existing = await self._store.get_command(device.device_id, request.command_id)
            if existing is not None:
                return Admitted(replayed(existing, request), fmt, created=False)
        self._bound(device.device_id)
        row = CommandRow(
            device_id=device.device_id,
            command_id=command_id,
            name=request.name,
            params=request.params,
            format=fmt.name,
            topic=fmt.topic(topic_id),
            state=CommandState.PENDING,
            created_us=now,
            updated_us=now,
            timeout_s=request.timeout_s or fmt.timeout_for(request.name),
            expires_us=expires_us,
        )
        detail = (
            "accepted; the device is online"
            if device.presence == "online"
            else f"accepted; waiting for the device ({device.presence}) to be heard from"
        )
        stored = await self._store.insert_command(row, detail)
        if stored is None:  # the same id, a moment ago, from a concurrent request
            existing = await self._store.get_command(device.device_id, command_id)
            if existing is None:
                raise Conflict(f"command id {command_id!r} is in use", code="conflict")
            return Admitted(replayed(existing, request), fmt, created=False)
        return Admitted(stored, fmt, created=True)

    def _bound(self, device_id: str) -> None:
        """Refuse when the device's queue is full or its rate limit has no token left."""
        queued = self._queued(device_id)
        if queued >= self._limits.queue_max:
            raise Overloaded(
                f"device {device_id!r} has {queued} commands not yet final (the limit); "
                "wait for them to end or cancel some",
                code="queue_full",
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )
        wait_s = self._rate.take(device_id, self._clock.monotonic_s())
        if wait_s > 0:
            raise Overloaded(
                f"at most {self._limits.rate_per_s:g} commands a second per device (bursts of "
                f"{self._limits.burst}); retry in {wait_s:.1f} s",
                code="rate_limited",
                retry_after_s=self._rate.retry_after_s(wait_s),
            )


def replayed(existing: CommandRow, request: NewCommand) -> CommandRow:
    """The stored command when `request` repeats it; Conflict when the id meant another one."""
    if existing.name != request.name or existing.params != request.params:
        raise Conflict(
            f"command id {existing.command_id!r} was already used for "
            f"{existing.name} {existing.params}; use a new id for a different command",
            code="conflict",
        )
    return existing
