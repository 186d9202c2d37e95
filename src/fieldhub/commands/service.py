"""The command service: accepts commands, sends them when their device can hear, and ends each one.

It owns the commands' MQTT connection (TCP_NODELAY and a bounded in-flight window come with
`MqttPublisher`), a timer for timeouts and expiry, and the in-memory view of the commands not yet
final. The store is the truth: every transition is a conditional write (protocol/command_states.py),
and the view follows what the store accepted. Acks arrive through ingest
(`devices/{id}/commands/ack` is an ingest route) and are applied in the batch's own transaction, so
an ack the broker delivered is never acknowledged to it before it is stored; this service hears of
them as a commit listener, together with the messages that may prove a command of an ack-less stack
worked.

Everything here runs on the event loop, except the MQTT callbacks, which hop onto it.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fieldhub import clock
from fieldhub.clock import US_PER_S
from fieldhub.commands.formats import FORMATS, CommandError, CommandFormat, Expectation, Outgoing
from fieldhub.commands.ratelimit import RateLimiter
from fieldhub.events.bus import CommandChanged, EventBus
from fieldhub.mqtt.client import MqttEndpoint, MqttPublisher
from fieldhub.protocol.command_states import FINAL, CommandState
from fieldhub.protocol.messages import Decoded
from fieldhub.store.base import (
    CommandOutcome,
    CommandRow,
    CommandTransition,
    DeviceRow,
    Store,
    WriteBatch,
    WriteResult,
)

log = logging.getLogger("fieldhub.commands")

Key = tuple[str, str]  # (device id, command id)
TimerKind = Literal["expire", "timeout", "publish"]

# After a restart, `sent` commands get at least this long: acks the broker queued for ingest's
# session while fieldhub was down arrive in the first seconds after it reconnects.
RESTART_GRACE_S = 5.0
# A publish the broker has not acknowledged after this long (the connection dropped under it)
# is handed out again when the device is next heard from; the device drops a repeated id.
PUBLISH_ACK_TIMEOUT_S = 10.0


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


class CommandRefused(Exception):
    """A command fieldhub will not accept; `status` is the HTTP status to answer with."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class _Active:
    """A command not yet final, as the service tracks it."""

    row: CommandRow
    fmt: CommandFormat
    expectation: Expectation | None
    publishing: bool = False
    published_us: int = 0
    # Every transition so far (so an API call waiting for the end needs no read), or None for a
    # command loaded at start, whose earlier history is only in the store.
    history: list[CommandTransition] | None = None


@dataclass(slots=True)
class _Metrics:
    registry: CollectorRegistry
    transitions: Counter = field(init=False)
    late_replies: Counter = field(init=False)
    round_trip: Histogram = field(init=False)

    def __post_init__(self) -> None:
        self.transitions = Counter(
            "fieldhub_command_transitions",
            "Command state transitions stored, by the state entered",
            ["state"],
            registry=self.registry,
        )
        self.late_replies = Counter(
            "fieldhub_command_late_replies",
            "Device answers to commands already final or unknown (nothing changed)",
            registry=self.registry,
        )
        self.round_trip = Histogram(
            "fieldhub_command_round_trip_seconds",
            "From a command's creation to the device's answer (succeeded or failed)",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )


