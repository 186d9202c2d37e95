"""What a command transition changes, decided once for every storage engine.

The engines only read the current row and write what `plan_transition` returns, so the rules
(the transition table, the `sent` an early answer implies, histories that never go back in time)
live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from fieldhub.protocol.command_states import FINAL, CommandState, allowed
from fieldhub.store.base import CommandOutcome, CommandRow, CommandTransition

# The columns `command_row` reads, in its order, and the join they come from (both engines).
COMMAND_COLUMNS = (
    "d.uid, c.uid, c.name, c.params, c.format, c.topic, c.state, c.created_us, c.updated_us, "
    "c.timeout_s, c.expires_us, c.sent_us, c.finished_us, c.result, c.error, c.decided_by"
)
COMMAND_FROM = "FROM commands c JOIN devices d ON d.id = c.device_id"


def _as_is(value: Any) -> object:
    return value


def command_row(
    row: Sequence[Any],
    history: tuple[CommandTransition, ...] = (),
    *,
    loads: Callable[[Any], object] = _as_is,
) -> CommandRow:
    """A CommandRow from a row selected with COMMAND_COLUMNS; `loads` decodes the JSON columns
    where the driver hands them over as text (SQLite; asyncpg's codec decodes them already)."""
    return CommandRow(
        device_id=row[0],
        command_id=row[1],
        name=row[2],
        params=loads(row[3]),  # type: ignore[arg-type]
        format=row[4],
        topic=row[5],
        state=CommandState(row[6]),
        created_us=row[7],
        updated_us=row[8],
        timeout_s=row[9],
        expires_us=row[10],
        sent_us=row[11],
        finished_us=row[12],
        result=loads(row[13]) if row[13] is not None else None,
        error=row[14],
        decided_by=row[15],
        history=history,
    )


# What an ack or echo found a command still `pending` with (its PUBACK not yet recorded): proof
# that the broker delivered it, recorded as `sent` at the same moment.
IMPLIED_SENT = "the device answered, so the broker had delivered it"


def plan_transition(
    current: CommandRow, target: CommandState, at_us: int, outcome: CommandOutcome
) -> CommandRow | None:
    """The row after moving `current` to `target`, with the history entries to add in
    `history`; None when the transition table does not allow it.

    An end state the device decided (succeeded/failed) reached from `pending` records the `sent`
    the device's answer proves first, so every history reads as the table does. Times come from
    different threads (an ack's receive time, the loop's clock when a PUBACK was handled), so a
    transition is never stored before the previous one.
    """
    at_us = max(at_us, current.updated_us)
    steps: list[CommandTransition] = []
    state = current.state
    sent_us = current.sent_us
    if state is CommandState.PENDING and target in (CommandState.SUCCEEDED, CommandState.FAILED):
        steps.append(CommandTransition(CommandState.SENT, at_us, IMPLIED_SENT))
        state = CommandState.SENT
        sent_us = at_us
    if not allowed(state, target):
        return None
    steps.append(CommandTransition(target, at_us, outcome.detail))
    if target is CommandState.SENT:
        sent_us = at_us
    final = target in FINAL
    return replace(
        current,
        state=target,
        updated_us=at_us,
        sent_us=sent_us,
        finished_us=at_us if final else None,
        result=outcome.result,
        error=outcome.error,
        decided_by=outcome.decided_by,
        history=tuple(steps),
    )


def pending_row(command: CommandRow, detail: str) -> CommandRow:
    """A new command as stored: `pending` since its creation, with its first history entry."""
    return replace(
        command,
        state=CommandState.PENDING,
        updated_us=command.created_us,
        history=(CommandTransition(CommandState.PENDING, command.created_us, detail),),
    )
