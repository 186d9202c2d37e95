"""The public shapes: what the REST API answers and the live WebSocket pushes, apart from the
store's rows. A leaf below both `api/` and `live/`, so a command frame on the socket and a
command in a REST answer are one model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import AttributeValue
from fieldhub.protocol.timestamps import format_us
from fieldhub.store.types import (
    AlarmRow,
    AlarmState,
    CommandRow,
    CommandTransition,
    DeadLetterRow,
    DeviceRow,
    MetricSummary,
    ReadingRow,
)

Time = str  # ISO 8601 UTC with microseconds and a Z


class MetricPublic(BaseModel):
    """A metric of a device with its latest value."""

    name: str
    last_value: float
    last_ts: Time

    @classmethod
    def of(cls, row: MetricSummary) -> MetricPublic:
        return cls(name=row.name, last_value=row.last_value, last_ts=format_us(row.last_ts_us))


class DevicePublic(BaseModel):
    """A device in a listing."""

    id: str
    profile: str
    presence: Literal["online", "offline", "stale", "unknown"]
    presence_since: Time | None
    first_seen: Time
    last_seen: Time
    stale_after_s: int = Field(description="Silence after which an online device counts as stale")
    attributes: dict[str, AttributeValue]

    @classmethod
    def of(cls, row: DeviceRow) -> DevicePublic:
        return cls(
            id=row.device_id,
            profile=row.profile,
            presence=row.presence,
            presence_since=format_us(row.presence_changed_us) if row.presence_changed_us else None,
            first_seen=format_us(row.first_seen_us),
            last_seen=format_us(row.last_seen_us),
            stale_after_s=row.stale_after_s,
            attributes=row.attributes,
        )


class DeviceDetail(DevicePublic):
    """A device with its metrics and their latest values."""

    metrics: list[MetricPublic]


class DevicesPublic(BaseModel):
    """A page of devices."""

    data: list[DevicePublic]
    count: int = Field(description="Devices matching the filters, over all pages")
    next_cursor: str | None


class PresenceEventPublic(BaseModel):
    """A presence change."""

    ts: Time
    state: Literal["online", "offline"]


class PresencePublic(BaseModel):
    """A device's presence changes in a window, with the state the window opens in first."""

    device_id: str
    data: list[PresenceEventPublic]


class ReadingPublic(BaseModel):
    """One stored reading."""

    metric: str
    ts: Time
    value: float
    received_at: Time

    @classmethod
    def of(cls, row: ReadingRow) -> ReadingPublic:
        return cls(
            metric=row.metric,
            ts=format_us(row.ts_us),
            value=row.value,
            received_at=format_us(row.received_us),
        )


class ReadingsPublic(BaseModel):
    """A page of readings, ordered by metric then time."""

    device_id: str
    data: list[ReadingPublic]
    next_cursor: str | None


class SeriesPointPublic(BaseModel):
    """One bucket: its start, the aggregate and the readings it covers."""

    ts: Time
    value: float
    count: int


class SeriesPublic(BaseModel):
    """One metric aggregated over time buckets."""

    device_id: str
    metric: str
    agg: str
    interval_s: float
    start: Time
    end: Time
    points: list[SeriesPointPublic]


class DeadLetterPublic(BaseModel):
    """A rejected message. The payload is text when it is UTF-8, base64 otherwise."""

    id: int
    received_at: Time
    topic: str
    reason: str
    detail: str
    device_id: str | None
    profile: str | None
    size: int
    truncated: bool
    payload_text: str | None
    payload_base64: str | None

    @classmethod
    def of(cls, row: DeadLetterRow) -> DeadLetterPublic:
        import base64

        try:
            text: str | None = row.payload.decode("utf-8")
            b64 = None
        except UnicodeDecodeError:
            text = None
            b64 = base64.b64encode(row.payload).decode()
        return cls(
            id=row.id,
            received_at=format_us(row.received_us),
            topic=row.topic,
            reason=row.reason,
            detail=row.detail,
            device_id=row.device_id,
            profile=row.profile,
            size=row.size,
            truncated=row.size > len(row.payload),
            payload_text=text,
            payload_base64=b64,
        )


class DeadLettersPublic(BaseModel):
    """A page of dead letters, newest first."""

    data: list[DeadLetterPublic]
    next_cursor: str | None


class IngestAccepted(BaseModel):
    """A message accepted over HTTP and committed."""

    device_id: str
    readings: int = Field(description="Readings in the message")
    written: int = Field(description="Readings newly stored in the batch holding this message")
    duplicates: int


