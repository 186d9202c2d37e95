"""The dispatcher: bounded queues, a lane per target, a worker pool, retries, digests, counters.

`submit` never waits: it queues a notification or drops it (counted, and a `dropped` delivery
record). Behind it:

- **Bounded per kind.** At most `max_queued` (10,000) webhook and as many e-mail notifications
  wait or are in delivery (retries included); one target may hold at most `max_per_target` of
  them, so a dead host fills its own lane, not the queue everyone shares.
- **A lane per target.** Each target's notifications go through its own FIFO, drained by at
  most `per_target` runners. A runner that waits out a backoff holds only its own lane: a down
  or slow webhook host delays its own notifications, never another target's. (One FIFO per kind
  drained by a fixed pool would let a dead host's backoffs occupy every worker.)
- **A worker pool per kind.** `workers` attempts of a kind may be in flight at once (sockets,
  SMTP threads); a slot is held for one attempt, never through a backoff.
- **Digests.** Notifications with a `group` (a rule) to one target: the first is sent at once
  (a lone alarm is never delayed), those that follow within `digest_window_s` are collected and
  sent as one digest when the window ends, and while they keep coming, one digest per window. A
  rule matching 10,000 devices sends two messages, not 10,000.

Time runs on the injected `Clock` and `sleep` (backoffs, windows), so tests move a manual clock
instead of waiting. Everything runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from fieldhub.clock import SYSTEM_CLOCK, Clock
from fieldhub.notify.message import (
    KINDS,
    Attempt,
    Delivery,
    DeliveryLog,
    Kind,
    Notification,
    digest_key,
    redact_url,
    shown_target,
)
from fieldhub.notify.retry import DEFAULT_POLICY, RetryPolicy, Sender, Sleep, deliver, record

log = logging.getLogger("fieldhub.notify")

MAX_QUEUED = 10_000
MAX_PER_TARGET = 1_000
WORKERS = 16
PER_TARGET = 2
DIGEST_WINDOW_S = 60.0
# Items a digest lists in full; beyond, they are counted (`omitted`), keeping a digest's size
# (and a window's memory) bounded however many devices a rule matches.
MAX_DIGEST_ITEMS = 1_000


@dataclass(slots=True)
class _Lane:
    """One target's queued notifications and how many runners drain it."""

    items: deque[Notification] = field(default_factory=deque)
    runners: int = 0


@dataclass(slots=True)
class _Window:
    """A digest window: what arrived since the last message of a group to a target."""

    items: list[Notification] = field(default_factory=list)
    count: int = 0


class _Pooled:
    """A sender whose attempts take a slot of the kind's worker pool."""

    def __init__(self, sender: Sender, slots: asyncio.Semaphore) -> None:
        self._sender = sender
        self._slots = slots

    @property
    def kind(self) -> Kind:
        return self._sender.kind

    async def attempt(self, notification: Notification) -> Attempt:
        async with self._slots:
            return await self._sender.attempt(notification)


