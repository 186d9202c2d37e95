"""The command lifecycle's states and transitions (docs/commands.md), read from the one table.

Clients that order what they learn about a command (the device page never shows a row going
back to an earlier state) read the states here instead of restating them.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from fieldhub.api.auth import VIEWER
from fieldhub.api.errors import ERROR_RESPONSES
from fieldhub.protocol.command_states import FINAL, TRANSITIONS, CommandState

router = APIRouter(
    prefix="/api/v1/command-states",
    tags=["commands"],
    responses=ERROR_RESPONSES,
    dependencies=[VIEWER],
)


class CommandStatePublic(BaseModel):
    """One state of the command lifecycle."""

    name: CommandState
    final: bool = Field(description="No transition leaves this state")
    next: list[CommandState] = Field(
        description="The states a command in this state may move to, in lifecycle order"
    )


class CommandStatesPublic(BaseModel):
    """Every command state in lifecycle order: a state is listed after every state it may
    follow, so `pending` comes first and the final states last."""

    states: list[CommandStatePublic]


def lifecycle() -> CommandStatesPublic:
    """The table of `fieldhub.protocol.command_states` as the API shows it."""
    return CommandStatesPublic(
        states=[
            CommandStatePublic(
                name=state,
                final=state in FINAL,
                next=[target for target in CommandState if (state, target) in TRANSITIONS],
            )
            for state in CommandState
        ]
    )


@router.get("", response_model=CommandStatesPublic)
async def command_states() -> CommandStatesPublic:
    """Every state a command can be in: whether it is final, and the states it may move to."""
    return lifecycle()
