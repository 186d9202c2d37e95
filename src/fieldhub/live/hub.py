"""Live fan-out: committed batches -> filtered, coalesced, encoded frames -> viewers' outboxes.

Viewers with equal subscriptions share a `Group`: one filter pass, one coalescer and one encoded
frame per batch, then a cheap append per viewer. Each viewer has a bounded outbox drained by its
own sender task (api/routes/live.py), so one slow socket costs only itself and never stalls the
others (docs/field-notes.md, "Python libraries").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from fieldhub import __version__, clock
from fieldhub.events.bus import AlarmChanged, CommandChanged, Committed, EventBus
from fieldhub.live.coalesce import SeriesCoalescer, Update
from fieldhub.live.subscriptions import LiveFilter
from fieldhub.protocol.payload import payload_preview
from fieldhub.schemas import AlarmPublic, CommandPublic, CommandTransitionPublic
from fieldhub.store.types import DeadLetter

log = logging.getLogger("fieldhub.live")

# Frames a viewer may have waiting before its oldest are dropped. A healthy browser reads each
# frame within milliseconds; 256 frames is seconds of updates, after which the viewer is better
# served by re-reading state over HTTP (it is told so by a `lagged` frame).
OUTBOX_FRAMES = 256
# How often held (coalesced) updates are checked for the end of their window: adds at most this
# much to the delay of an update that was held anyway.
TICK_S = 0.05
STATS_PERIOD_S = 1.0
DEAD_LETTERS_PER_FRAME = 20
# Updates per readings frame. Coalescing bounds a frame to one update per series, but a fleet of
# 3,000 devices x 10 metrics after an ingest stall is 30,000 updates: split, so one send never
# holds the event loop (and every other viewer) for long.
UPDATES_PER_FRAME = 2_000
DEAD_LETTER_WINDOW_US = 250_000
# Bus events the hub may have waiting; it handles a batch in well under a millisecond per group.
BUS_QUEUE_EVENTS = 1024

StatsSource = Callable[[], Awaitable[dict[str, Any]]]


def encode(frame: dict[str, Any]) -> str:
    """A frame as the JSON text sent on the wire."""
    return orjson.dumps(frame).decode()


class LiveMetrics:
    """Prometheus figures of the live fan-out."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.viewers = Gauge(
            "fieldhub_live_viewers", "Open live WebSocket connections", registry=registry
        )
        self.groups = Gauge(
            "fieldhub_live_groups", "Distinct live subscriptions", registry=registry
        )
        self.frames = Counter(
            "fieldhub_live_frames", "Frames queued to live viewers", registry=registry
        )
        self.dropped = Counter(
            "fieldhub_live_dropped_frames",
            "Frames a slow live viewer lost (its oldest first); it is sent a `lagged` frame",
            registry=registry,
        )


class Viewer:
    """One live connection's outbox."""

    def __init__(self, metrics: LiveMetrics, maxlen: int = OUTBOX_FRAMES) -> None:
        self._metrics = metrics
        self._outbox: deque[str] = deque()
        self._maxlen = maxlen
        self._ready = asyncio.Event()
        self._unreported = 0
        self.dropped = 0
        self.group: Group | None = None

    def push(self, frame: str) -> None:
        """Queue a frame; when the outbox is full the oldest frame is dropped and counted."""
        if len(self._outbox) >= self._maxlen:
            self._outbox.popleft()
            self.dropped += 1
            self._unreported += 1
            self._metrics.dropped.inc()
        self._outbox.append(frame)
        self._metrics.frames.inc()
        self._ready.set()

    async def next_frame(self) -> str:
        """The next frame to send; a `lagged` frame first if frames were dropped since the last."""
        while not self._outbox:
            self._ready.clear()
            await self._ready.wait()
        if self._unreported:
            lost, self._unreported = self._unreported, 0
            return encode({"type": "lagged", "dropped": lost})
        return self._outbox.popleft()

    @property
    def queued(self) -> int:
        return len(self._outbox)


