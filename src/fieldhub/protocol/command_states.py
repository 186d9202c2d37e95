"""The command lifecycle as one transition table (docs/commands.md).

The table is the only place that says which state may follow which: the store applies a
transition only when the stored state is one of `sources(target)`, so two parts of fieldhub racing
to end one command (an ack and a timeout) cannot both win.
"""

from __future__ import annotations

from enum import StrEnum


class CommandState(StrEnum):
    """Where a command is in its life. The value is what the API and the store say."""

    PENDING = "pending"
    SENT = "sent"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


TRANSITIONS: frozenset[tuple[CommandState, CommandState]] = frozenset(
    {
        (CommandState.PENDING, CommandState.SENT),
        (CommandState.PENDING, CommandState.EXPIRED),
        (CommandState.PENDING, CommandState.CANCELLED),
        (CommandState.SENT, CommandState.SUCCEEDED),
        (CommandState.SENT, CommandState.FAILED),
        (CommandState.SENT, CommandState.TIMED_OUT),
    }
)

FINAL: frozenset[CommandState] = frozenset(
    target for _, target in TRANSITIONS if not any(source == target for source, _ in TRANSITIONS)
)


def sources(target: CommandState) -> tuple[CommandState, ...]:
    """The states `target` may follow, in declaration order of the enum."""
    return tuple(state for state in CommandState if (state, target) in TRANSITIONS)


def allowed(source: CommandState, target: CommandState) -> bool:
    """True when the table has the transition."""
    return (source, target) in TRANSITIONS
