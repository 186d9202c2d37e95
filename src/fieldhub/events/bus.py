"""The in-process event bus: committed data fanned out to bounded, per-subscriber queues.

Ingest publishes one `Committed` event per batch after the commit and the broker ack; the command
service one `CommandChanged` per stored command transition, the rule engine one `AlarmChanged`
per alarm transition. Publishing
is an append per subscriber, never a wait: a subscriber that falls behind loses its oldest events,
and the loss is counted, so a stuck consumer (a frozen browser tab, a slow rule) can never hold
back storage. Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from fieldhub.protocol.messages import Decoded
from fieldhub.store.types import (
    AlarmRow,
    CommandRow,
    DeadLetter,
    PresenceChange,
    WriteBatch,
    WriteResult,
)

# Events (= committed batches) a subscriber may hold before its oldest are dropped. A batch is
# committed every 5-100 ms, so this is seconds of backlog: enough to ride out a GC pause or a
# burst, small enough that a stuck consumer holds little memory.
DEFAULT_QUEUE_EVENTS = 256


@dataclass(frozen=True, slots=True)
class Committed:
    """One committed ingest batch: what was stored, when."""

    committed_us: int
    decoded: list[Decoded]
    dead_letters: list[DeadLetter]
    new_devices: list[str]
    presence_changes: list[PresenceChange]


@dataclass(frozen=True, slots=True)
class CommandChanged:
    """A command moved on: the row as it now is, `history` holding the entries just added."""

    command: CommandRow


@dataclass(frozen=True, slots=True)
class AlarmChanged:
    """An alarm was raised, acknowledged or cleared (the rule engine): the row as it now is."""

    alarm: AlarmRow


BusEvent = Committed | CommandChanged | AlarmChanged


@dataclass(slots=True)
class Subscription:
    """One consumer's bounded queue. `get` waits for the next event."""

    name: str
    bus: EventBus
    maxlen: int
    _queue: deque[BusEvent] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0

    def put(self, event: BusEvent) -> None:
        if len(self._queue) >= self.maxlen:
            self._queue.popleft()
            self.dropped += 1
            self.bus.dropped_events += 1
            self.bus.dropped.labels(self.name).inc()
        self._queue.append(event)
        self._ready.set()

    async def get(self) -> BusEvent:
        """The oldest event still queued; waits while there is none."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def get_nowait(self) -> BusEvent | None:
        """The oldest event still queued, or None."""
        return self._queue.popleft() if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Stop receiving events."""
        self.bus.unsubscribe(self)


class EventBus:
    """Fan-out of committed batches to subscribers; attach `on_commit` to ingest's listeners."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._subscribers: list[Subscription] = []
        self.published = 0
        self.dropped_events = 0
        self.dropped = Counter(
            "fieldhub_bus_dropped_events",
            "Committed batches a slow bus subscriber lost (its oldest first); storage unaffected",
            ["subscriber"],
            registry=registry,
        )
        Gauge("fieldhub_bus_subscribers", "Event bus subscribers", registry=registry).set_function(
            lambda: len(self._subscribers)
        )

    def subscribe(self, name: str, *, maxlen: int = DEFAULT_QUEUE_EVENTS) -> Subscription:
        """A new bounded queue that receives every event published from now on."""
        subscription = Subscription(name=name, bus=self, maxlen=maxlen)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def publish(self, event: BusEvent) -> None:
        """Hand `event` to every subscriber; never blocks."""
        self.published += 1
        for subscription in self._subscribers:
            subscription.put(event)

    def on_commit(self, batch: WriteBatch, result: WriteResult, committed_us: int) -> None:
        """Ingest commit listener: publish the batch if anyone listens."""
        if not self._subscribers:
            return
        self.publish(
            Committed(
                committed_us=committed_us,
                decoded=batch.decoded,
                dead_letters=batch.dead_letters,
                new_devices=result.new_devices,
                presence_changes=result.presence_changes,
            )
        )