class Group:
    """Viewers sharing one subscription, and the state of its stream."""

    def __init__(self, key: LiveFilter) -> None:
        self.key = key
        self.viewers: set[Viewer] = set()
        self.metrics = key.metrics
        self.readings = "readings" in key.events
        self.presence = "presence" in key.events
        self.devices = "devices" in key.events
        self.dead_letters = "dead_letters" in key.events
        self.stats = "stats" in key.events
        self.commands = "commands" in key.events
        self.alarms = "alarms" in key.events
        self.coalescer = SeriesCoalescer(key.min_interval_ms * 1_000)
        self.out: list[Update] = []
        self._dl_items: list[dict[str, Any]] = []
        self._dl_suppressed = 0
        self._dl_last_frame_us = 0

    def broadcast(self, frame: dict[str, Any]) -> None:
        text = encode(frame)
        for viewer in self.viewers:
            viewer.push(text)

    def add_dead_letter(self, item: DeadLetter, now_us: int) -> None:
        if len(self._dl_items) >= DEAD_LETTERS_PER_FRAME:
            self._dl_suppressed += 1
            return
        self._dl_items.append(
            {
                "received": item.received_us,
                "topic": item.topic,
                "reason": item.reason,
                "detail": item.detail,
                "device": item.device_id,
                "profile": item.profile,
                "size": len(item.payload),
                "preview": payload_preview(item.payload),
            }
        )

    def flush(self, now_us: int) -> None:
        """Send what this batch (or tick) produced."""
        if self.out:
            out = self.out
            for start in range(0, len(out), UPDATES_PER_FRAME):
                self.broadcast({"type": "readings", "data": out[start : start + UPDATES_PER_FRAME]})
            self.out = []
        # At most one dead-letter frame per window: the first goes out at once, the rest of a
        # burst when the window ends (the tick calls flush every TICK_S).
        if (self._dl_items or self._dl_suppressed) and (
            now_us - self._dl_last_frame_us >= DEAD_LETTER_WINDOW_US
        ):
            self._dl_last_frame_us = now_us
            self.broadcast(
                {"type": "dead_letters", "items": self._dl_items, "suppressed": self._dl_suppressed}
            )
            self._dl_items = []
            self._dl_suppressed = 0


