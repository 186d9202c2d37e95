"""The few places where SQLite's and PostgreSQL's SQL differ, as data.

Everything else the store says is the same text on both engines: placeholders are numbered
(`?1` in SQLite, `$1` in PostgreSQL, both reusable), `TRUE`, `CAST(... AS BIGINT)`, row values,
`ON CONFLICT ... DO UPDATE`, `RETURNING` and `WITH v(...) AS (...) UPDATE ... FROM v` mean the
same in both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson


def _identity(value: Any) -> Any:
    return value


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


@dataclass(frozen=True, slots=True)
class Dialect:
    """One engine's spelling of what differs."""

    name: str
    # The placeholder of the n-th parameter (1-based).
    mark: Callable[[int], str]
    # Two-argument min and max (SQLite's scalar min/max, PostgreSQL's LEAST/GREATEST).
    least: str
    greatest: str
    # Appended to text ORDER BY / comparisons so PostgreSQL sorts bytewise as SQLite does.
    collate: str
    # A JSON value as the driver returns it -> Python (SQLite: text; asyncpg's codec decodes).
    json_loads: Callable[[Any], Any]
    # A Python value -> a JSON parameter (SQLite: text; asyncpg's codec encodes).
    json_param: Callable[[object], object]
    # `column` as text for LIKE (a JSON column).
    json_text: Callable[[str], str]
    # The JSON object `column` merged with the parameter `mark` by RFC 7396 (a null removes).
    json_merge: Callable[[str, str], str]
    # `column` is one of the values of the array parameter `mark` (see `Params.array`).
    in_array: Callable[[str, str, str], str]
    # `column` is one of the ids a subquery returns.
    in_subquery: Callable[[str, str], str]
    # The latest reading of each `device_metrics dm` series as `r(ts, value)`.
    latest_join: str
    # ` FOR UPDATE OF table`: locks the selected rows of `table` until commit where concurrent
    # writers exist (SQLite has one writer and no row locks: nothing).
    lock_rows: Callable[[str], str]
    # A statement taking the migration lock for the transaction (None: one writer, no lock).
    lock_migrations: str | None
    # Converts an array parameter's values (SQLite: one JSON text; asyncpg: a list).
    array_param: Callable[[Sequence[object]], object]
    # Whether the engine has one writer at a time (SQLite's BEGIN IMMEDIATE): nothing can write
    # between a statement of a transaction and the next, so a batch may look for the readings
    # already stored and then insert the rest (writes.py, `_readings_staged`).
    one_writer: bool
    # The table of readings stored but not yet in the rollups (SQLite folds it in every second:
    # writes.py, `fold_rollups`), which series reads add to the rollups' rows; None where each
    # batch updates the rollups itself (PostgreSQL).
    pending_rollups: str | None


SQLITE = Dialect(
    name="sqlite",
    mark=lambda n: f"?{n}",
    least="min",
    greatest="max",
    collate="",
    json_loads=orjson.loads,
    json_param=_json_text,
    json_text=lambda column: column,
    json_merge=lambda column, mark: f"json_patch({column}, {mark})",
    # One JSON array parameter whatever the number of values: no statement per length, no
    # bound-parameter limit.
    in_array=lambda column, mark, _type: f"{column} IN (SELECT value FROM json_each({mark}))",
    in_subquery=lambda column, query: f"{column} IN ({query})",
    # max(ts) per series is one seek on the readings primary key.
    latest_join=(
        "JOIN readings r ON r.device_id = dm.device_id AND r.metric_id = dm.metric_id "
        "AND r.ts = (SELECT max(ts) FROM readings x "
        "WHERE x.device_id = dm.device_id AND x.metric_id = dm.metric_id) "
    ),
    lock_rows=lambda _table: "",
    lock_migrations=None,
    array_param=_json_text,
    one_writer=True,
    pending_rollups="rollup_pending",
)

# Serialises migrations and partition changes when several fieldhub processes share a database.
POSTGRES_MIGRATION_LOCK_KEY = 0x6669656C64687562  # "fieldhub"

POSTGRES = Dialect(
    name="postgresql",
    mark=lambda n: f"${n}",
    least="LEAST",
    greatest="GREATEST",
    collate=' COLLATE "C"',
    json_loads=_identity,
    json_param=_identity,
    json_text=lambda column: f"{column}::text",
    # `||` merges; stripping nulls afterwards makes it RFC 7396's merge patch, as json_patch.
    json_merge=lambda column, mark: f"jsonb_strip_nulls({column} || {mark}::jsonb)",
    in_array=lambda column, mark, sql_type: f"{column} = ANY({mark}::{sql_type}[])",
    # ANY(ARRAY(...)): the ids become one array that the primary key is searched with, once per
    # id, whatever the planner would estimate for a join with the set.
    in_subquery=lambda column, query: f"{column} = ANY(ARRAY({query}))",
    # On a partitioned table the SQLite form plans as a join over every partition.
    latest_join=(
        "JOIN LATERAL (SELECT x.ts, x.value FROM readings x WHERE x.device_id = dm.device_id "
        "AND x.metric_id = dm.metric_id ORDER BY x.ts DESC LIMIT 1) r ON TRUE "
    ),
    lock_rows=lambda table: f" FOR UPDATE OF {table}",
    lock_migrations=f"SELECT pg_advisory_xact_lock({POSTGRES_MIGRATION_LOCK_KEY})",
    array_param=list,
    one_writer=False,
    pending_rollups=None,
)


class Params:
    """Collects a statement's parameters as its text is written: `p(value)` adds one and returns
    its placeholder, so a clause and its value are written together and only what the statement
    uses is passed (PostgreSQL refuses a parameter it cannot type from its use)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.values: list[object] = []

    def __call__(self, value: object) -> str:
        self.values.append(value)
        return self.dialect.mark(len(self.values))

    def array(self, column: str, values: Sequence[object], sql_type: str) -> str:
        """`column` is one of `values` (`sql_type`: the PostgreSQL element type)."""
        return self.dialect.in_array(column, self(self.dialect.array_param(values)), sql_type)

    def named(self, values: dict[str, object]) -> Callable[[str], str]:
        """A `ph(name)` for SQL builders that name their parameters (rollups.partials_sql):
        each name is added once, when first used."""
        marks: dict[str, str] = {}

        def ph(name: str) -> str:
            if name not in marks:
                marks[name] = self(values[name])
            return marks[name]

        return ph
