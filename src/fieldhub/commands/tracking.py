"""Following commands through their lifecycle: every transition goes through the store, and what
the store accepted moves the in-memory view, the deadlines, the waiters, the metrics and the bus.

The store is the truth: a transition is a conditional write (protocol/command_states.py), so when
an ack and a timeout race to end one command, one write wins and the other returns None. This
module also decides what a deadline that came means (`expire`, `timeout`), what a device's message
proves about a command of an ack-less stack, and cancellation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from fieldhub.clock import US_PER_S, Clock
from fieldhub.commands.active import ActiveCommand, ActiveCommands, CommandKey, key_of
from fieldhub.commands.deadlines import Deadlines
from fieldhub.commands.metrics import CommandMetrics
from fieldhub.commands.tasks import Tasks
from fieldhub.commands.waiters import Waiters
from fieldhub.errors import Conflict, NotFound
from fieldhub.events.bus import CommandChanged, EventBus
from fieldhub.logs import about
from fieldhub.protocol.command_states import FINAL, CommandState
from fieldhub.protocol.messages import CommandReply, Decoded
from fieldhub.store.base import Store
from fieldhub.store.types import CommandOutcome, CommandRow

log = logging.getLogger("fieldhub.commands")

DeadlineKind = Literal["expire", "timeout", "publish"]
CommandDeadlines = Deadlines[CommandKey, DeadlineKind]
CommandWaiters = Waiters[CommandKey, CommandRow]


def timeout_us(row: CommandRow) -> int:
    """When a sent command times out (its `timeout_s` after the broker took it)."""
    return (row.sent_us or row.updated_us) + int(row.timeout_s * US_PER_S)


class CommandTracker:
    """Stores transitions and follows the ones stored (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        bus: EventBus,
        clock: Clock,
        active: ActiveCommands,
        deadlines: CommandDeadlines,
        waiters: CommandWaiters,
        metrics: CommandMetrics,
        tasks: Tasks,
        on_applied: Callable[[CommandRow], None] | None = None,
    ) -> None:
        self._store = store
        self._on_applied = on_applied
        self._bus = bus
        self._clock = clock
        self._active = active
        self._deadlines = deadlines
        self._waiters = waiters
        self._metrics = metrics
        self._tasks = tasks

    def track(self, active: ActiveCommand) -> None:
        """Follow a command not yet final; a pending one gets its expiry deadline."""
        row = active.row
        self._active.add(active)
        if row.expires_us is not None and row.state is CommandState.PENDING:
            self._deadlines.schedule(key_of(row), "expire", row.expires_us)

    def created(self, active: ActiveCommand) -> None:
        """Follow a command just stored as pending, and tell the bus."""
        self.track(active)
        self._changed(active.row)

    async def transition(
        self,
        key: CommandKey,
        target: CommandState,
        outcome: CommandOutcome,
        *,
        at_us: int | None = None,
    ) -> CommandRow | None:
        """Store `target` if the table allows it from the stored state; the row, or None when
        another transition came first."""
        device_id, command_id = key
        row = await self._store.transition_command(
            device_id, command_id, target, at_us or self._clock.now_us(), outcome
        )
        if row is not None:
            self.applied(row)
        return row

    def transition_soon(
        self,
        key: CommandKey,
        target: CommandState,
        outcome: CommandOutcome,
        *,
        at_us: int | None = None,
    ) -> None:
        """`transition` in a task of its own (from callbacks that cannot await)."""
        device_id, command_id = key
        self._tasks.spawn(
            self.transition(key, target, outcome, at_us=at_us),
            name=f"commands.{target.value}[{device_id}/{command_id}]",
        )

    def applied(self, row: CommandRow) -> None:
        """The store accepted a transition: follow it, publish it, wake whoever waits."""
        key = key_of(row)
        active = self._active.get(key)
        complete: CommandRow | None = None
        if active is not None and active.history is not None:
            active.history.extend(row.history)
            complete = replace(row, history=tuple(active.history))
        if row.state in FINAL:
            self._active.remove(key)
            self._deadlines.cancel(key)
            self._metrics.ended(row)
            self._waiters.resolve(key, complete)
        elif active is not None:
            active.row = replace(row, history=())
            if row.state is CommandState.SENT:
                active.publishing = False
                # Sent: it can no longer expire, and the broker's ack has come.
                self._deadlines.cancel(key, "expire")
                self._deadlines.cancel(key, "publish")
                self._deadlines.schedule(key, "timeout", timeout_us(row))
        self._changed(row)
        if self._on_applied is not None:
            self._on_applied(row)

    async def adopt(self, key: CommandKey) -> None:
        """Follow transitions another process stored for a command this one tracks."""
        row = await self._store.get_command(*key)
        active = self._active.get(key)
        if row is None or active is None or row.state is active.row.state:
            return
        seen_us = active.row.updated_us
        self.applied(replace(row, history=tuple(h for h in row.history if h.at_us > seen_us)))

    def late_replies(self, replies: list[CommandReply], count: int) -> None:
        """Answers the batch could not apply: count them, and follow the tracked ones' rows."""
        self._metrics.late_replies(count)
        # Beside ingest workers (`fieldhub up --no-ingest`) a worker may have stored the
        # reply first: follow the row it wrote.
        for reply in replies:
            key = (reply.device_id, reply.command_id)
            if key in self._active:
                self._tasks.spawn(
                    self.adopt(key), name=f"commands.adopt[{reply.device_id}/{reply.command_id}]"
                )

    def heard(self, decoded: list[Decoded]) -> set[str]:
        """Check stored messages against the expectations of commands out to their devices;
        returns the devices with commands that were heard from (not their offline will)."""
        heard: set[str] = set()
        for message in decoded:
            if not self._active.has_device(message.device_id):
                continue
            if message.presence != "offline":
                heard.add(message.device_id)
            self._check_expectations(message)
        return heard

    def _check_expectations(self, decoded: Decoded) -> None:
        for active in self._active.of_device(decoded.device_id):
            if active.expectation is None:
                continue
            if active.published_us == 0 or decoded.received_us < active.published_us:
                # From before the command went out: the state it starts from.
                active.expectation.observe(decoded)
                continue
            verdict = active.expectation.check(decoded)
            if verdict is None:
                continue
            active.expectation = None  # decided: later messages must not decide it again
            self.transition_soon(
                key_of(active.row),
                verdict.state,
                CommandOutcome(verdict.detail, verdict.decided_by, verdict.result, verdict.error),
                at_us=decoded.received_us,
            )

    def deadline_passed(self, key: CommandKey, kind: DeadlineKind, now_us: int) -> None:
        """An `expire` or `timeout` deadline came: end the command if it still applies."""
        active = self._active.get(key)
        if active is None:
            return
        row = active.row
        if kind == "expire":
            if row.state is CommandState.PENDING and not active.publishing:
                self.transition_soon(
                    key,
                    CommandState.EXPIRED,
                    CommandOutcome("expires_at passed before it could be sent", "expiry"),
                )
        elif (
            kind == "timeout"
            and row.state is CommandState.SENT
            and row.sent_us is not None
            and now_us >= row.sent_us + int(row.timeout_s * US_PER_S)
        ):
            self.transition_soon(
                key,
                CommandState.TIMED_OUT,
                CommandOutcome(f"no answer within {row.timeout_s:g} s of being sent", "timeout"),
            )

    async def cancel(self, key: CommandKey) -> CommandRow:
        """Cancel a pending command; Conflict once it was handed to the broker or ended
        otherwise, NotFound when there is no such command."""
        active = self._active.get(key)
        if active is not None and active.publishing:
            raise Conflict("the command was already handed to the broker", code="already_sent")
        row = await self.transition(
            key, CommandState.CANCELLED, CommandOutcome("cancelled through the API", "cancel")
        )
        if row is not None:
            return row
        current = await self._store.get_command(*key)
        if current is None:
            raise NotFound(f"no command {key[1]!r}", code="not_found")
        if current.state is CommandState.CANCELLED:
            return current  # cancelled already (another client): what was asked for holds
        raise Conflict(
            f"only a pending command can be cancelled; this one is {current.state.value}",
            code="not_pending",
        )

    def _changed(self, row: CommandRow) -> None:
        # Debug: rules and the window loop may send many a second; the command's history in the
        # store is its record, this line ties it to the log's other lines about it.
        log.debug(
            "command %s of %s: %s",
            row.command_id,
            row.device_id,
            row.state.value,
            extra=about(device_id=row.device_id, command_id=row.command_id),
        )
        self._metrics.stored(row)
        self._bus.publish(CommandChanged(row))