class LiveHub:
    """Consumes the event bus and feeds every viewer group. `run` is its task."""

    def __init__(
        self, bus: EventBus, registry: CollectorRegistry, stats: StatsSource | None = None
    ) -> None:
        self.metrics = LiveMetrics(registry)
        self._subscription = bus.subscribe("live", maxlen=BUS_QUEUE_EVENTS)
        self.stats_source = stats
        self._groups: dict[LiveFilter, Group] = {}
        self._by_device: dict[str, list[Group]] = {}
        self._all_devices: list[Group] = []
        self._viewers = 0

    @property
    def bus_backlog(self) -> int:
        return len(self._subscription)

    @property
    def viewers(self) -> int:
        return self._viewers

    def new_viewer(self) -> Viewer:
        self._viewers += 1
        self.metrics.viewers.set(self._viewers)
        return Viewer(self.metrics)

    def attach(self, viewer: Viewer, key: LiveFilter) -> None:
        """(Re)subscribe `viewer` to `key`, leaving its previous group."""
        self._leave(viewer)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(key)
            self._reindex()
        group.viewers.add(viewer)
        viewer.group = group

    def detach(self, viewer: Viewer) -> None:
        """The viewer disconnected."""
        self._leave(viewer)
        self._viewers -= 1
        self.metrics.viewers.set(self._viewers)

    def _leave(self, viewer: Viewer) -> None:
        group = viewer.group
        if group is None:
            return
        group.viewers.discard(viewer)
        viewer.group = None
        if not group.viewers:
            del self._groups[group.key]
            self._reindex()

    def _reindex(self) -> None:
        self._all_devices = [g for g in self._groups.values() if g.key.devices is None]
        by_device: dict[str, list[Group]] = {}
        for group in self._groups.values():
            for device in group.key.devices or ():
                by_device.setdefault(device, []).append(group)
        self._by_device = by_device
        self.metrics.groups.set(len(self._groups))

    def _groups_for(self, device_id: str | None) -> Iterable[Group]:
        if device_id is None:
            return self._all_devices
        listed = self._by_device.get(device_id)
        return self._all_devices + listed if listed else self._all_devices

    # -- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        ticker = asyncio.create_task(self._tick(), name="live.tick")
        try:
            while True:
                event = await self._subscription.get()
                if self._groups:
                    try:
                        if isinstance(event, CommandChanged):
                            self.dispatch_command(event)
                        elif isinstance(event, AlarmChanged):
                            self.dispatch_alarm(event)
                        elif isinstance(event, Committed):
                            self.dispatch(event, clock.now_us())
                    except Exception:  # a bug here must not stop live updates for good
                        log.exception("live dispatch failed; batch skipped for live viewers")
        finally:
            ticker.cancel()
            self._subscription.close()

    def dispatch_command(self, event: CommandChanged) -> None:
        """A command moved on: one `command` frame per new history entry, so a viewer sees every
        state even when two were stored at once (an ack that implied `sent`). A frame for an
        entry before the last shows the command as it was then: no outcome yet."""
        row = event.command
        groups = [g for g in self._groups_for(row.device_id) if g.commands]
        if not groups:
            return
        body: dict[str, Any] = CommandPublic.of(row).model_dump(mode="json", exclude={"history"})
        last = len(row.history) - 1
        for index, step in enumerate(row.history):
            transition = CommandTransitionPublic.of(step).model_dump(mode="json")
            frame_body = {**body, "state": transition["state"], "transition": transition}
            if index < last:
                frame_body.update(
                    updated=transition["at"], finished=None, result=None, error=None,
                    decided_by=None,
                )  # fmt: skip
            frame = {"type": "command", "command": frame_body}
            for group in groups:
                group.broadcast(frame)

    def dispatch_alarm(self, event: AlarmChanged) -> None:
        """An alarm was raised, acknowledged or cleared: one `alarm` frame with the alarm as it
        now is (the REST body of /api/v1/alarms/{id} without its events) to the groups that
        asked for alarms and watch its device. Not coalesced: alarm moves are rare and each
        one matters (an acknowledgement must show at once on every open alarms page)."""
        row = event.alarm
        groups = [g for g in self._groups_for(row.device_id) if g.alarms]
        if not groups:
            return
        frame = encode({"type": "alarm", "alarm": AlarmPublic.of(row).model_dump(mode="json")})
        for group in groups:
            for viewer in group.viewers:
                viewer.push(frame)

    def dispatch(self, event: Committed, now_us: int) -> None:
        """Route one committed batch to the groups that want it."""
        touched: set[Group] = set()
        for decoded in event.decoded:
            device = decoded.device_id
            for group in self._groups_for(device):
                if group.readings and decoded.readings:
                    offer = group.coalescer.offer
                    out = group.out
                    metrics = group.metrics
                    for metric, ts_us, value in decoded.readings:
                        if (metrics is None or metric in metrics) and offer(
                            device, metric, ts_us, value, now_us
                        ):
                            out.append([device, metric, ts_us, value])
                    touched.add(group)
                if group.devices and decoded.attributes:
                    group.broadcast(
                        {"type": "attributes", "device": device, "attributes": decoded.attributes}
                    )
        if event.new_devices:
            new = set(event.new_devices)
            profiles: dict[str, tuple[str, int]] = {}
            # The readings of a new device's first messages: viewers could not have subscribed
            # to it yet, so they come with the announcement (the newest per metric).
            first_values: dict[str, dict[str, list[str | int | float]]] = {}
            for d in event.decoded:
                if d.device_id in new:
                    profiles.setdefault(d.device_id, (d.profile, d.received_us))
                    values = first_values.setdefault(d.device_id, {})
                    for metric, ts_us, value in d.readings:
                        held = values.get(metric)
                        if held is None or ts_us >= held[1]:  # type: ignore[operator]
                            values[metric] = [metric, ts_us, value]
            # Not filtered by the subscription's device list: a viewer cannot name a device
            # before it exists, and new devices are rare.
            announcing = [g for g in self._groups.values() if g.devices]
            for device in event.new_devices:
                profile, first_seen = profiles.get(device, ("unknown", event.committed_us))
                for group in announcing:
                    group.broadcast(
                        {
                            "type": "device",
                            "device": {
                                "id": device,
                                "profile": profile,
                                "first_seen": first_seen,
                                "values": [
                                    v
                                    for v in first_values.get(device, {}).values()
                                    if group.metrics is None or v[0] in group.metrics
                                ],
                            },
                        }
                    )
        for change in event.presence_changes:
            for group in self._groups_for(change.device_id):
                if group.presence:
                    group.broadcast(
                        {
                            "type": "presence",
                            "device": change.device_id,
                            "state": change.state,
                            "since": change.at_us,
                        }
                    )
        for letter in event.dead_letters:
            for group in self._groups_for(letter.device_id):
                if group.dead_letters:
                    group.add_dead_letter(letter, now_us)
                    touched.add(group)
        for group in touched:
            group.flush(now_us)

    async def _tick(self) -> None:
        next_stats = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            now_us = clock.now_us()
            for group in list(self._groups.values()):
                group.out.extend(group.coalescer.due(now_us))
                group.flush(now_us)
            if self.stats_source is not None and time.monotonic() >= next_stats:
                next_stats = time.monotonic() + STATS_PERIOD_S
                wanting = [g for g in self._groups.values() if g.stats]
                if wanting:
                    try:
                        stats = await self.stats_source()
                    except Exception as exc:  # the database is down: stats say so next time
                        log.warning("live stats unavailable: %s", exc)
                        continue
                    frame = encode({"type": "stats", "data": stats})
                    for group in wanting:
                        for viewer in group.viewers:
                            viewer.push(frame)

    def hello(self) -> str:
        return encode({"type": "hello", "server_time": clock.now_us(), "version": __version__})
