"""Commands in the store, written once for every engine: what a transition changes
(`plan_transition`, pure) and the scripts (ops.py) that read and write command rows.

The rules (the transition table, the `sent` an early answer implies, histories that never go
back in time) live here and nowhere else. The write scripts run inside the caller's
transaction: the writer applies device acks within an ingest batch's transaction and API
transitions in one of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from fieldhub.protocol.command_states import FINAL, CommandState, allowed
from fieldhub.store.dialect import Dialect, Params
from fieldhub.store.ops import Many, Query, Row, Script
from fieldhub.store.types import CommandOutcome, CommandRow, CommandTransition, StoreError

# The columns `command_row` reads, in its order, and the join they come from (both engines).
COMMAND_COLUMNS = (
    "d.uid, c.uid, c.name, c.params, c.format, c.topic, c.state, c.created_us, c.updated_us, "
    "c.timeout_s, c.expires_us, c.sent_us, c.finished_us, c.result, c.error, c.decided_by"
)
COMMAND_FROM = "FROM commands c JOIN devices d ON d.id = c.device_id"


def command_row(
    row: Sequence[Any],
    history: tuple[CommandTransition, ...] = (),
    *,
    loads: Callable[[Any], object],
) -> CommandRow:
    """A CommandRow from a row selected with COMMAND_COLUMNS; `loads` decodes the JSON columns
    (the dialect's `json_loads`)."""
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


def _history(d: Dialect, command_pk: int) -> Script[tuple[CommandTransition, ...]]:
    rows = yield Query(
        f"SELECT state, at_us, detail FROM command_history WHERE command_id = {d.mark(1)} "
        "ORDER BY seq",
        (command_pk,),
    )
    return tuple(CommandTransition(CommandState(r[0]), r[1], r[2]) for r in rows)


def insert(d: Dialect, command: CommandRow, detail: str) -> Script[CommandRow | None]:
    """Store a new pending command and its first history entry (see `Store.insert_command`)."""
    p = Params(d)
    created = yield Query(
        "INSERT INTO commands (device_id, uid, name, params, format, topic, state, "
        "created_us, updated_us, timeout_s, expires_us) "
        f"SELECT d.id, {p(command.command_id)}, {p(command.name)}, "
        f"{p(d.json_param(command.params))}, {p(command.format)}, {p(command.topic)}, "
        f"{p(CommandState.PENDING.value)}, {p(command.created_us)}, {p(command.created_us)}, "
        f"{p(command.timeout_s)}, {p(command.expires_us)} FROM devices d "
        f"WHERE d.uid = {p(command.device_id)} "
        "ON CONFLICT (device_id, uid) DO NOTHING RETURNING id",
        p.values,
    )
    if not created:
        p = Params(d)
        known = yield Query(f"SELECT id FROM devices WHERE uid = {p(command.device_id)}", p.values)
        if not known:
            raise StoreError(f"no device {command.device_id!r}")
        return None
    row = pending_row(command, detail)
    (entry,) = row.history
    m = d.mark
    yield Query(
        "INSERT INTO command_history (command_id, seq, state, at_us, detail) "
        f"VALUES ({m(1)}, 1, {m(2)}, {m(3)}, {m(4)})",
        (created[0][0], entry.state.value, entry.at_us, entry.detail),
    )
    return row


def transition(
    d: Dialect,
    device_pk: int,
    command_id: str,
    target: CommandState,
    at_us: int,
    outcome: CommandOutcome,
) -> Script[CommandRow | None]:
    """Apply one transition if the table allows it from the stored state (plan_transition)."""
    m = d.mark
    # Locked where writers run concurrently: an ack in an ingest batch and a timeout read the
    # same state one after the other, so only one of them can move it on.
    found = yield Query(
        f"SELECT c.id, {COMMAND_COLUMNS} {COMMAND_FROM} "
        f"WHERE c.device_id = {m(1)} AND c.uid = {m(2)}{d.lock_rows('c')}",
        (device_pk, command_id),
    )
    if not found:
        return None
    command_pk = found[0][0]
    row = plan_transition(
        command_row(tuple(found[0])[1:], loads=d.json_loads), target, at_us, outcome
    )
    if row is None:
        return None
    yield Query(
        f"UPDATE commands SET state = {m(1)}, updated_us = {m(2)}, sent_us = {m(3)}, "
        f"finished_us = {m(4)}, result = {m(5)}, error = {m(6)}, decided_by = {m(7)} "
        f"WHERE id = {m(8)}",
        (
            row.state.value,
            row.updated_us,
            row.sent_us,
            row.finished_us,
            d.json_param(row.result) if row.result is not None else None,
            row.error,
            row.decided_by,
            command_pk,
        ),
    )
    ((last_seq,),) = yield Query(
        f"SELECT coalesce(max(seq), 0) FROM command_history WHERE command_id = {m(1)}",
        (command_pk,),
    )
    yield Many(
        "INSERT INTO command_history (command_id, seq, state, at_us, detail) "
        f"VALUES ({m(1)}, {m(2)}, {m(3)}, {m(4)}, {m(5)})",
        [
            (command_pk, last_seq + i + 1, step.state.value, step.at_us, step.detail)
            for i, step in enumerate(row.history)
        ],
    )
    return row


def transition_by_uid(
    d: Dialect,
    device_id: str,
    command_id: str,
    target: CommandState,
    at_us: int,
    outcome: CommandOutcome,
) -> Script[CommandRow | None]:
    """`transition` for a device named by its id (see `Store.transition_command`)."""
    found = yield Query(f"SELECT id FROM devices WHERE uid = {d.mark(1)}", (device_id,))
    if not found:
        return None
    return (yield from transition(d, found[0][0], command_id, target, at_us, outcome))


def get(d: Dialect, device_id: str, command_id: str) -> Script[CommandRow | None]:
    """One command with its whole history."""
    m = d.mark
    found = yield Query(
        f"SELECT c.id, {COMMAND_COLUMNS} {COMMAND_FROM} WHERE d.uid = {m(1)} AND c.uid = {m(2)}",
        (device_id, command_id),
    )
    if not found:
        return None
    history = yield from _history(d, found[0][0])
    return command_row(tuple(found[0])[1:], history, loads=d.json_loads)


def page(
    d: Dialect,
    device_id: str,
    state: CommandState | None,
    limit: int,
    before: tuple[int, str] | None,
) -> Script[list[CommandRow]]:
    """A device's commands, newest first (see `Store.list_commands`)."""
    p = Params(d)
    sql = f"SELECT {COMMAND_COLUMNS} {COMMAND_FROM} WHERE d.uid = {p(device_id)}"
    if state is not None:
        sql += f" AND c.state = {p(state.value)}"
    if before is not None:
        sql += f" AND (c.created_us, c.uid) < ({p(before[0])}, {p(before[1])})"
    sql += f" ORDER BY c.created_us DESC, c.uid DESC LIMIT {p(limit)}"
    return _rows((yield Query(sql, p.values)), d)


def active(d: Dialect) -> Script[list[CommandRow]]:
    """Every command not in a final state, oldest first."""
    rows = yield Query(
        f"SELECT {COMMAND_COLUMNS} {COMMAND_FROM} WHERE c.state IN ('pending', 'sent') "
        "ORDER BY c.created_us, c.id"
    )
    return _rows(rows, d)


def _rows(rows: Sequence[Row], d: Dialect) -> list[CommandRow]:
    return [command_row(tuple(r), loads=d.json_loads) for r in rows]
