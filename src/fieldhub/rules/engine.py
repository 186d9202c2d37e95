"""The rule engine: rules evaluated live on the bus and on a timer, alarms, actions (docs/rules.md).

One consumer of the event bus. For each committed batch it feeds every decoded reading of a
device in a rule's scope to the rule's condition (its per-device overrides applied), each
device's readings in reading-time order, through `conditions.on_sample`, the function the preview
uses too. A timer calls `conditions.on_tick` for the conditions time alone can change (no_data,
a threshold's `for_s`, schedules) and sends repeats and escalations.

State: a (rule, device) state whose decisive part a batch changed (an edge, the side it is on, a
pending `for`'s start: `ConditionState.decisive`) is written in one transaction after the batch
(`put_rule_states`), and those a tick changed by an edge after the tick, so a restart resumes a
pending `for` window where it was: the alarm fires at its time, once. The rest of a state's
progress (its newest reading's time, a baseline's readings) changes with every reading; writing
it every batch doubled the database's writes at 10,000 readings/s, so it is written at most
every STATE_FLUSH_S by the timer, and all of it at stop. A crash loses at most that much
progress: a baseline a few readings short, a no-data silence measured from a few seconds
earlier. Raising is
deduplicated by the store (one open alarm per rule and device): a fire whose alarm is already
open was raised and notified before (by this engine before a restart), and runs no action again.

Evaluation, ticks and rule changes take one lock, so a rule's states are never evaluated by two
of them at once. Actions: an alarm (raise on fire, clear on clear, acting as `rule:<id>`); a
command through the command service (audited as `rule:<id>`, recorded in the notification log);
webhook and e-mail through the notification dispatcher (never waiting: queued, retried and
digested there, each attempt in the notification log); an MQTT publish through the `publish`
callable the platform gives (none: recorded as failed).

Bus drops: the subscription is large, but a consumer that falls behind loses its oldest events.
When the subscription's `dropped` counter grew, the engine re-reads from the store, for every
(rule, device) it holds a state for, the readings after that state's newest one, and feeds them
before the events still queued (which are then older than the state, and change nothing). A
device first seen in the lost events is picked up with its next reading. Drops are counted
(`fieldhub_rules_bus_dropped`) and logged.

Rule changes: `apply` stores a new version and makes it live at once. A rule whose condition,
overrides or scope changed starts from new states (a state of another condition means nothing),
and its open alarms are cleared (nothing would clear them otherwise); an edit of its name,
actions or severity keeps both. Disabling or deleting a rule clears its open alarms too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from string import Template
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError

from fieldhub.clock import SYSTEM_CLOCK, US_PER_S, Clock, run_every
from fieldhub.commands.service import CommandService, NewCommand
from fieldhub.errors import FieldhubError, NotFound
from fieldhub.events.bus import Committed, EventBus, Subscription
from fieldhub.logs import about
from fieldhub.notify.message import Delivery, Kind, Notification, redact_url
from fieldhub.notify.queue import Dispatcher
from fieldhub.protocol.messages import AttributeValue
from fieldhub.rules.alarms import AlarmBook, NotificationLog, rule_actor
from fieldhub.rules.conditions import (
    ConditionState,
    Edge,
    Sample,
    effective_condition,
    initial,
    on_sample,
    on_tick,
    seconds_us,
    watched_metrics,
)
from fieldhub.rules.model import (
    Action,
    AlarmAction,
    CommandAction,
    CommandParams,
    Condition,
    EmailParams,
    MqttParams,
    NoData,
    Notify,
    Rule,
    Schedule,
    ScopeMatch,
    Threshold,
    WebhookParams,
    action_kind,
    leaves,
    rule_data,
)
from fieldhub.rules.preview import Preview, preview
from fieldhub.store.base import Store
from fieldhub.store.types import (
    AlarmRow,
    AlarmState,
    AuditEntry,
    NotificationEntry,
    RuleStateRow,
    RuleVersionRow,
)

__all__ = ["PreviewResult", "Publish", "RuleEngine"]

log = logging.getLogger("fieldhub.rules")

# What the API's preview returns per device.
PreviewResult = Preview
# `publish(topic, payload, qos, retain)`: an MQTT publish (the command service's connection).
Publish = Callable[[str, bytes, int, bool], object]

# Committed batches the engine's subscription may hold before its oldest are dropped: a few
# seconds of a busy fleet, while a slow action (a command's store writes) holds the consumer.
BUS_QUEUE_EVENTS = 65_536
DEFAULT_TICK_S = 1.0
# Devices read per page when loading the fleet's profiles and attributes.
DEVICE_PAGE = 1_000
# Progress (not decisive) of states is stored at most this often (see the module docstring).
STATE_FLUSH_S = 5.0
# Readings read per page for a preview or a catch-up after bus drops.
READING_PAGE = 10_000
# A preview reads at most this many readings per device (a week of 1-s readings of 3 metrics).
MAX_PREVIEW_READINGS = 2_000_000


@dataclass(slots=True)
class _Loaded:
    """A live rule: its current version, what it watches, and its states per device."""

    row: RuleVersionRow
    rule: Rule
    scope: ScopeMatch
    metrics: frozenset[str] | None
    timed: bool
    states: dict[str, ConditionState] = field(default_factory=dict)
    _conditions: dict[str, Condition] = field(default_factory=dict)

    def condition(self, device_id: str) -> Condition:
        """The rule's condition for one device (its overrides applied)."""
        if device_id not in self.rule.overrides:
            return self.rule.condition
        found = self._conditions.get(device_id)
        if found is None:
            found = self._conditions[device_id] = effective_condition(self.rule, device_id)
        return found

    @property
    def has_alarm(self) -> bool:
        return any(isinstance(action, AlarmAction) for action in self.rule.actions)


