"""Command rows in SQLite: the statements behind the store's command methods.

Functions of a connection, called inside the caller's transaction: the writer applies device acks
within an ingest batch's transaction and API transitions in one of their own.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from fieldhub.protocol.command_states import CommandState
from fieldhub.store.base import CommandOutcome, CommandRow, CommandTransition
from fieldhub.store.command_rows import (
    COMMAND_COLUMNS,
    COMMAND_FROM,
    command_row,
    pending_row,
    plan_transition,
)

COLUMNS = COMMAND_COLUMNS
FROM = COMMAND_FROM


def row_of(row: tuple[Any, ...], history: tuple[CommandTransition, ...] = ()) -> CommandRow:
    """A CommandRow from a row selected with COLUMNS (JSON columns stored as text)."""
    return command_row(row, history, loads=orjson.loads)


def history_of(conn: sqlite3.Connection, command_pk: int) -> tuple[CommandTransition, ...]:
    """A command's transitions, oldest first."""
    return tuple(
        CommandTransition(CommandState(state), at_us, detail)
        for state, at_us, detail in conn.execute(
            "SELECT state, at_us, detail FROM command_history WHERE command_id = ? ORDER BY seq",
            (command_pk,),
        )
    )


def insert(
    conn: sqlite3.Connection, device_pk: int, command: CommandRow, detail: str
) -> CommandRow | None:
    """Insert a pending command and its first history entry; None when the id is taken."""
    cursor = conn.execute(
        "INSERT INTO commands (device_id, uid, name, params, format, topic, state, created_us, "
        "updated_us, timeout_s, expires_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (device_id, uid) DO NOTHING RETURNING id",
        (
            device_pk,
            command.command_id,
            command.name,
            orjson.dumps(command.params).decode(),
            command.format,
            command.topic,
            CommandState.PENDING.value,
            command.created_us,
            command.created_us,
            command.timeout_s,
            command.expires_us,
        ),
    )
    found = cursor.fetchone()
    if found is None:
        return None
    row = pending_row(command, detail)
    (entry,) = row.history
    conn.execute(
        "INSERT INTO command_history (command_id, seq, state, at_us, detail) "
        "VALUES (?, 1, ?, ?, ?)",
        (found[0], entry.state.value, entry.at_us, entry.detail),
    )
    return row


def transition(
    conn: sqlite3.Connection,
    device_pk: int,
    command_id: str,
    target: CommandState,
    at_us: int,
    outcome: CommandOutcome,
) -> CommandRow | None:
    """Apply one transition if the table allows it from the stored state (plan_transition)."""
    found = conn.execute(
        f"SELECT c.id, {COLUMNS} {FROM} WHERE c.device_id = ? AND c.uid = ?",
        (device_pk, command_id),
    ).fetchone()
    if found is None:
        return None
    command_pk = found[0]
    row = plan_transition(row_of(tuple(found)[1:]), target, at_us, outcome)
    if row is None:
        return None
    conn.execute(
        "UPDATE commands SET state = ?, updated_us = ?, sent_us = ?, finished_us = ?, "
        "result = ?, error = ?, decided_by = ? WHERE id = ?",
        (
            row.state.value,
            row.updated_us,
            row.sent_us,
            row.finished_us,
            orjson.dumps(row.result).decode() if row.result is not None else None,
            row.error,
            row.decided_by,
            command_pk,
        ),
    )
    (last_seq,) = conn.execute(
        "SELECT coalesce(max(seq), 0) FROM command_history WHERE command_id = ?", (command_pk,)
    ).fetchone()
    conn.executemany(
        "INSERT INTO command_history (command_id, seq, state, at_us, detail) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            (command_pk, last_seq + i + 1, step.state.value, step.at_us, step.detail)
            for i, step in enumerate(row.history)
        ],
    )
    return row


def get(conn: sqlite3.Connection, device_uid: str, command_id: str) -> CommandRow | None:
    """One command with its history."""
    found = conn.execute(
        f"SELECT c.id, {COLUMNS} {FROM} WHERE d.uid = ? AND c.uid = ?", (device_uid, command_id)
    ).fetchone()
    if found is None:
        return None
    return row_of(tuple(found)[1:], history_of(conn, found[0]))


def page(
    conn: sqlite3.Connection,
    device_uid: str,
    state: CommandState | None,
    limit: int,
    before: tuple[int, str] | None,
) -> list[CommandRow]:
    """A device's commands, newest first."""
    sql = f"SELECT {COLUMNS} {FROM} WHERE d.uid = ?"
    args: list[Any] = [device_uid]
    if state is not None:
        sql += " AND c.state = ?"
        args.append(state.value)
    if before is not None:
        sql += " AND (c.created_us, c.uid) < (?, ?)"
        args += list(before)
    sql += " ORDER BY c.created_us DESC, c.uid DESC LIMIT ?"
    args.append(limit)
    return [row_of(tuple(row)) for row in conn.execute(sql, args)]


def active(conn: sqlite3.Connection) -> list[CommandRow]:
    """Commands not yet final, oldest first."""
    return [
        row_of(tuple(row))
        for row in conn.execute(
            f"SELECT {COLUMNS} {FROM} WHERE c.state IN ('pending', 'sent') "
            "ORDER BY c.created_us, c.id"
        )
    ]