class CommandService:
    """See the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        bus: EventBus,
        endpoint: MqttEndpoint,
        client_id: str,
        protocol: int,
        registry: CollectorRegistry,
        limits: CommandLimits | None = None,
        default_formats: Mapping[str, str | None] | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.limits = limits or CommandLimits()
        self._default_formats = dict(default_formats or {})
        self._publisher = MqttPublisher(
            endpoint=endpoint,
            client_id=client_id,
            protocol=protocol,
            on_subscribed=self._on_broker,
        )
        self._rate = RateLimiter(self.limits.rate_per_s, self.limits.burst)
        self._active: dict[Key, _Active] = {}
        self._by_device: dict[str, list[str]] = {}
        self._waiters: dict[Key, list[asyncio.Future[CommandRow | None]]] = {}
        self._timers: list[tuple[int, int, Key, TimerKind]] = []
        self._timer_seq = itertools.count()
        self._timer_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._metrics = _Metrics(registry)
        Gauge("fieldhub_commands_active", "Commands not yet final", registry=registry).set_function(
            lambda: len(self._active)
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the commands not yet final, start the timer and connect to the broker."""
        self._loop = asyncio.get_running_loop()
        now = clock.now_us()
        grace_until = now + int(RESTART_GRACE_S * US_PER_S)
        for row in await self.store.active_commands():
            fmt = FORMATS.get(row.format)
            if fmt is None:  # a format this version no longer has: it can only time out
                log.warning("command %s has unknown format %r", row.command_id, row.format)
                continue
            active = _Active(row, fmt, fmt.expectation(row.name, row.params))
            self._track(active)
            if row.state is CommandState.SENT:
                # The broker had it; the device's answer may be queued for ingest's session.
                active.published_us = row.sent_us or row.created_us
                deadline = (row.sent_us or now) + int(row.timeout_s * US_PER_S)
                self._schedule(
                    max(deadline, grace_until), (row.device_id, row.command_id), "timeout"
                )
        self._timer_task = asyncio.create_task(self._run_timers(), name="commands.timers")
        self._publisher.start()
        if self._active:
            log.info("%d commands not yet final resumed", len(self._active))

    async def stop(self) -> None:
        """Stop the timer and disconnect; what is not final stays in the store for next time."""
        if self._timer_task is not None:
            self._timer_task.cancel()
            await asyncio.wait([self._timer_task])
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await asyncio.to_thread(self._publisher.stop)

    @property
    def connected(self) -> bool:
        """True while the commands' MQTT connection is up."""
        return self._publisher.connected

    # -- API -----------------------------------------------------------------------------------

    def format_of(self, device: DeviceRow) -> CommandFormat | None:
        """How to command `device`: what its messages said, else its profile's default."""
        name = device.command_format or self._default_formats.get(device.profile)
        return FORMATS.get(name) if name else None

    async def submit(self, device: DeviceRow, request: NewCommand) -> tuple[CommandRow, bool]:
        """Validate, store and (if the device can hear) send a command.

        Returns the command and whether it is new (False: an earlier request with the same id and
        body). Raises CommandRefused with the HTTP status and reason otherwise.
        """
        fmt = self.format_of(device)
        if fmt is None:
            raise CommandRefused(
                422,
                "commands_unsupported",
                f"device {device.device_id!r} ({device.profile} profile) has no command "
                "down-link: its stack sends data only",
            )
        try:
            fmt.validate(request.name, request.params)
        except CommandError as exc:
            raise CommandRefused(422, exc.code, exc.message) from None
        now = clock.now_us()
        command_id = request.command_id or str(uuid.uuid4())
        topic_id = device.topic_id or device.device_id
        try:
            fmt.encode(Outgoing(command_id, request.name, request.params, topic_id))
        except CommandError as exc:
            status = 413 if exc.code == "payload_too_large" else 422
            raise CommandRefused(status, exc.code, exc.message) from None
        expires_us = request.expires_us
        if expires_us is None:
            expires_us = now + int(self.limits.default_expiry_s * US_PER_S)
        elif expires_us <= now:
            raise CommandRefused(422, "invalid_parameter", "expires_at is in the past")
        if request.command_id is not None:
            existing = await self.store.get_command(device.device_id, request.command_id)
            if existing is not None:
                return self._replayed(existing, request), False
        queued = len(self._by_device.get(device.device_id, ()))
        if queued >= self.limits.queue_max:
            raise CommandRefused(
                429,
                "queue_full",
                f"device {device.device_id!r} has {queued} commands not yet final (the limit); "
                "wait for them to end or cancel some",
                retry_after_s=1,
            )
        wait_s = self._rate.take(device.device_id)
        if wait_s > 0:
            raise CommandRefused(
                429,
                "rate_limited",
                f"at most {self.limits.rate_per_s:g} commands a second per device (bursts of "
                f"{self.limits.burst}); retry in {wait_s:.1f} s",
                retry_after_s=self._rate.retry_after_s(wait_s),
            )
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
            timeout_s=request.timeout_s or fmt.default_timeout_s,
            expires_us=expires_us,
        )
        detail = (
            "accepted; the device is online"
            if device.presence == "online"
            else f"accepted; waiting for the device ({device.presence}) to be heard from"
        )
        stored = await self.store.insert_command(row, detail)
        if stored is None:  # the same id, a moment ago, from a concurrent request
            existing = await self.store.get_command(device.device_id, command_id)
            if existing is None:
                raise CommandRefused(409, "conflict", f"command id {command_id!r} is in use")
            return self._replayed(existing, request), False
        active = _Active(
            stored, fmt, fmt.expectation(stored.name, stored.params), history=list(stored.history)
        )
        self._track(active)
        self._changed(stored)
        if device.presence == "online":
            self._dispatch(device.device_id)
        return stored, True

    def _replayed(self, existing: CommandRow, request: NewCommand) -> CommandRow:
        if existing.name != request.name or existing.params != request.params:
            raise CommandRefused(
                409,
                "conflict",
                f"command id {existing.command_id!r} was already used for "
                f"{existing.name} {existing.params}; use a new id for a different command",
            )
        return existing

    async def cancel(self, device_id: str, command_id: str) -> CommandRow:
        """Cancel a pending command; CommandRefused(409) once it was handed to the broker."""
        active = self._active.get((device_id, command_id))
        if active is not None and active.publishing:
            raise CommandRefused(
                409, "already_sent", "the command was already handed to the broker"
            )
        row = await self._transition(
            device_id,
            command_id,
            CommandState.CANCELLED,
            CommandOutcome("cancelled through the API", "cancel"),
        )
        if row is None:
            current = await self.store.get_command(device_id, command_id)
            if current is None:
                raise CommandRefused(404, "not_found", f"no command {command_id!r}")
            if current.state is CommandState.CANCELLED:
                return current  # cancelled already (another client): what was asked for holds
            raise CommandRefused(
                409,
                "not_pending",
                f"only a pending command can be cancelled; this one is {current.state.value}",
            )
        return row

    async def wait(self, device_id: str, command_id: str, timeout_s: float) -> CommandRow | None:
        """Wait until the command is final or `timeout_s` passed (whichever comes first).

        Returns the final command with its whole history when this service saw all of it, else
        None (timed out, already final, or resumed at start): read it from the store then.
        """
        key = (device_id, command_id)
        if key not in self._active or timeout_s <= 0:
            return None
        future: asyncio.Future[CommandRow | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._waiters[key]

    # -- ingest listener -----------------------------------------------------------------------

    def on_commit(self, batch: WriteBatch, result: WriteResult, committed_us: int) -> None:
        """Acks applied in the batch, state echoes in its messages, devices heard from again."""
        for row in result.command_transitions:
            self._applied(row)
        if result.late_replies:
            self._metrics.late_replies.inc(result.late_replies)
            # Beside ingest workers (`fieldhub up --no-ingest`) a worker may have stored the
            # reply first: follow the row it wrote.
            for reply in batch.command_replies:
                if (reply.device_id, reply.command_id) in self._active:
                    self._spawn(self._adopt(reply.device_id, reply.command_id))
        if not self._by_device:
            return
        heard: set[str] = set()
        for decoded in batch.decoded:
            device_id = decoded.device_id
            ids = self._by_device.get(device_id)
            if not ids:
                continue
            if decoded.presence != "offline":
                heard.add(device_id)
            self._check_expectations(decoded, ids)
        for device_id in heard:
            self._dispatch(device_id)

    def _check_expectations(self, decoded: Decoded, ids: list[str]) -> None:
        for command_id in ids:
            active = self._active[(decoded.device_id, command_id)]
            if (
                active.expectation is None
                or active.published_us == 0
                or decoded.received_us < active.published_us
            ):
                continue
            verdict = active.expectation.check(decoded)
            if verdict is None:
                continue
            active.expectation = None  # decided: later messages must not decide it again
            self._spawn(
                self._transition(
                    decoded.device_id,
                    command_id,
                    verdict.state,
                    CommandOutcome(
                        verdict.detail, verdict.decided_by, verdict.result, verdict.error
                    ),
                    at_us=decoded.received_us,
                )
            )

    # -- sending -------------------------------------------------------------------------------

    def _on_broker(self, up: bool) -> None:
        # Network thread: the connection is (re)established and subscribed, or lost.
        if up and self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch_all)

    def _dispatch_all(self) -> None:
        for device_id in list(self._by_device):
            self._spawn(self._dispatch_if_online(device_id))

    async def _dispatch_if_online(self, device_id: str) -> None:
        device = await self.store.get_device(device_id, now_us=clock.now_us())
        if device is not None and device.presence == "online":
            self._dispatch(device_id)

    def _dispatch(self, device_id: str) -> None:
        """Hand the device's pending commands to the broker, oldest first."""
        if not self._publisher.connected:
            return  # _on_broker sends them once connected
        now = clock.now_us()
        for command_id in list(self._by_device.get(device_id, ())):
            active = self._active[(device_id, command_id)]
            row = active.row
            if row.state is not CommandState.PENDING or active.publishing:
                continue
            if row.expires_us is not None and row.expires_us <= now:
                # Its expiry timer may have fired while a publish was in flight and skipped it.
                self._schedule(now, (device_id, command_id), "expire")
                continue
            topic_id = active.fmt.topic_id_of(row.topic)
            payload = active.fmt.encode(Outgoing(command_id, row.name, row.params, topic_id))
            active.publishing = True
            active.published_us = now
            future = self._publisher.publish(row.topic, payload, qos=1)
            key = (device_id, command_id)
            self._schedule(now + int(PUBLISH_ACK_TIMEOUT_S * US_PER_S), key, "publish")
            future.add_done_callback(functools.partial(self._puback_done, key, now))

    def _puback_done(self, key: Key, published_us: int, future: Future[None]) -> None:
        # Network thread (or at once, if the publish failed): hop onto the loop.
        delivered = future.exception() is None
        if self._loop is not None:
            self._loop.call_soon_threadsafe(
                self._on_puback, key, published_us, delivered, clock.now_us()
            )

    def _on_puback(self, key: Key, published_us: int, delivered: bool, acked_us: int) -> None:
        active = self._active.get(key)
        if active is None or active.published_us != published_us:
            return
        if not delivered:
            active.publishing = False  # sent again when the device is next heard from
            expires_us = active.row.expires_us
            if expires_us is not None and expires_us <= acked_us:
                self._schedule(acked_us, key, "expire")
            return
        self._spawn(
            self._transition(
                key[0],
                key[1],
                CommandState.SENT,
                CommandOutcome("the broker accepted it for the device"),
                at_us=acked_us,
            )
        )

    # -- timers --------------------------------------------------------------------------------

    def _schedule(self, at_us: int, key: Key, kind: TimerKind) -> None:
        heapq.heappush(self._timers, (at_us, next(self._timer_seq), key, kind))
        self._timer_changed.set()

    async def _run_timers(self) -> None:
        while True:
            self._timer_changed.clear()
            now = clock.now_us()
            while self._timers and self._timers[0][0] <= now:
                _, _, key, kind = heapq.heappop(self._timers)
                self._fire(key, kind, now)
            delay = (self._timers[0][0] - now) / US_PER_S if self._timers else None
            try:
                await asyncio.wait_for(self._timer_changed.wait(), delay)
            except TimeoutError:
                pass

    def _fire(self, key: Key, kind: TimerKind, now_us: int) -> None:
        active = self._active.get(key)
        if active is None:
            return
        row = active.row
        if kind == "publish":
            if active.publishing and row.state is CommandState.PENDING:
                active.publishing = False
                self._spawn(self._dispatch_if_online(key[0]))
        elif kind == "expire":
            if row.state is CommandState.PENDING and not active.publishing:
                self._spawn(
                    self._transition(
                        *key,
                        CommandState.EXPIRED,
                        CommandOutcome("expires_at passed before it could be sent", "expiry"),
                    )
                )
        elif (
            row.state is CommandState.SENT
            and row.sent_us is not None
            and now_us >= row.sent_us + int(row.timeout_s * US_PER_S)
        ):
            self._spawn(
                self._transition(
                    *key,
                    CommandState.TIMED_OUT,
                    CommandOutcome(
                        f"no answer within {row.timeout_s:g} s of being sent", "timeout"
                    ),
                )
            )

    # -- state ---------------------------------------------------------------------------------

    async def _transition(
        self,
        device_id: str,
        command_id: str,
        target: CommandState,
        outcome: CommandOutcome,
        *,
        at_us: int | None = None,
    ) -> CommandRow | None:
        row = await self.store.transition_command(
            device_id, command_id, target, at_us or clock.now_us(), outcome
        )
        if row is not None:
            self._applied(row)
        return row

    def _track(self, active: _Active) -> None:
        row = active.row
        key = (row.device_id, row.command_id)
        self._active[key] = active
        self._by_device.setdefault(row.device_id, []).append(row.command_id)
        if row.expires_us is not None:
            self._schedule(row.expires_us, key, "expire")

    async def _adopt(self, device_id: str, command_id: str) -> None:
        """Follow transitions another process stored for a command this one tracks."""
        row = await self.store.get_command(device_id, command_id)
        active = self._active.get((device_id, command_id))
        if row is None or active is None or row.state is active.row.state:
            return
        seen_us = active.row.updated_us
        self._applied(replace(row, history=tuple(h for h in row.history if h.at_us > seen_us)))

    def _applied(self, row: CommandRow) -> None:
        """The store accepted a transition: follow it, publish it, wake whoever waits."""
        key = (row.device_id, row.command_id)
        active = self._active.get(key)
        complete: CommandRow | None = None
        if active is not None and active.history is not None:
            active.history.extend(row.history)
            complete = replace(row, history=tuple(active.history))
        if row.state in FINAL:
            if active is not None:
                del self._active[key]
                ids = self._by_device.get(row.device_id)
                if ids is not None:
                    ids.remove(row.command_id)
                    if not ids:
                        del self._by_device[row.device_id]
            if row.state in (CommandState.SUCCEEDED, CommandState.FAILED):
                self._metrics.round_trip.observe((row.updated_us - row.created_us) / US_PER_S)
            for future in self._waiters.pop(key, ()):
                if not future.done():
                    future.set_result(complete)
        elif active is not None:
            active.row = replace(row, history=())
            if row.state is CommandState.SENT:
                active.publishing = False
                self._schedule(
                    (row.sent_us or row.updated_us) + int(row.timeout_s * US_PER_S), key, "timeout"
                )
        self._changed(row)

    def _changed(self, row: CommandRow) -> None:
        for step in row.history:
            self._metrics.transitions.labels(step.state.value).inc()
        self.bus.publish(CommandChanged(row))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("command transition failed", exc_info=task.exception())