@dataclass(frozen=True, slots=True)
class _Context:
    """What an action is about: a rule's edge (or repeat, escalation) for a device."""

    rule: Rule
    device_id: str
    reason: str  # fire | clear | repeat | escalate
    at_us: int
    alarm_id: str | None
    metric: str | None = None
    value: float | None = None
    # When the reading that made the edge was stored (None: a tick's edge, a repeat, a re-read).
    stored_us: int | None = None

    def fields(self) -> dict[str, str]:
        """Template values ($device_id, $value, ...)."""
        return {
            "rule_id": self.rule.id,
            "rule_name": self.rule.name,
            "device_id": self.device_id,
            "edge": self.reason,
            "severity": self.rule.severity,
            "metric": self.metric or "",
            "value": "" if self.value is None else f"{self.value:g}",
            "ts_us": str(self.at_us),
            "ts_s": f"{self.at_us / US_PER_S:g}",
        }

    def payload(self) -> dict[str, object]:
        """The JSON a webhook posts and an e-mail lists."""
        return {
            "rule_id": self.rule.id,
            "rule_name": self.rule.name,
            "device_id": self.device_id,
            "event": self.reason,
            "severity": self.rule.severity,
            "alarm_id": self.alarm_id,
            "at_us": self.at_us,
            "metric": self.metric,
            "value": self.value,
            "stored_us": self.stored_us,
        }

    def key(self) -> str:
        """The idempotency key: the same for a retry, different for each notification."""
        if self.alarm_id is not None:
            suffix = f":{self.at_us}" if self.reason == "repeat" else ""
            return f"{self.alarm_id}:{self.reason}{suffix}"
        return f"{self.rule.id}:{self.device_id}:{self.reason}:{self.at_us}"

    def subject(self) -> str:
        what = {
            "fire": "fired",
            "clear": "cleared",
            "repeat": "still active",
            "escalate": "escalated",
        }.get(self.reason, self.reason)
        return f"[{self.rule.severity}] {self.rule.name}: {self.device_id} {what}"


# An edge found for a device by a rule, with the reading that made it (none for a tick).
_EdgeAt = tuple[_Loaded, str, Edge, str | None, float | None]


def _timed(condition: Condition) -> bool:
    """True when time alone can change the condition (it needs the timer)."""
    for leaf in leaves(condition):
        if isinstance(leaf, NoData | Schedule):
            return True
        if isinstance(leaf, Threshold) and leaf.threshold.for_s > 0:
            return True
    return False


def _runs_on(action: Action | Notify, edge: str) -> bool:
    kind = action_kind(action)
    if kind == "alarm":
        return True
    when: str = getattr(action, kind).when
    return when in (edge, "both")


