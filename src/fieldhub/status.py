"""The platform's vital signs in one snapshot: fleet counts, ingest rates, queues, drops, broker.

Served at `GET /api/v1/system`, pushed once a second as the live `stats` frame, and rendered by
the dashboard's system page and fleet counters. Rates are deltas of the Prometheus counters
between snapshots, so every reader sees the same figures as `/metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from fieldhub import clock
from fieldhub.broker.supervisor import BrokerSupervisor
from fieldhub.events.bus import EventBus
from fieldhub.ingest.pipeline import Ingest
from fieldhub.live.hub import LiveHub
from fieldhub.protocol.ids import MAX_DEVICE_ID_CHARS
from fieldhub.protocol.payload import (
    MAX_FIELDS_PER_MESSAGE,
    MAX_JSON_DEPTH,
    MAX_NAME_CHARS,
    MAX_PAYLOAD_BYTES,
)
from fieldhub.store.base import Store
from fieldhub.store.plan import (
    DEAD_LETTER_DETAIL_MAX_CHARS,
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_TOPIC_MAX_CHARS,
)
from fieldhub.store.retention import RetentionPolicy

# Snapshots closer together than this reuse the previous rates: a rate over a few milliseconds
# is noise, and several viewers and API calls ask within the same second.
MIN_RATE_WINDOW_S = 0.5
HOUR_US = 3_600 * 1_000_000


class FleetCounts(BaseModel):
    devices: int
    online: int
    offline: int
    stale: int


class IngestStatus(BaseModel):
    messages_per_s: float = Field(description="Messages handled (stored, dead, ignored) per second")
    readings_per_s: float
    batches_per_s: float
    commit_ms_mean: float | None = Field(description="Mean commit time over the last window")
    queue_depth: int
    queue_high_water: int
    linger_ms: float
    backpressure_waits: int
    write_errors: int
    dead_letters_last_hour: int


class LiveStatus(BaseModel):
    viewers: int
    subscriptions: int
    dropped_frames: int = Field(description="Frames slow viewers lost since start")
    bus_dropped_events: int = Field(description="Batches slow bus subscribers lost since start")
    bus_backlog: int


class BrokerStatus(BaseModel):
    kind: Literal["embedded", "external"]
    url: str
    connected: bool = Field(description="Ingest's MQTT connection is up")
    running: bool | None = Field(description="The embedded broker process is running")
    restarts: int | None
    problem: str | None = Field(
        None, description="Why ingest's subscription cannot be trusted now (session takeover)"
    )


class DeadLetterLimits(BaseModel):
    days: dict[str, float | None] = Field(
        description="Days kept per reason (`*`: every reason without days of its own; null: "
        "forever)"
    )
    max_bytes: int | None = Field(description="Most they may take, oldest deleted first")
    bytes: int = Field(description="What they take now, as that budget counts it")
    payload_max_bytes: int = Field(description="Of a payload, this much is kept")
    topic_max_chars: int = Field(description="Of a topic (and a device id), this much is kept")
    detail_max_chars: int


class MessageLimits(BaseModel):
    payload_max_bytes: int = Field(description="Larger: a dead letter `oversize_payload`")
    json_max_depth: int = Field(description="Deeper nesting: a dead letter `too_deep`")
    fields_max: int = Field(description="More fields in one message: `too_many_fields`")
    name_max_chars: int = Field(description="A longer metric or attribute name: `bad_field_name`")
    device_id_max_chars: int = Field(description="A longer device id: `bad_device_id`")


class DeviceLimits(BaseModel):
    new_devices_per_hour: float = Field(description="Past it, a new device's messages are dead")
    max_metrics_per_device: int
    max_attributes_per_device: int
    max_attribute_chars: int


class Limits(BaseModel):
    """What bounds hostile or unlucky input (docs/limits.md); each bites with a counter."""

    messages: MessageLimits
    devices: DeviceLimits
    dead_letters: DeadLetterLimits
    store_unwritable_503_s: float = Field(
        description="/healthz answers 503 once database writes have failed this long"
    )


class SystemStatus(BaseModel):
    """One snapshot of the platform's state."""

    time_us: int
    uptime_s: float
    fleet: FleetCounts
    ingest: IngestStatus
    live: LiveStatus
    broker: BrokerStatus
    limits: Limits


@dataclass(slots=True)
class _Totals:
    at: float
    messages: float
    readings: float
    batches: float
    commit_sum: float


