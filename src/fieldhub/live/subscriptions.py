"""What a live viewer asks for, validated: the `subscribe` frame of docs/live.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id

EventKind = Literal[
    "readings", "presence", "devices", "dead_letters", "stats", "commands", "alarms"
]
DEFAULT_EVENTS: tuple[EventKind, ...] = ("readings", "presence", "devices")
DEFAULT_MIN_INTERVAL_MS = 250
# Ids a subscription may name: a fleet page shows at most a few hundred rows; "everything" is
# expressed by leaving `devices` out, not by listing 3,000 ids.
MAX_LISTED = 1_000

Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Subscribe(BaseModel):
    """A viewer's subscription; a new one replaces the previous one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["subscribe"]
    devices: list[Name] | None = Field(default=None, max_length=MAX_LISTED)
    metrics: list[Name] | None = Field(default=None, max_length=MAX_LISTED)
    events: list[EventKind] = Field(default_factory=lambda: list(DEFAULT_EVENTS), max_length=7)
    min_interval_ms: int = Field(default=DEFAULT_MIN_INTERVAL_MS, ge=100, le=10_000, strict=True)

    @field_validator("devices")
    @classmethod
    def _canonical(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        try:
            return sorted({canonical_device_id(v) for v in value})
        except InvalidDeviceId as exc:
            raise ValueError(str(exc)) from None

    def key(self) -> LiveFilter:
        """The filter this subscription stands for; equal subscriptions share one group."""
        return LiveFilter(
            devices=frozenset(self.devices) if self.devices is not None else None,
            metrics=frozenset(self.metrics) if self.metrics is not None else None,
            events=frozenset(self.events),
            min_interval_ms=self.min_interval_ms,
        )


class LiveFilter(BaseModel):
    """The hashable form of a subscription."""

    model_config = ConfigDict(frozen=True)

    devices: frozenset[str] | None
    metrics: frozenset[str] | None
    events: frozenset[str]
    min_interval_ms: int

    def describe(self) -> dict[str, object]:
        """The `subscribed` frame body."""
        return {
            "devices": sorted(self.devices) if self.devices is not None else None,
            "metrics": sorted(self.metrics) if self.metrics is not None else None,
            "events": sorted(self.events),
            "min_interval_ms": self.min_interval_ms,
        }
