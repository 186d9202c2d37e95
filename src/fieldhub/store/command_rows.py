"""What a command transition changes, decided once for every storage engine.

The engines only read the current row and write what `plan_transition` returns, so the rules
(the transition table, the `sent` an early answer implies, histories that never go back in time)
live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import replace

from fieldhub.commands.states import FINAL, CommandState, allowed
from fieldhub.store.base import CommandOutcome, CommandRow, CommandTransition

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