class StatusReporter:
    """Builds `SystemStatus` snapshots from the parts it reads (given one by one, so that it
    depends on them and not on the composition root that builds them)."""

    def __init__(
        self,
        *,
        store: Store,
        registry: CollectorRegistry,
        ingest: Ingest,
        bus: EventBus,
        broker: BrokerSupervisor | None,
        mqtt_url: str,
        mqtt_connected: Callable[[], bool],
        mqtt_problem: Callable[[], str | None] = lambda: None,
        store_unwritable_503_s: float = 60.0,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.store = store
        self.store_unwritable_503_s = store_unwritable_503_s
        self.retention = retention or RetentionPolicy()
        self.registry = registry
        self.ingest = ingest
        self.bus = bus
        self.broker = broker
        self.mqtt_url = mqtt_url
        self.mqtt_connected = mqtt_connected
        self.mqtt_problem = mqtt_problem
        # Set once the live hub exists: it takes its stats frames from this reporter.
        self.live: LiveHub | None = None
        self.started = time.monotonic()
        self._previous: _Totals | None = None
        self._rates: tuple[float, float, float, float | None] = (0.0, 0.0, 0.0, None)

    def _sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels)
        return value or 0.0

    def _totals(self) -> _Totals:
        messages = sum(
            self._sample("fieldhub_ingest_messages_total", {"outcome": outcome})
            for outcome in ("stored", "dead_letter", "ignored", "retained_redelivery")
        )
        return _Totals(
            at=time.monotonic(),
            messages=messages,
            readings=self._sample("fieldhub_readings_written_total"),
            batches=self._sample("fieldhub_ingest_commit_seconds_count"),
            commit_sum=self._sample("fieldhub_ingest_commit_seconds_sum"),
        )

    def _update_rates(self) -> tuple[float, float, float, float | None]:
        now = self._totals()
        before = self._previous
        if before is None:
            self._previous = now
            return self._rates
        elapsed = now.at - before.at
        if elapsed < MIN_RATE_WINDOW_S:
            return self._rates
        batches = now.batches - before.batches
        self._rates = (
            (now.messages - before.messages) / elapsed,
            (now.readings - before.readings) / elapsed,
            batches / elapsed,
            (now.commit_sum - before.commit_sum) / batches * 1000 if batches else None,
        )
        self._previous = now
        return self._rates

    def broker_status(self) -> BrokerStatus:
        """The broker as ingest sees it (embedded or external, connected, restarts)."""
        broker = self.broker
        return BrokerStatus(
            kind="embedded" if broker is not None else "external",
            url=self.mqtt_url,
            connected=self.mqtt_connected(),
            running=broker.is_running if broker is not None else None,
            restarts=broker.restarts if broker is not None else None,
            problem=self.mqtt_problem(),
        )

    async def snapshot(self) -> SystemStatus:
        """The platform's state now (fleet counts query the store)."""
        store = self.store
        now_us = clock.now_us()
        total = await store.count_devices(profile=None, presence=None, search=None, now_us=now_us)
        by_state = {
            state: await store.count_devices(
                profile=None, presence=state, search=None, now_us=now_us
            )
            for state in ("online", "offline", "stale")
        }
        dead_hour = await store.count_dead_letters(since_us=now_us - HOUR_US)
        messages_per_s, readings_per_s, batches_per_s, commit_ms = self._update_rates()
        live = self.live
        return SystemStatus(
            time_us=now_us,
            uptime_s=round(time.monotonic() - self.started, 1),
            fleet=FleetCounts(devices=total, **by_state),
            ingest=IngestStatus(
                messages_per_s=round(messages_per_s, 1),
                readings_per_s=round(readings_per_s, 1),
                batches_per_s=round(batches_per_s, 1),
                commit_ms_mean=round(commit_ms, 2) if commit_ms is not None else None,
                queue_depth=self.ingest.queue_depth,
                queue_high_water=int(self._sample("fieldhub_ingest_queue_high_water")),
                linger_ms=self.ingest.current_linger_s() * 1000,
                backpressure_waits=int(self._sample("fieldhub_ingest_backpressure_waits_total")),
                write_errors=int(self._sample("fieldhub_ingest_write_errors_total")),
                dead_letters_last_hour=dead_hour,
            ),
            live=LiveStatus(
                viewers=live.viewers if live is not None else 0,
                subscriptions=int(self._sample("fieldhub_live_groups")),
                dropped_frames=int(self._sample("fieldhub_live_dropped_frames_total")),
                bus_dropped_events=self.bus.dropped_events,
                bus_backlog=live.bus_backlog if live is not None else 0,
            ),
            broker=self.broker_status(),
            limits=self.limits(),
        )

    def limits(self) -> Limits:
        """The bounds in force (settings and constants) and where they stand."""
        policy = self.retention
        inputs = self.store.input_limits
        return Limits(
            messages=MessageLimits(
                payload_max_bytes=MAX_PAYLOAD_BYTES,
                json_max_depth=MAX_JSON_DEPTH,
                fields_max=MAX_FIELDS_PER_MESSAGE,
                name_max_chars=MAX_NAME_CHARS,
                device_id_max_chars=MAX_DEVICE_ID_CHARS,
            ),
            devices=DeviceLimits(
                new_devices_per_hour=inputs.new_devices_per_hour,
                max_metrics_per_device=inputs.max_metrics_per_device,
                max_attributes_per_device=inputs.max_attributes_per_device,
                max_attribute_chars=inputs.max_attribute_chars,
            ),
            dead_letters=DeadLetterLimits(
                days=policy.dead_letter_rules(),
                max_bytes=policy.dead_letter_max_bytes,
                bytes=int(self._sample("fieldhub_dead_letter_bytes")),
                payload_max_bytes=DEAD_LETTER_MAX_BYTES,
                topic_max_chars=DEAD_LETTER_TOPIC_MAX_CHARS,
                detail_max_chars=DEAD_LETTER_DETAIL_MAX_CHARS,
            ),
            store_unwritable_503_s=self.store_unwritable_503_s,
        )