class Dispatcher:
    """Queues notifications and delivers them through `senders` (one per kind)."""

    def __init__(
        self,
        senders: Mapping[Kind, Sender],
        *,
        registry: CollectorRegistry,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Sleep = asyncio.sleep,
        on_delivery: DeliveryLog | None = None,
        policy: RetryPolicy = DEFAULT_POLICY,
        max_queued: int = MAX_QUEUED,
        max_per_target: int = MAX_PER_TARGET,
        workers: int = WORKERS,
        per_target: int = PER_TARGET,
        digest_window_s: float = DIGEST_WINDOW_S,
        rng: random.Random | None = None,
    ) -> None:
        for kind, sender in senders.items():
            if sender.kind != kind:
                raise ValueError(f"the {kind} sender sends {sender.kind}")
        self._clock = clock
        self._sleep = sleep
        self._on_delivery = on_delivery
        self._policy = policy
        self._max_queued = max_queued
        self._max_per_target = max_per_target
        self._per_target = per_target
        self.digest_window_s = digest_window_s
        self._rng = rng or random.Random()
        self._senders: dict[Kind, Sender] = {
            kind: _Pooled(sender, asyncio.Semaphore(workers)) for kind, sender in senders.items()
        }
        self._lanes: dict[tuple[Kind, str], _Lane] = {}
        self._pending: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self._windows: dict[tuple[Kind, str, str], _Window] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

        self.queued = Counter(
            "fieldhub_notify_queued",
            "Notifications accepted for delivery",
            ["kind"],
            registry=registry,
        )
        self.delivered = Counter(
            "fieldhub_notify_delivered", "Notifications delivered", ["kind"], registry=registry
        )
        self.failed = Counter(
            "fieldhub_notify_failed",
            "Notifications given up on (refused for good, or every attempt failed)",
            ["kind"],
            registry=registry,
        )
        self.dropped = Counter(
            "fieldhub_notify_dropped",
            "Notifications never attempted: a full queue or lane, or the dispatcher stopped",
            ["kind"],
            registry=registry,
        )
        self.retried = Counter(
            "fieldhub_notify_retries",
            "Failed attempts followed by another",
            ["kind"],
            registry=registry,
        )
        self.digested = Counter(
            "fieldhub_notify_digested",
            "Notifications folded into a digest instead of sent alone",
            ["kind"],
            registry=registry,
        )
        pending = Gauge(
            "fieldhub_notify_pending",
            "Notifications queued or in delivery",
            ["kind"],
            registry=registry,
        )
        for kind in KINDS:
            pending.labels(kind).set_function(self._pending_of(kind))
            for counter in (
                self.queued,
                self.delivered,
                self.failed,
                self.dropped,
                self.retried,
                self.digested,
            ):
                counter.labels(kind)

    # -- intake ------------------------------------------------------------------------------

    def submit(self, notification: Notification) -> bool:
        """Queue `notification` (or fold it into its group's digest window); False when it was
        dropped. Never waits; call on the event loop's thread."""
        if self._closed or notification.kind not in self._senders:
            return self._drop(
                notification,
                "the dispatcher is stopped"
                if self._closed
                else f"no {notification.kind} sender configured",
            )
        if notification.group is not None and not notification.is_digest:
            window_key = (notification.kind, notification.target, notification.group)
            window = self._windows.get(window_key)
            if window is not None:
                self._collect(window, notification)
                return True
            self._windows[window_key] = _Window()
            self._spawn(self._run_window(window_key), name=self._task_name("digest", window_key))
        return self._enqueue(notification)

    def _pending_of(self, kind: Kind) -> Callable[[], float]:
        return lambda: self._pending[kind]

    def pending(self, kind: Kind) -> int:
        """Notifications of `kind` queued or in delivery."""
        return self._pending[kind]

    def task_names(self) -> list[str]:
        """The running tasks' names (lanes, digest windows)."""
        return sorted(task.get_name() for task in self._tasks)

    async def wait_idle(self) -> None:
        """Wait until nothing is queued or in delivery (digest windows may still be open)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop: refuse new notifications, cancel lanes and windows; what was still queued is
        dropped (counted, with a `dropped` record each)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for lane in self._lanes.values():
            while lane.items:
                notification = lane.items.popleft()
                self._pending[notification.kind] -= 1
                self._drop(notification, "the dispatcher stopped")
        self._lanes.clear()
        for (kind, target, group), window in self._windows.items():
            if window.count:
                # Folded into a digest that will not be sent now: counted, not recorded one by one.
                self.dropped.labels(kind).inc(window.count)
                log.warning(
                    "notify %s dropped a digest of %d (%s) to %s: the dispatcher stopped",
                    kind,
                    window.count,
                    group,
                    redact_url(target) if kind == "webhook" else target,
                )
        self._windows.clear()
        self._idle.set()

    def _enqueue(self, notification: Notification) -> bool:
        kind = notification.kind
        if self._pending[kind] >= self._max_queued:
            return self._drop(notification, f"the {kind} queue is full ({self._max_queued})")
        lane_key = (kind, notification.target)
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = self._lanes[lane_key] = _Lane()
        if len(lane.items) >= self._max_per_target:
            return self._drop(notification, f"the target's queue is full ({self._max_per_target})")
        lane.items.append(notification)
        self._pending[kind] += 1
        self._idle.clear()
        self.queued.labels(kind).inc()
        if lane.runners < self._per_target:
            lane.runners += 1
            self._spawn(self._run_lane(lane_key, lane), name=self._task_name("lane", lane_key))
        return True

    def _drop(self, notification: Notification, why: str) -> bool:
        self.dropped.labels(notification.kind).inc()
        record(
            Delivery(
                key=notification.key,
                kind=notification.kind,
                target=shown_target(notification),
                attempt=0,
                outcome="dropped",
                at_us=self._clock.now_us(),
                error=why,
                group=notification.group,
            ),
            self._on_delivery,
        )
        return False

    # -- lanes -------------------------------------------------------------------------------

    async def _run_lane(self, lane_key: tuple[Kind, str], lane: _Lane) -> None:
        """Deliver a target's notifications one after another until its lane is empty."""
        kind = lane_key[0]
        try:
            while lane.items:
                notification = lane.items.popleft()
                try:
                    await deliver(
                        notification,
                        self._senders[kind],
                        policy=self._policy,
                        clock=self._clock,
                        sleep=self._sleep,
                        rng=self._rng,
                        on_delivery=self._counted,
                    )
                except asyncio.CancelledError:
                    self._pending[kind] -= 1
                    self._drop(notification, "the dispatcher stopped")
                    raise
                except Exception as exc:
                    # A sender must classify its failures; one that raises is a bug, and costs
                    # only this notification.
                    log.exception("the %s sender raised on %s", kind, notification.key)
                    record(
                        Delivery(
                            key=notification.key,
                            kind=kind,
                            target=shown_target(notification),
                            attempt=1,
                            outcome="failed",
                            at_us=self._clock.now_us(),
                            error=f"sender error: {type(exc).__name__}",
                            group=notification.group,
                        ),
                        self._counted,
                    )
                self._pending[kind] -= 1
                if not any(self._pending.values()):
                    self._idle.set()
        finally:
            lane.runners -= 1
            if lane.runners == 0 and not lane.items and self._lanes.get(lane_key) is lane:
                del self._lanes[lane_key]

    def _counted(self, delivery: Delivery) -> None:
        """The delivery log, after the counters."""
        if delivery.outcome == "delivered":
            self.delivered.labels(delivery.kind).inc()
        elif delivery.outcome == "failed":
            self.failed.labels(delivery.kind).inc()
        elif delivery.outcome == "retrying":
            self.retried.labels(delivery.kind).inc()
        if self._on_delivery is not None:
            self._on_delivery(delivery)

    # -- digests -----------------------------------------------------------------------------

    def _collect(self, window: _Window, notification: Notification) -> None:
        window.count += 1
        if len(window.items) < MAX_DIGEST_ITEMS:
            window.items.append(notification)
        self.digested.labels(notification.kind).inc()

    async def _run_window(self, window_key: tuple[Kind, str, str]) -> None:
        """Close the window after `digest_window_s`: send what it collected as one digest and
        open the next, until a window collects nothing."""
        try:
            while True:
                await self._sleep(self.digest_window_s)
                window = self._windows.get(window_key)
                if window is None or window.count == 0:
                    break
                self._windows[window_key] = _Window()
                self._enqueue(self._digest(window_key, window))
        finally:
            window = self._windows.get(window_key)
            if window is not None and window.count == 0:
                del self._windows[window_key]

    def _digest(self, window_key: tuple[Kind, str, str], window: _Window) -> Notification:
        kind, target, group = window_key
        first = window.items[0]
        return Notification(
            kind=kind,
            target=target,
            subject=f"{window.count} notifications: {first.subject}"
            + (" and others" if window.count > 1 else ""),
            payload={
                "digest": {
                    "group": group,
                    "count": window.count,
                    "window_s": self.digest_window_s,
                    "omitted": window.count - len(window.items),
                },
                "items": [
                    {
                        "key": n.key,
                        "subject": n.subject,
                        "created_us": n.created_us,
                        "payload": dict(n.payload),
                    }
                    for n in window.items
                ],
            },
            key=digest_key(group, [n.key for n in window.items]),
            created_us=self._clock.now_us(),
            group=group,
            secret_env=first.secret_env,
        )

    # -- tasks -------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    @staticmethod
    def _task_name(what: str, key: tuple[str, ...]) -> str:
        kind, target, *rest = key
        shown = redact_url(target) if kind == "webhook" else target
        return f"notify.{what}[{kind} {shown}{' ' + rest[0] if rest else ''}]"
