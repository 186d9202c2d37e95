"""The command service: accepts commands, sends them when their device can hear, and ends each one.

A façade over the parts, one module each: admission (validation, limits, idempotent ids),
dispatch (the commands' MQTT connection, PUBACKs, re-sending), deadlines (expiry, timeouts,
publish-ack timeouts), tracking (transitions and the in-memory view of the commands not yet
final), waiters and metrics. The store is the truth: every transition is a conditional write
(protocol/command_states.py), and the view follows what the store accepted. Acks arrive through
ingest (`devices/{id}/commands/ack` is an ingest route) and are applied in the batch's own
transaction, so an ack the broker delivered is never acknowledged to it before it is stored; this
service hears of them as a commit listener, together with the messages that may prove a command
of an ack-less stack worked.

Everything here runs on the event loop, except the MQTT callbacks, which hop onto it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from fieldhub.clock import SYSTEM_CLOCK, US_PER_S, Clock
from fieldhub.commands.active import ActiveCommand, ActiveCommands, CommandKey, key_of
from fieldhub.commands.admission import Admission, CommandLimits, NewCommand
from fieldhub.commands.deadlines import Due
from fieldhub.commands.dispatch import Dispatcher
from fieldhub.commands.formats import FORMATS, CommandFormat
from fieldhub.commands.metrics import CommandMetrics
from fieldhub.commands.tasks import Tasks
from fieldhub.commands.tracking import (
    CommandDeadlines,
    CommandTracker,
    CommandWaiters,
    DeadlineKind,
)
from fieldhub.events.bus import EventBus
from fieldhub.logs import about
from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.protocol.command_states import CommandState
from fieldhub.store.base import Store
from fieldhub.store.types import CommandRow, DeviceRow, WriteBatch, WriteResult

__all__ = [
    "RESTART_GRACE_S",
    "CommandLimits",
    "CommandService",
    "NewCommand",
]

log = logging.getLogger("fieldhub.commands")

# After a restart, `sent` commands get at least this long: acks the broker queued for ingest's
# session while fieldhub was down arrive in the first seconds after it reconnects.
RESTART_GRACE_S = 5.0


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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.bus = bus
        self.limits = limits or CommandLimits()
        self._clock = clock
        self._active = ActiveCommands()
        self._deadlines = CommandDeadlines(clock=clock)
        self._waiters = CommandWaiters()
        self._tasks = Tasks()
        self._admission = Admission(
            store=store,
            clock=clock,
            limits=self.limits,
            queued=self._active.queued,
            default_formats=default_formats,
        )
        self._tracker = CommandTracker(
            store=store,
            bus=bus,
            clock=clock,
            active=self._active,
            deadlines=self._deadlines,
            waiters=self._waiters,
            metrics=CommandMetrics(registry, active_count=lambda: len(self._active)),
            tasks=self._tasks,
            on_applied=self._applied,
        )
        self._dispatcher = Dispatcher(
            store=store,
            clock=clock,
            active=self._active,
            deadlines=self._deadlines,
            tracker=self._tracker,
            tasks=self._tasks,
            endpoint=endpoint,
            client_id=client_id,
            protocol=protocol,
        )
        self._deadline_task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the commands not yet final, start the deadlines and connect to the broker."""
        now = self._clock.now_us()
        grace_until = now + int(RESTART_GRACE_S * US_PER_S)
        for row in await self.store.active_commands():
            fmt = FORMATS.get(row.format)
            if fmt is None:  # a format this version no longer has: it can only time out
                log.warning(
                    "command %s has unknown format %r",
                    row.command_id,
                    row.format,
                    extra=about(device_id=row.device_id, command_id=row.command_id),
                )
                continue
            state = await self._state_before(row, fmt)
            active = ActiveCommand(row, fmt, fmt.expectation(row.name, row.params, state))
            self._tracker.track(active)
            self._dispatcher.held_fallback(active)
            if row.state is CommandState.SENT:
                # The broker had it; the device's answer may be queued for ingest's session.
                active.published_us = row.sent_us or row.created_us
                deadline = (row.sent_us or now) + int(row.timeout_s * US_PER_S)
                self._deadlines.schedule(key_of(row), "timeout", max(deadline, grace_until))
        self._deadline_task = asyncio.create_task(
            self._deadlines.run(self._deadline_came), name="commands.deadlines"
        )
        self._dispatcher.start()
        if self._active:
            log.info("%d commands not yet final resumed", len(self._active))

    async def stop(self) -> None:
        """Stop the deadlines and disconnect; what is not final stays in the store for next time."""
        if self._deadline_task is not None:
            self._deadline_task.cancel()
            await asyncio.wait([self._deadline_task])
        await self._tasks.cancel_all()
        await self._dispatcher.stop()

    @property
    def connected(self) -> bool:
        """True while the commands' MQTT connection is up."""
        return self._dispatcher.connected

    # -- API -----------------------------------------------------------------------------------

    def format_of(self, device: DeviceRow) -> CommandFormat | None:
        """How to command `device`: what its messages said, else its profile's default."""
        return self._admission.format_of(device)

    async def submit(self, device: DeviceRow, request: NewCommand) -> tuple[CommandRow, bool]:
        """Validate, store and (if the device can hear) send a command.

        Returns the command and whether it is new (False: an earlier request with the same id and
        body). Raises the domain's errors otherwise (`fieldhub.errors`: Invalid, TooLarge,
        Conflict, Overloaded), each with the `code` the API answers.
        """
        admitted = await self._admission.admit(device, request)
        if not admitted.created:
            return admitted.row, False
        stored, fmt = admitted.row, admitted.fmt
        state = await self._state_now(
            device.device_id, fmt.state_metrics(stored.name, stored.params)
        )
        active = ActiveCommand(
            stored,
            fmt,
            fmt.expectation(stored.name, stored.params, state),
            history=list(stored.history),
        )
        self._tracker.created(active)
        if device.presence == "online":
            self._dispatcher.dispatch(device.device_id)
        else:
            self._dispatcher.leave_fallback(active)
        return stored, True

    async def _state_now(self, device_id: str, metrics: tuple[str, ...]) -> dict[str, float]:
        """The device's latest values of `metrics` (what an expectation compares with)."""
        if not metrics:
            return {}
        return {
            summary.name: summary.last_value
            for summary in await self.store.device_metrics(device_id)
            if summary.name in metrics
        }

    async def _state_before(self, row: CommandRow, fmt: CommandFormat) -> dict[str, float]:
        """For a command loaded at start: its device's values of the metrics its expectation
        compares with, as they were when the command was accepted."""
        state: dict[str, float] = {}
        for metric in fmt.state_metrics(row.name, row.params):
            rows = await self.store.query_readings(
                row.device_id,
                metrics=[metric],
                start_us=None,
                end_us=row.created_us,
                limit=1,
                after=None,
                descending=True,
            )
            if rows:
                state[metric] = rows[0].value
        return state

    def _applied(self, row: CommandRow) -> None:
        self._dispatcher.settled(row)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish a message on the commands' MQTT connection, untracked (the rule engine's
        `mqtt` actions); Unavailable while the connection is down. The embedded broker's ACL
        must grant the topic (broker/access.py), or it drops the message silently."""
        self._dispatcher.publish(topic, payload, qos, retain)

    async def cancel(self, device_id: str, command_id: str) -> CommandRow:
        """Cancel a pending command; Conflict once it was handed to the broker, NotFound when
        the device has no such command."""
        return await self._tracker.cancel((device_id, command_id))

    async def wait(self, device_id: str, command_id: str, timeout_s: float) -> CommandRow | None:
        """Wait until the command is final or `timeout_s` passed (whichever comes first).

        Returns the final command with its whole history when this service saw all of it, else
        None (timed out, already final, or resumed at start): read it from the store then.
        """
        key = (device_id, command_id)
        if key not in self._active or timeout_s <= 0:
            return None
        return await self._waiters.wait(key, timeout_s)

    # -- ingest listener -----------------------------------------------------------------------

    def on_commit(self, batch: WriteBatch, result: WriteResult, committed_us: int) -> None:
        """Acks applied in the batch, state echoes in its messages, devices heard from again."""
        for row in result.command_transitions:
            self._tracker.applied(row)
        if result.late_replies:
            self._tracker.late_replies(batch.command_replies, result.late_replies)
        if not self._active:
            return
        for device_id in self._tracker.heard(batch.decoded):
            self._dispatcher.dispatch(device_id)

    # -- deadlines -----------------------------------------------------------------------------

    def _deadline_came(self, due: Due[CommandKey, DeadlineKind]) -> None:
        if due.kind == "publish":
            self._dispatcher.publish_timed_out(due.key)
        else:
            self._tracker.deadline_passed(due.key, due.kind, self._clock.now_us())