class RuleEngine:
    """See the module docstring."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        commands: CommandService | None,
        dispatcher: Dispatcher,
        *,
        registry: CollectorRegistry,
        clock: Clock = SYSTEM_CLOCK,
        tick_s: float = DEFAULT_TICK_S,
        publish: Publish | None = None,
        bus_queue_events: int = BUS_QUEUE_EVENTS,
    ) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self._store = store
        self._bus = bus
        self._commands = commands
        self._dispatcher = dispatcher
        self._clock = clock
        self.tick_s = tick_s
        self._publish = publish
        self._bus_queue_events = bus_queue_events
        self._rules: dict[str, _Loaded] = {}
        # Device id -> (profile, attributes): what scopes match on, kept from decoded messages.
        self._devices: dict[str, tuple[str, dict[str, AttributeValue]]] = {}
        # Device id -> the rules a reading of it is fed to, in rule order: asking every rule's
        # scope for every device of every batch cost ~40 ms a batch at 1,000 rules. Emptied when
        # a rule changes; a device's entry goes when its profile or attributes change.
        self._in_scope: dict[str, list[_Loaded]] = {}
        # The metrics some rule reads (None: a rule reads every metric); the others of a batch
        # are not even collected (at 10,000 messages/s that was 5 % of a core).
        self._watched: frozenset[str] | None = frozenset()
        self._lock = asyncio.Lock()
        # States whose progress changed since it was last stored (rule id, device id).
        self._unsaved: set[tuple[str, str]] = set()
        self._saved_us = clock.now_us()
        self._subscription: Subscription | None = None
        self._dropped_seen = 0
        self._tasks: list[asyncio.Task[None]] = []
        # Events taken off the subscription and not yet evaluated (wait_idle).
        self._in_flight = 0
        self._evaluated = asyncio.Event()
        self.alarm_book = AlarmBook(store, bus, clock)
        self.notification_log = NotificationLog(store, clock, registry)

        Gauge(
            "fieldhub_rules_loaded", "Enabled rules being evaluated", registry=registry
        ).set_function(lambda: len(self._rules))
        Gauge(
            "fieldhub_rules_alarms_open", "Alarms active or acknowledged", registry=registry
        ).set_function(lambda: len(self.alarm_book.open))
        self.evaluations = Counter(
            "fieldhub_rules_evaluations",
            "Readings and ticks fed to rule conditions",
            ["by"],
            registry=registry,
        )
        self.edges = Counter(
            "fieldhub_rules_edges", "Conditions that fired or cleared", ["edge"], registry=registry
        )
        self.actions = Counter(
            "fieldhub_rules_actions",
            "Actions run, by kind and outcome",
            ["kind", "outcome"],
            registry=registry,
        )
        self.lag = Gauge(
            "fieldhub_rules_evaluation_lag_seconds",
            "From a batch's commit to its evaluation (the latest batch)",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "fieldhub_rules_batch_seconds",
            "Evaluating one committed batch: conditions, alarms, actions handed on, states",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.bus_dropped = Counter(
            "fieldhub_rules_bus_dropped",
            "Committed batches the engine's bus subscription lost (re-read from the store)",
            registry=registry,
        )
        for edge in ("fire", "clear"):
            self.edges.labels(edge)
        for by in ("reading", "tick"):
            self.evaluations.labels(by)
        self._reading_evaluations = self.evaluations.labels("reading")

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the enabled rules, their states, the open alarms and the devices; subscribe to
        the bus; start the timer and the notification log's writer."""
        # Subscribed first: what is committed while loading waits in the queue.
        self._subscription = self._bus.subscribe("rules", maxlen=self._bus_queue_events)
        self._dropped_seen = 0
        now = self._clock.now_us()
        await self._load_devices(now)
        await self.alarm_book.load()
        for row in await self._store.list_rules():
            if not row.enabled:
                continue
            rule = self._parse(row)
            if rule is not None:
                self._rules[rule.id] = self._loaded(row, rule)
        self._rules_changed()
        for state_row in await self._store.load_rule_states():
            loaded = self._rules.get(state_row.rule_id)
            if loaded is None or not isinstance(state_row.state, Mapping):
                continue
            try:
                state = ConditionState.from_json(state_row.state)
            except (KeyError, TypeError, ValueError):
                log.warning(
                    "rule %s: unreadable state for %s",
                    loaded.rule.id,
                    state_row.device_id,
                    extra=about(device_id=state_row.device_id),
                )
                continue
            if state.kind == initial(loaded.condition(state_row.device_id)).kind:
                loaded.states[state_row.device_id] = state
        for loaded in self._rules.values():
            self._watch_devices(loaded, now)
        log.info("rules: %d enabled rules loaded", len(self._rules))
        self._tasks = [
            asyncio.create_task(self._consume(), name="rules.consumer"),
            asyncio.create_task(
                run_every(self.tick_s, self.tick, log, "rules: a tick"), name="rules.tick"
            ),
            asyncio.create_task(self.notification_log.run(), name="rules.notification-log"),
        ]

    async def stop(self) -> None:
        """Stop the tasks, persist every state, write what the notification log still holds."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        async with self._lock:
            await self._persist(
                [(rule_id, device) for rule_id, lr in self._rules.items() for device in lr.states]
            )
            self._unsaved.clear()
        await self.notification_log.flush()

    def record_delivery(self, delivery: Delivery) -> None:
        """The dispatcher's delivery callback (the platform passes it): into the notification
        log."""
        self.notification_log.on_delivery(delivery)

    # -- rules ---------------------------------------------------------------------------------

    async def apply(self, rule: Rule, *, author: str) -> RuleVersionRow:
        """Store `rule` as its next version and make it live (or stop it, when disabled)."""
        async with self._lock:
            now = self._clock.now_us()
            version = await self._store.put_rule_version(
                RuleVersionRow(
                    rule_id=rule.id,
                    document=rule_data(rule),
                    enabled=rule.enabled,
                    author=author,
                    created_us=now,
                )
            )
            row = await self._store.get_rule(rule.id, version)
            assert row is not None  # just stored
            await self._install(row, rule, actor=author)
            return row

    async def set_enabled(self, rule_id: str, enabled: bool, *, author: str) -> RuleVersionRow:
        """A new version of the rule with `enabled` set; NotFound for an unknown rule."""
        row = await self._store.get_rule(rule_id)
        if row is None:
            raise NotFound(f"no rule {rule_id}", code="rule_not_found")
        rule = Rule.model_validate({**row.document, "enabled": enabled})
        return await self.apply(rule, author=author)

    async def delete(self, rule_id: str, *, actor: str) -> None:
        """Delete a rule (its versions stay); its states go and its open alarms are cleared."""
        async with self._lock:
            if not await self._store.delete_rule(rule_id, self._clock.now_us()):
                raise NotFound(f"no rule {rule_id}", code="rule_not_found")
            self._rules.pop(rule_id, None)
            self._rules_changed()
            await self._store.delete_rule_states(rule_id)
            await self.alarm_book.clear_rule(rule_id, actor=actor, comment="rule deleted")

    async def list_rules(self) -> list[RuleVersionRow]:
        """Each rule's current version (enabled or not), by id."""
        return await self._store.list_rules()

    async def get_rule(self, rule_id: str, version: int | None = None) -> RuleVersionRow:
        """The current (or a given) version; NotFound when there is none."""
        row = await self._store.get_rule(rule_id, version)
        if row is None:
            what = f"rule {rule_id}" + (f" version {version}" if version is not None else "")
            raise NotFound(f"no {what}", code="rule_not_found")
        return row

    async def history(self, rule_id: str) -> list[RuleVersionRow]:
        """Every version, oldest first; NotFound for a rule that never existed."""
        rows = await self._store.rule_history(rule_id)
        if not rows:
            raise NotFound(f"no rule {rule_id}", code="rule_not_found")
        return rows

    def _parse(self, row: RuleVersionRow) -> Rule | None:
        try:
            return Rule.model_validate(row.document)
        except ValidationError as exc:
            # A document this version no longer accepts: skipped, said once, not fatal.
            log.error("rule %s version %d does not load: %s", row.rule_id, row.version, exc)
            return None

    def _loaded(self, row: RuleVersionRow, rule: Rule) -> _Loaded:
        return _Loaded(
            row=row,
            rule=rule,
            scope=ScopeMatch(rule.scope),
            metrics=watched_metrics(rule.condition),
            timed=_timed(rule.condition),
        )

    async def _install(self, row: RuleVersionRow, rule: Rule, *, actor: str) -> None:
        previous = self._rules.pop(rule.id, None)
        self._rules_changed()
        if not rule.enabled:
            await self._store.delete_rule_states(rule.id)
            await self.alarm_book.clear_rule(rule.id, actor=actor, comment="rule disabled")
            return
        loaded = self._loaded(row, rule)
        same = (
            previous is not None
            and previous.rule.condition == rule.condition
            and previous.rule.overrides == rule.overrides
            and previous.rule.scope == rule.scope
        )
        if same:
            assert previous is not None
            loaded.states = previous.states
        else:
            await self._store.delete_rule_states(rule.id)
            await self.alarm_book.clear_rule(rule.id, actor=actor, comment="rule changed")
        self._rules[rule.id] = loaded
        self._rules_changed()
        now = self._clock.now_us()
        added = self._watch_devices(loaded, now)
        await self._persist([(rule.id, device) for device in added])

    def _watch_devices(self, loaded: _Loaded, now_us: int) -> list[str]:
        """A timed rule watches every device in its scope from `now_us` (no_data counts a
        device's silence from then); returns the devices given a new state."""
        if not loaded.timed:
            return []
        added = []
        for device_id, (profile, attributes) in self._devices.items():
            if device_id in loaded.states or not loaded.scope.matches(
                device_id, profile, attributes
            ):
                continue
            loaded.states[device_id] = initial(loaded.condition(device_id), start_us=now_us)
            added.append(device_id)
        return added

    async def _load_devices(self, now_us: int) -> None:
        after: str | None = None
        while True:
            page = await self._store.list_devices(
                profile=None,
                presence=None,
                search=None,
                limit=DEVICE_PAGE,
                after=after,
                now_us=now_us,
            )
            for device in page:
                self._devices[device.device_id] = (device.profile, dict(device.attributes))
            if len(page) < DEVICE_PAGE:
                return
            after = page[-1].device_id

    # -- evaluation ----------------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self._subscription is not None
        subscription = self._subscription
        while True:
            events = [await subscription.get()]
            while (more := subscription.get_nowait()) is not None:
                events.append(more)
            self._in_flight = len(events)
            try:
                async with self._lock:
                    if subscription.dropped > self._dropped_seen:
                        lost = subscription.dropped - self._dropped_seen
                        self._dropped_seen = subscription.dropped
                        self.bus_dropped.inc(lost)
                        await self._catch_up(lost)
                    for event in events:
                        if isinstance(event, Committed):
                            with self.batch_seconds.time():
                                await self._evaluate(event)
            except Exception:
                # One bad batch (a store error) must not stop evaluation for good.
                log.exception("rules: evaluating a batch failed")
            finally:
                self._in_flight = 0
                self._evaluated.set()

    async def _evaluate(self, event: Committed) -> None:
        """Feed a committed batch's readings to the rules in scope, then act on the edges."""
        now = self._clock.now_us()
        self.lag.set(max(0, now - event.committed_us) / US_PER_S)
        readings: dict[str, list[tuple[int, str, float]]] = {}
        for decoded in event.decoded:
            known = self._devices.get(decoded.device_id)
            if known is None:
                self._devices[decoded.device_id] = (decoded.profile, dict(decoded.attributes))
                for loaded in self._rules.values():
                    self._watch_one(loaded, decoded.device_id, now)
            elif decoded.attributes or known[0] != decoded.profile:
                known[1].update(decoded.attributes)
                self._devices[decoded.device_id] = (decoded.profile, known[1])
                self._in_scope.pop(decoded.device_id, None)
            watched = self._watched
            if watched is not None and not watched:
                continue  # no rule reads a metric: skip the per-reading work (hot at 20k msg/s)
            taken = [
                (reading.ts_us, reading.metric, reading.value)
                for reading in decoded.readings
                if watched is None or reading.metric in watched
            ]
            if taken:
                readings.setdefault(decoded.device_id, []).extend(taken)
        edges: list[_EdgeAt] = []
        touched: list[tuple[str, str]] = []
        for device_id, device_readings in readings.items():
            device_readings.sort(key=lambda item: item[0])
            self._feed(device_id, device_readings, edges, touched)
        await self._act(edges, stored_us=event.committed_us)
        await self._persist(touched)

    def _watch_one(self, loaded: _Loaded, device_id: str, now_us: int) -> None:
        profile, attributes = self._devices[device_id]
        if (
            loaded.timed
            and device_id not in loaded.states
            and loaded.scope.matches(device_id, profile, attributes)
        ):
            loaded.states[device_id] = initial(loaded.condition(device_id), start_us=now_us)

    def _rules_changed(self) -> None:
        """Forget what was derived from the rules: who is in scope, which metrics matter."""
        self._in_scope.clear()
        watched: set[str] = set()
        for loaded in self._rules.values():
            if loaded.metrics is None:
                self._watched = None
                return
            watched |= loaded.metrics
        self._watched = frozenset(watched)

    def _rules_for(self, device_id: str) -> list[_Loaded]:
        """The rules a reading of the device is fed to (a schedule alone has none: ticks only)."""
        found = self._in_scope.get(device_id)
        if found is None:
            profile, attributes = self._devices.get(device_id, ("", {}))
            found = self._in_scope[device_id] = [
                loaded
                for loaded in self._rules.values()
                if (loaded.metrics is None or loaded.metrics)
                and loaded.scope.matches(device_id, profile, attributes)
            ]
        return found

    def _feed(
        self,
        device_id: str,
        device_readings: Sequence[tuple[int, str, float]],
        edges: list[_EdgeAt],
        touched: list[tuple[str, str]],
    ) -> None:
        """One device's readings (in time order) through every rule in scope."""
        for loaded in self._rules_for(device_id):
            condition = loaded.condition(device_id)
            before = loaded.states.get(device_id)
            state = initial(condition) if before is None else before
            fed = 0
            for ts_us, metric, value in device_readings:
                if loaded.metrics is not None and metric not in loaded.metrics:
                    continue
                state, found = on_sample(condition, state, metric, Sample(ts_us, value))
                fed += 1
                for edge in found:
                    edges.append((loaded, device_id, edge, metric, value))
            if fed:
                loaded.states[device_id] = state
                if before is None or state.decisive() != before.decisive():
                    touched.append((loaded.rule.id, device_id))
                else:
                    self._unsaved.add((loaded.rule.id, device_id))
                self._reading_evaluations.inc(fed)

    async def _catch_up(self, lost: int) -> None:
        """After bus drops: the readings newer than each state's newest, from the store."""
        log.warning(
            "rules: the bus dropped %d batches for the rule engine; re-reading them from the store",
            lost,
        )
        edges: list[_EdgeAt] = []
        touched: list[tuple[str, str]] = []
        for loaded in list(self._rules.values()):
            if loaded.metrics is not None and not loaded.metrics:
                continue
            for device_id, state in list(loaded.states.items()):
                since = state.last_us if state.last_us is not None else state.seen_us
                if since is None:
                    continue
                rows = await self._readings(
                    device_id, loaded.metrics, since + 1, None, READING_PAGE
                )
                if rows:
                    self._feed_one(loaded, device_id, rows, edges, touched)
        await self._act(edges)
        await self._persist(touched)

    def _feed_one(
        self,
        loaded: _Loaded,
        device_id: str,
        rows: Sequence[tuple[int, str, float]],
        edges: list[_EdgeAt],
        touched: list[tuple[str, str]],
    ) -> None:
        condition = loaded.condition(device_id)
        state = loaded.states.get(device_id) or initial(condition)
        for ts_us, metric, value in rows:
            state, found = on_sample(condition, state, metric, Sample(ts_us, value))
            for edge in found:
                edges.append((loaded, device_id, edge, metric, value))
        loaded.states[device_id] = state
        touched.append((loaded.rule.id, device_id))

    async def _readings(
        self,
        device_id: str,
        metrics: frozenset[str] | None,
        start_us: int | None,
        end_us: int | None,
        limit: int,
    ) -> list[tuple[int, str, float]]:
        """A device's readings of `metrics` (None: all) in [start, end], by time, at most
        `limit`."""
        found: list[tuple[int, str, float]] = []
        after: tuple[str, int] | None = None
        while len(found) < limit:
            page = await self._store.query_readings(
                device_id,
                metrics=sorted(metrics) if metrics is not None else None,
                start_us=start_us,
                end_us=None if end_us is None else end_us + 1,
                limit=min(READING_PAGE, limit - len(found)),
                after=after,
                descending=False,
            )
            found.extend((row.ts_us, row.metric, row.value) for row in page)
            if len(page) < READING_PAGE:
                break
            after = (page[-1].metric, page[-1].ts_us)
        found.sort(key=lambda item: item[0])
        return found

    async def _persist(self, touched: Sequence[tuple[str, str]]) -> None:
        if not touched:
            return
        now = self._clock.now_us()
        rows: dict[tuple[str, str], RuleStateRow] = {}
        for rule_id, device_id in touched:
            loaded = self._rules.get(rule_id)
            state = loaded.states.get(device_id) if loaded is not None else None
            if state is not None:
                rows[(rule_id, device_id)] = RuleStateRow(
                    rule_id=rule_id, device_id=device_id, state=state.to_json(), updated_us=now
                )
        if rows:
            await self._store.put_rule_states(list(rows.values()))

    # -- the timer -----------------------------------------------------------------------------

    async def tick(self) -> None:
        """One timer tick at the clock's time: time-based edges, then repeats and escalations.
        The timer task calls it every `tick_s`; tests call it after moving a manual clock."""
        async with self._lock:
            now = self._clock.now_us()
            edges: list[_EdgeAt] = []
            touched: list[tuple[str, str]] = []
            ticked = 0
            for loaded in list(self._rules.values()):
                if not loaded.timed:
                    continue
                for device_id, state in list(loaded.states.items()):
                    new, found = on_tick(loaded.condition(device_id), state, now)
                    loaded.states[device_id] = new
                    ticked += 1
                    if found:
                        touched.append((loaded.rule.id, device_id))
                        edges.extend((loaded, device_id, edge, None, None) for edge in found)
            if ticked:
                self.evaluations.labels("tick").inc(ticked)
            await self._act(edges)
            if now - self._saved_us >= seconds_us(STATE_FLUSH_S):
                touched.extend(self._unsaved)
                self._unsaved.clear()
                self._saved_us = now
            await self._persist(touched)
            await self._repeat_and_escalate(now)

    async def _repeat_and_escalate(self, now_us: int) -> None:
        for alarm in list(self.alarm_book.open.values()):
            if alarm.state != "active":
                continue
            loaded = self._rules.get(alarm.rule_id)
            if loaded is None:
                continue
            rule = loaded.rule
            if rule.repeat_every_s is not None:
                step = seconds_us(rule.repeat_every_s)
                if now_us >= alarm.raised_us + step:
                    due = alarm.raised_us + (now_us - alarm.raised_us) // step * step
                    if alarm.last_notified_us is None or alarm.last_notified_us < due:
                        context = _Context(rule, alarm.device_id, "repeat", due, alarm.alarm_id)
                        for action in rule.actions:
                            if not isinstance(action, AlarmAction | CommandAction) and _runs_on(
                                action, "fire"
                            ):
                                self._hand_on(action, context)
                        await self.alarm_book.notified(alarm, now_us)
            current = self.alarm_book.open.get((alarm.rule_id, alarm.device_id), alarm)
            if (
                rule.escalate is not None
                and current.escalated_us is None
                and now_us >= current.raised_us + seconds_us(rule.escalate.after_s)
            ):
                context = _Context(
                    rule,
                    alarm.device_id,
                    "escalate",
                    current.raised_us + seconds_us(rule.escalate.after_s),
                    alarm.alarm_id,
                )
                self._hand_on(rule.escalate.to, context)
                await self.alarm_book.notified(current, now_us, escalated=True)

    # -- actions -------------------------------------------------------------------------------

    async def _act(self, edges: Sequence[_EdgeAt], *, stored_us: int | None = None) -> None:
        """Act on edges in order. Alarms are decided in memory and notifications handed on
        first, for every edge, so a webhook never waits for the database or another edge's
        work; then the alarm changes are stored in one transaction (and published); then the
        commands run (the command service stores and publishes each)."""
        now = self._clock.now_us()
        changes: list[AlarmRow] = []
        commands: list[tuple[CommandParams, _Context]] = []
        for loaded, device_id, edge, metric, value in edges:
            rule = loaded.rule
            self.edges.labels(edge.kind).inc()
            runs = [
                action
                for action in rule.actions
                if action_kind(action) != "alarm" and _runs_on(action, edge.kind)
            ]
            alarm: AlarmRow | None = None
            if loaded.has_alarm:
                if edge.kind == "fire":
                    alarm = self.alarm_book.plan_raise(
                        rule.id, device_id, rule.severity, edge.ts_us
                    )
                    if alarm is None:
                        # Already open: raised (and its actions run) before, e.g. before a restart.
                        continue
                else:
                    alarm = self.alarm_book.plan_clear(rule.id, device_id, edge.ts_us)
            context = _Context(
                rule,
                device_id,
                edge.kind,
                edge.ts_us,
                alarm.alarm_id if alarm is not None else None,
                metric,
                value,
                stored_us,
            )
            notified = 0
            for action in runs:
                if isinstance(action, CommandAction):
                    commands.append((action.command, context))
                elif not isinstance(action, AlarmAction):
                    notified += self._hand_on(action, context)
            if alarm is not None:
                if edge.kind == "fire" and notified:
                    alarm = self.alarm_book.planned_notified(alarm, now)
                changes.append(alarm)
        await self.alarm_book.record(changes)
        for params, context in commands:
            try:
                await self._command(params, context)
            except Exception:
                log.exception(
                    "rules: rule %s: a command action failed",
                    context.rule.id,
                    extra=about(device_id=context.device_id),
                )
                self.actions.labels("command", "error").inc()

    def _hand_on(self, action: Notify, context: _Context) -> int:
        """Hand a webhook, e-mail or MQTT publish on (never waits); 1 when it was."""
        params = getattr(action, action_kind(action))
        try:
            if isinstance(params, WebhookParams):
                return self._notify("webhook", params.url, context, secret_env=params.secret_env)
            if isinstance(params, EmailParams):
                return self._notify("email", ", ".join(params.to), context)
            if isinstance(params, MqttParams):
                return self._mqtt(params, context)
        except Exception:
            log.exception(
                "rules: rule %s: a %s action failed",
                context.rule.id,
                action_kind(action),
                extra=about(device_id=context.device_id),
            )
            self.actions.labels(action_kind(action), "error").inc()
        return 0

    def _notify(
        self, kind: Kind, target: str, context: _Context, *, secret_env: str | None = None
    ) -> int:
        key = context.key()
        self.notification_log.remember(key, context.rule.id, context.alarm_id)
        queued = self._dispatcher.submit(
            Notification(
                kind=kind,
                target=target,
                subject=context.subject(),
                payload=context.payload(),
                key=key,
                created_us=self._clock.now_us(),
                group=context.rule.id,
                secret_env=secret_env,
            )
        )
        self.actions.labels(kind, "queued" if queued else "dropped").inc()
        return 1 if queued else 0

    def _mqtt(self, params: MqttParams, context: _Context) -> int:
        fields = context.fields()
        topic = Template(params.topic).substitute(fields)
        payload = Template(params.payload).substitute(fields)
        detail: dict[str, object] = {"key": context.key(), "event": context.reason}
        if self._publish is None:
            outcome = "failed"
            detail["error"] = "no MQTT publisher (the command service is not connected)"
        else:
            try:
                self._publish(topic, payload.encode(), params.qos, params.retain)
                outcome = "sent"
            except Exception as exc:
                outcome = "failed"
                detail["error"] = f"{type(exc).__name__}: {exc}"[:200]
        self.actions.labels("mqtt", outcome).inc()
        self._log(context, "mqtt", topic, outcome, detail)
        return 1 if outcome == "sent" else 0

    async def _command(self, params: CommandParams, context: _Context) -> None:
        now = self._clock.now_us()
        device_id = context.device_id
        target = f"device:{device_id}"
        detail: dict[str, object] = {"name": params.name, "event": context.reason}
        outcome = "failed"
        device = await self._store.get_device(device_id, now_us=now)
        if device is None:
            detail["error"] = "the device is gone"
        elif self._commands is None:
            detail["error"] = "no command service"
        else:
            try:
                row, _new = await self._commands.submit(
                    device, NewCommand(name=params.name, params=dict(params.params))
                )
            except FieldhubError as exc:
                detail["code"] = exc.code
                detail["error"] = exc.message[:200]
            else:
                outcome = "sent"
                target = f"device:{device_id}/command:{row.command_id}"
                detail["command_id"] = row.command_id
                detail["state"] = str(row.state.value)
        self.actions.labels("command", outcome).inc()
        await self._store.append_audit(
            AuditEntry(
                at_us=now,
                actor=rule_actor(context.rule.id),
                action="command.send",
                target=target,
                address=None,
                outcome="ok" if outcome == "sent" else "failed",
                detail={k: v for k, v in detail.items() if k != "event"}
                | {"alarm_id": context.alarm_id},
            )
        )
        self._log(context, "command", target, outcome, detail)

    def _log(
        self, context: _Context, kind: str, target: str, outcome: str, detail: dict[str, object]
    ) -> None:
        self.notification_log.append(
            NotificationEntry(
                at_us=self._clock.now_us(),
                rule_id=context.rule.id,
                alarm_id=context.alarm_id,
                kind=kind,
                target=redact_url(target) if "://" in target else target,
                outcome=outcome,
                attempt=1,
                detail=detail,
            )
        )

    # -- alarms --------------------------------------------------------------------------------

    async def acknowledge(self, alarm_id: str, *, actor: str, comment: str | None) -> AlarmRow:
        """Acknowledge an active alarm (repeats and escalation stop); NotFound, Conflict."""
        return await self._move(alarm_id, "acknowledged", actor=actor, comment=comment)

    async def clear(self, alarm_id: str, *, actor: str, comment: str | None) -> AlarmRow:
        """Clear an open alarm by hand; NotFound, Conflict."""
        return await self._move(alarm_id, "cleared", actor=actor, comment=comment)

    async def _move(
        self, alarm_id: str, state: AlarmState, *, actor: str, comment: str | None
    ) -> AlarmRow:
        async with self._lock:
            return await self.alarm_book.move(alarm_id, state, actor=actor, comment=comment)

    async def alarms(
        self,
        *,
        state: AlarmState | Literal["open"] | None = None,
        device: str | None = None,
        rule_id: str | None = None,
        limit: int = 100,
        before: tuple[int, str] | None = None,
    ) -> list[AlarmRow]:
        """Alarms newest first (`state` "open": active or acknowledged); `before` is the
        previous page's last (raised_us, alarm_id)."""
        return await self._store.list_alarms(
            state=state,
            device=device,
            rule_id=rule_id,
            limit=limit,
            before=before,
        )

    # -- preview -------------------------------------------------------------------------------

    async def preview(
        self,
        rule: Rule,
        *,
        devices: list[str] | None,
        start_us: int,
        end_us: int,
        tick_s: float = 60,
    ) -> dict[str, PreviewResult]:
        """What `rule` would have done over stored readings in [start_us, end_us], per device
        (by default every known device in its scope), through the live evaluation's code."""
        if devices is None:
            scope = ScopeMatch(rule.scope)
            devices = sorted(
                device_id
                for device_id, (profile, attributes) in self._devices.items()
                if scope.matches(device_id, profile, attributes)
            )
        metrics = watched_metrics(rule.condition)
        results: dict[str, PreviewResult] = {}
        for device_id in devices:
            rows = (
                []
                if metrics is not None and not metrics
                else await self._readings(
                    device_id, metrics, start_us, end_us, MAX_PREVIEW_READINGS
                )
            )
            results[device_id] = preview(
                rule,
                device_id,
                [(metric, Sample(ts_us, value)) for ts_us, metric, value in rows],
                start_us=start_us,
                end_us=end_us,
                tick_s=tick_s,
            )
        return results

    # -- for tests and the status page ---------------------------------------------------------

    def state_of(self, rule_id: str, device_id: str) -> ConditionState | None:
        """A rule's live state for a device (None: none)."""
        loaded = self._rules.get(rule_id)
        return None if loaded is None else loaded.states.get(device_id)

    def loaded_rules(self) -> list[str]:
        """The ids of the rules being evaluated."""
        return sorted(self._rules)

    async def wait_idle(self) -> None:
        """Wait until the bus events queued so far are evaluated and the log is written."""
        subscription = self._subscription
        while subscription is not None and (len(subscription) or self._in_flight):
            self._evaluated.clear()
            await self._evaluated.wait()
        await self.notification_log.wait_idle()