class Health(BaseModel):
    """Liveness and the state of each part."""

    status: Literal["ok", "degraded"]
    store: Literal["ok", "unwritable", "error"] = Field(
        description="`unwritable`: it answers, but ingest's writes fail (disk full, read-only, "
        "locked); `error`: it does not answer"
    )
    store_writes_failing_s: float = Field(
        0.0, description="How long ingest's database writes have been failing (0: they succeed)"
    )
    mqtt_connected: bool
    mqtt_url: str
    broker: Literal["embedded", "external"]
    broker_running: bool | None
    broker_restarts: int | None
    ingest_queue_depth: int
    batches_committed: int
    problems: list[str] = Field(
        default_factory=list, description="Why the status is `degraded`, in words (empty when ok)"
    )


class CommandTransitionPublic(BaseModel):
    """One step of a command's life."""

    state: CommandState
    at: Time
    detail: str

    @classmethod
    def of(cls, step: CommandTransition) -> CommandTransitionPublic:
        return cls(state=step.state, at=format_us(step.at_us), detail=step.detail)


def _time(ts_us: int | None) -> Time | None:
    return format_us(ts_us) if ts_us is not None else None


class CommandPublic(BaseModel):
    """A command and where it is in its life (docs/commands.md)."""

    id: str
    device: str
    name: str
    params: dict[str, Any]
    format: str = Field(description="The stack's command format the device speaks")
    topic: str
    state: CommandState
    created: Time
    updated: Time
    sent: Time | None
    finished: Time | None
    timeout_s: float
    expires_at: Time | None
    result: Any = Field(description="What the device answered (ack formats), else null")
    error: str | None
    decided_by: str | None = Field(
        description="The rule that ended it: ack, echo:<metric>=<value>, status_reply, "
        "next_message, timeout, expiry, cancel"
    )
    history: list[CommandTransitionPublic] | None = Field(
        default=None, description="Every transition, oldest first (single-command reads)"
    )

    @classmethod
    def of(cls, row: CommandRow, *, history: bool = False) -> CommandPublic:
        return cls(
            id=row.command_id,
            device=row.device_id,
            name=row.name,
            params=row.params,
            format=row.format,
            topic=row.topic,
            state=row.state,
            created=format_us(row.created_us),
            updated=format_us(row.updated_us),
            sent=_time(row.sent_us),
            finished=_time(row.finished_us),
            timeout_s=row.timeout_s,
            expires_at=_time(row.expires_us),
            result=row.result,
            error=row.error,
            decided_by=row.decided_by,
            history=[CommandTransitionPublic.of(h) for h in row.history] if history else None,
        )


class CommandsPublic(BaseModel):
    """A page of a device's commands, newest first."""

    data: list[CommandPublic]
    next_cursor: str | None


class CommandTypePublic(BaseModel):
    """A command a device's format knows."""

    name: str
    description: str
    params_schema: dict[str, Any]


class CommandTypesPublic(BaseModel):
    """How a device is commanded: its format and the commands it knows."""

    format: str | None = Field(description="null: the device's stack takes no commands")
    topic: str | None
    accepts_other_names: bool = Field(
        description="true: names outside the list are sent unchecked (the device answers)"
    )
    commands: list[CommandTypePublic]


class AlarmPublic(BaseModel):
    """An alarm a rule raised for a device and where it is in its life (docs/rules.md): the REST
    body of `/api/v1/alarms` and the live `alarm` frame."""

    id: str
    rule: str
    device: str
    severity: str = Field(description="critical, major, minor or warning")
    state: AlarmState
    raised: Time
    acknowledged: Time | None
    acknowledged_by: str | None
    ack_comment: str | None
    cleared: Time | None
    cleared_by: str | None = Field(description="`rule:<id>` when the condition cleared it")
    last_notified: Time | None
    notifications: int = Field(description="Notifications sent about it, repeats included")
    escalated: Time | None

    @classmethod
    def of(cls, row: AlarmRow) -> AlarmPublic:
        return cls(
            id=row.alarm_id,
            rule=row.rule_id,
            device=row.device_id,
            severity=row.severity,
            state=row.state,
            raised=format_us(row.raised_us),
            acknowledged=_time(row.acked_us),
            acknowledged_by=row.acked_by,
            ack_comment=row.ack_comment,
            cleared=_time(row.cleared_us),
            cleared_by=row.cleared_by,
            last_notified=_time(row.last_notified_us),
            notifications=row.notifications,
            escalated=_time(row.escalated_us),
        )
