"""Statements as data: what the shared store core asks an engine to run.

The core writes every store operation once, as a *script*: a generator that yields operations and
is sent back their rows (`rows = yield Query(...)`). It performs no I/O itself, so the same
script runs synchronously on SQLite's writer thread and awaited on a PostgreSQL connection; an
engine only knows how to run each kind of operation (`sqlite.py`, `postgres.py`). This is the
sans-I/O split the protocol package already follows, applied to SQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fieldhub.store.types import StoreError

T = TypeVar("T")

# A result row: sqlite3 rows and asyncpg records are both read by position.
Row = Sequence[Any]


@dataclass(frozen=True, slots=True)
class Query:
    """One statement with its parameters (placeholders from `dialect.Params`); the script is
    sent its rows (empty for a statement that returns none)."""

    sql: str
    args: Sequence[object] = ()


@dataclass(frozen=True, slots=True)
class Count:
    """A statement that changes rows; the script is sent `[(rows it changed,)]`."""

    sql: str
    args: Sequence[object] = ()


@dataclass(frozen=True, slots=True)
class Many:
    """One statement run once per parameter tuple (executemany); the script is sent `[]`."""

    sql: str
    rows: Sequence[Sequence[object]]


@dataclass(frozen=True, slots=True)
class Bulk:
    """`head <rows> tail` over many rows in as few statements as the engine allows; the script
    is sent what RETURNING gave for all of them.

    The engine writes `<rows>`: SQLite a multi-row `VALUES (?, ...), (...)` (in chunks, one
    statement step per chunk), PostgreSQL `SELECT * FROM unnest($1::type[], ...)` with `types`,
    the PostgreSQL type of each column (one statement, arrays as parameters).
    """

    head: str
    tail: str
    types: tuple[str, ...]
    rows: Sequence[Sequence[object]]
    # Rows that may be staged by COPY (PostgreSQL, large batches; see `Staging`).
    staging: Staging | None = None


@dataclass(frozen=True, slots=True)
class Staging:
    """A Bulk whose rows are whole rows of `table`'s `columns`: an engine may load them into a
    temporary copy of the table with its bulk-load path and run `head SELECT ... tail` from
    there, the same statement's effect (PostgreSQL's COPY, faster than arrays for thousands)."""

    table: str
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Statements:
    """Several statements in one text without parameters (a schema migration). SQLite runs them
    one by one (its `execute` takes one statement); PostgreSQL sends the text as it is."""

    sql: str


Op = Query | Count | Many | Bulk | Statements
Script = Generator[Op, list[Row], T]


def run_sync(script: Script[T], execute: Callable[[Op], list[Row]]) -> T:
    """Drive `script` with `execute(op)` (a synchronous engine). A StoreError from `execute` is
    raised inside the script, at its `yield`, so a script can say what it was doing."""
    try:
        op = next(script)
        while True:
            try:
                rows = execute(op)
            except StoreError as exc:
                op = script.throw(exc)
            else:
                op = script.send(rows)
    except StopIteration as done:
        result: T = done.value
        return result


async def run_async(script: Script[T], execute: Callable[[Op], Awaitable[list[Row]]]) -> T:
    """Drive `script` with `await execute(op)` (an asynchronous engine); errors as `run_sync`."""
    try:
        op = next(script)
        while True:
            try:
                rows = await execute(op)
            except StoreError as exc:
                op = script.throw(exc)
            else:
                op = script.send(rows)
    except StopIteration as done:
        result: T = done.value
        return result
