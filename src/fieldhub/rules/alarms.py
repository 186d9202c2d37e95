"""Alarms and the notification log, as the rule engine keeps them (docs/rules.md).

`AlarmBook` raises, acknowledges and clears alarms in the store (which decides: one open alarm
per rule and device, the transition table) and publishes `AlarmChanged` for every transition
the store accepted. It keeps the open alarms in memory, because every tick asks which of them
are due a repeat or an escalation, and because the engine decides a batch's raises and clears
from it (`plan_raise`, `plan_clear`) before they are stored together (`record`): a webhook is
handed on without waiting for the database. The engine is the only writer of its rules' alarms
in a fieldhub process, so memory and store agree; where the store refuses a planned change
(another fieldhub process on the same database raised the pair first), the book re-reads the
open alarms.

`NotificationLog` takes the dispatcher's delivery records (a synchronous callback on the event
loop) and the engine's own outcomes (commands, MQTT publishes) into a bounded queue that one
task writes to the store: a slow database delays the log, never a delivery, and a log that
cannot keep up loses its oldest entries, counted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import replace

from prometheus_client import CollectorRegistry, Counter

from fieldhub.clock import Clock
from fieldhub.errors import Conflict, NotFound
from fieldhub.events.bus import AlarmChanged, EventBus
from fieldhub.notify.message import Delivery
from fieldhub.store.base import Store
from fieldhub.store.types import AlarmRow, AlarmState, NotificationEntry

log = logging.getLogger("fieldhub.rules")

# Open alarms read per page at start.
PAGE = 1_000
# Log entries waiting for the store; past this the oldest go (counted).
MAX_LOG_QUEUE = 10_000
# Log entries written per transaction.
MAX_LOG_BATCH = 500
# Notification keys remembered to name their alarm in the log (the oldest forgotten first).
MAX_KEYS = 100_000

PairKey = tuple[str, str]  # (rule_id, device_id)


def rule_actor(rule_id: str) -> str:
    """Who the engine acts as for a rule (alarm events, command audit entries)."""
    return f"rule:{rule_id}"


class AlarmBook:
    """The open alarms, and every alarm transition: stored, then published on the bus."""

    def __init__(self, store: Store, bus: EventBus, clock: Clock) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self.open: dict[PairKey, AlarmRow] = {}

    async def load(self) -> None:
        """Read every open (active or acknowledged) alarm from the store."""
        self.open.clear()
        before: tuple[int, str] | None = None
        while True:
            page = await self._store.list_alarms(state="open", limit=PAGE, before=before)
            for row in page:
                self.open[(row.rule_id, row.device_id)] = row
            if len(page) < PAGE:
                return
            before = (page[-1].raised_us, page[-1].alarm_id)

    def _changed(self, row: AlarmRow) -> AlarmRow:
        key = (row.rule_id, row.device_id)
        if row.state == "cleared":
            current = self.open.get(key)
            if current is not None and current.alarm_id == row.alarm_id:
                del self.open[key]
        else:
            self.open[key] = row
        self._bus.publish(AlarmChanged(row))
        return row

    def plan_raise(
        self, rule_id: str, device_id: str, severity: str, at_us: int
    ) -> AlarmRow | None:
        """The pair's new alarm, open in memory at once (`record` stores it); None when one is
        already open (after a restart too): it was raised, and notified, before."""
        key = (rule_id, device_id)
        if key in self.open:
            return None
        row = self.open[key] = AlarmRow(
            alarm_id=str(uuid.uuid4()),
            rule_id=rule_id,
            device_id=device_id,
            severity=severity,
            state="active",
            raised_us=at_us,
        )
        return row

    def planned_notified(self, row: AlarmRow, at_us: int) -> AlarmRow:
        """A planned raise, its notification handed on at `at_us` (stored with it)."""
        notified = replace(row, last_notified_us=at_us, notifications=row.notifications + 1)
        key = (row.rule_id, row.device_id)
        if self.open.get(key) is row:
            self.open[key] = notified
        return notified

    def plan_clear(self, rule_id: str, device_id: str, at_us: int) -> AlarmRow | None:
        """The pair's open alarm cleared by the rule, closed in memory at once (`record` stores
        it); None when none is open (someone cleared it by hand)."""
        row = self.open.pop((rule_id, device_id), None)
        if row is None:
            return None
        return replace(row, state="cleared", cleared_us=at_us, cleared_by=rule_actor(rule_id))

    async def record(self, changes: Sequence[AlarmRow]) -> None:
        """Store planned raises and clears in one transaction and publish the accepted ones. A
        refusal, or a store error, re-reads the open alarms (the store is the truth)."""
        if not changes:
            return
        try:
            stored = await self._store.record_alarm_changes(changes)
        except Exception:
            log.exception("rules: storing %d alarm changes failed; re-reading alarms", len(changes))
            await self.load()
            return
        refused = 0
        for row in stored:
            if row is None:
                refused += 1
            else:
                self._changed(row)
        if refused:
            log.info("rules: the store refused %d alarm changes; re-reading alarms", refused)
            await self.load()

    async def move(
        self, alarm_id: str, state: AlarmState, *, actor: str, comment: str | None
    ) -> AlarmRow:
        """A person's move (acknowledge, clear): NotFound for an unknown alarm, Conflict for a
        move the transition table refuses."""
        current = await self._store.get_alarm(alarm_id)
        if current is None:
            raise NotFound(f"no alarm {alarm_id}", code="alarm_not_found")
        moved = await self._store.transition_alarm(
            alarm_id, state, self._clock.now_us(), actor, comment
        )
        if moved is None:
            now = await self._store.get_alarm(alarm_id)
            shown = now.state if now is not None else current.state
            raise Conflict(
                f"alarm {alarm_id} is {shown}: it cannot be {state} now",
                code="alarm_state_conflict",
            )
        return self._changed(moved)

    async def clear_rule(self, rule_id: str, *, actor: str, comment: str) -> int:
        """Clear every open alarm of a rule (deleted or disabled: nothing would clear them)."""
        cleared = 0
        for key, row in list(self.open.items()):
            if key[0] != rule_id:
                continue
            moved = await self._store.transition_alarm(
                row.alarm_id, "cleared", self._clock.now_us(), actor, comment
            )
            if moved is None:
                self.open.pop(key, None)
            else:
                self._changed(moved)
                cleared += 1
        return cleared

    async def notified(self, row: AlarmRow, at_us: int, *, escalated: bool = False) -> None:
        """Count a notification about `row` (repeats and escalation are timed from it)."""
        marked = await self._store.mark_notified(row.alarm_id, at_us, escalated)
        key = (row.rule_id, row.device_id)
        if marked is not None and key in self.open and self.open[key].alarm_id == row.alarm_id:
            self.open[key] = marked


class NotificationLog:
    """Delivery records and the engine's own outcomes, written to the store by one task."""

    def __init__(self, store: Store, clock: Clock, registry: CollectorRegistry) -> None:
        self._store = store
        self._clock = clock
        self._queue: deque[NotificationEntry] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # Notification key -> (rule id, alarm id): a delivery record names only its key and group.
        self._keys: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self.lost = Counter(
            "fieldhub_rules_notification_log_lost",
            "Notification log entries dropped because the store fell behind",
            registry=registry,
        )
        self.failed_writes = Counter(
            "fieldhub_rules_notification_log_write_errors",
            "Notification log entries the store refused",
            registry=registry,
        )

    def remember(self, key: str, rule_id: str, alarm_id: str | None) -> None:
        """Note which rule and alarm a notification key belongs to."""
        self._keys[key] = (rule_id, alarm_id)
        self._keys.move_to_end(key)
        while len(self._keys) > MAX_KEYS:
            self._keys.popitem(last=False)

    def on_delivery(self, delivery: Delivery) -> None:
        """The dispatcher's callback (synchronous, on the event loop)."""
        rule_id, alarm_id = self._keys.get(delivery.key, (delivery.group or "", None))
        detail: dict[str, object] = {"key": delivery.key}
        if delivery.status is not None:
            detail["status"] = delivery.status
        if delivery.error is not None:
            detail["error"] = delivery.error
        if delivery.retry_in_s is not None:
            detail["retry_in_s"] = delivery.retry_in_s
        kind = "digest" if delivery.key.startswith("digest-") else delivery.kind
        if kind == "digest":
            detail["via"] = delivery.kind
        self.append(
            NotificationEntry(
                at_us=delivery.at_us,
                rule_id=rule_id,
                alarm_id=alarm_id,
                kind=kind,
                target=delivery.target,
                outcome=delivery.outcome,
                attempt=delivery.attempt,
                detail=detail,
            )
        )

    def append(self, entry: NotificationEntry) -> None:
        """Queue an entry for the store; never waits."""
        if len(self._queue) >= MAX_LOG_QUEUE:
            self._queue.popleft()
            self.lost.inc()
        self._queue.append(entry)
        self._idle.clear()
        self._ready.set()

    async def run(self) -> None:
        """Write queued entries until cancelled."""
        while True:
            while not self._queue:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
            await self.flush()

    async def flush(self) -> None:
        """Write what is queued now, at most MAX_LOG_BATCH entries a transaction (one a
        notification would be a transaction each while a fleet's alarms fire)."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(MAX_LOG_BATCH, len(self._queue)))]
            try:
                await self._store.append_notification_logs(batch)
            except Exception:
                self.failed_writes.inc(len(batch))
                log.exception("could not store %d notification log entries", len(batch))
        self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until everything queued so far is stored."""
        await self._idle.wait()
