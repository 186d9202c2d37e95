"""Statements as data (store/ops.py, store/dialect.py): the script drivers and parameter
placeholders without a store, and real store scripts on a bare in-memory SQLite connection."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import orjson
import pytest

from fieldhub.protocol.messages import CommandReply
from fieldhub.store import reads, writes
from fieldhub.store.dialect import POSTGRES, SQLITE, Dialect, Params
from fieldhub.store.ops import Count, Many, Op, Query, Row, Script, run_async, run_sync
from fieldhub.store.plan import WriterCaches
from fieldhub.store.sqlite import _execute
from fieldhub.store.sqlite_schema import MIGRATIONS
from fieldhub.store.types import DeadLetter, ReadingRow, StoreError, WriteBatch
from support.store_rows import T0, S, msg

T = TypeVar("T")
Execute = Callable[[Op], list[Row]]
Answers = Mapping[str, list[Row] | StoreError]


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> str:
    """Which driver runs the script: `run_sync` or `run_async`."""
    name: str = request.param
    return name


async def drive(driver: str, script: Script[T], execute: Execute) -> T:
    """Run `script` with the chosen driver; the async one awaits around every operation."""
    if driver == "sync":
        return run_sync(script, execute)

    async def execute_async(op: Op) -> list[Row]:
        await asyncio.sleep(0)
        return execute(op)

    return await run_async(script, execute_async)


def engine(answers: Answers, seen: list[Op]) -> Execute:
    """An engine that records each operation and answers it by its SQL: rows, or an error."""

    def execute(op: Op) -> list[Row]:
        seen.append(op)
        assert isinstance(op, Query | Count)
        answer = answers[op.sql]
        if isinstance(answer, StoreError):
            raise answer
        return answer

    return execute


# -- the drivers -------------------------------------------------------------------------------


async def test_driver_sends_each_ops_rows_back_and_returns_the_value(driver: str) -> None:
    """Each yield receives its own operation's rows; the script's return value is the result."""

    def script() -> Script[tuple[list[str], int]]:
        names = [row[0] for row in (yield Query("SELECT name", ("a",)))]
        ((changed,),) = yield Count("DELETE", (1,))
        return names, changed

    seen: list[Op] = []
    answers: Answers = {"SELECT name": [("x",), ("y",)], "DELETE": [(3,)]}

    assert await drive(driver, script(), engine(answers, seen)) == (["x", "y"], 3)
    assert seen == [Query("SELECT name", ("a",)), Count("DELETE", (1,))]


async def test_script_without_operations_returns_at_once(driver: str) -> None:
    """A script that returns before its first yield never reaches the engine."""

    def script() -> Script[int]:
        yield from ()  # a generator all the same
        return 7

    seen: list[Op] = []

    assert await drive(driver, script(), engine({}, seen)) == 7
    assert seen == []


async def test_store_error_is_raised_at_the_yield_so_the_script_can_wrap_it(driver: str) -> None:
    """The engine's StoreError arrives at the failing yield; the script's own error goes out."""
    cause = StoreError("SQLite: no such table: b")
    reached: list[str] = []

    def script() -> Script[None]:
        yield Query("first")
        try:
            yield Query("second")
        except StoreError as exc:
            reached.append("caught")
            raise StoreError(f"copying b failed: {exc}") from exc
        reached.append("after")  # never: the error came in at the yield
        yield Query("third")

    seen: list[Op] = []
    with pytest.raises(StoreError, match=r"^copying b failed: SQLite: no such table: b$") as info:
        await drive(driver, script(), engine({"first": [], "second": cause}, seen))

    assert info.value.__cause__ is cause
    assert reached == ["caught"]
    assert seen == [Query("first"), Query("second")]


async def test_a_script_that_catches_the_error_goes_on(driver: str) -> None:
    """The operation yielded from the handler runs next, and its rows come back to the script."""

    def script() -> Script[str]:
        try:
            rows = yield Query("new")
        except StoreError:
            rows = yield Query("old")
        return str(rows[0][0])

    seen: list[Op] = []
    answers: Answers = {"new": StoreError("no such column"), "old": [("from old",)]}

    assert await drive(driver, script(), engine(answers, seen)) == "from old"
    assert seen == [Query("new"), Query("old")]


async def test_an_uncaught_store_error_propagates_from_the_driver(driver: str) -> None:
    """A script that does not catch it lets the engine's own error out, and stops there."""
    error = StoreError("disk I/O error")

    def script() -> Script[int]:
        yield Query("one")
        yield Query("two")
        yield Query("three")
        return 1

    seen: list[Op] = []
    running = script()
    with pytest.raises(StoreError) as info:
        await drive(driver, running, engine({"one": [], "two": error, "three": []}, seen))

    assert info.value is error
    assert seen == [Query("one"), Query("two")]
    assert inspect.getgeneratorstate(running) == inspect.GEN_CLOSED  # finished, not suspended


async def test_scripts_compose_with_yield_from(driver: str) -> None:
    """A sub-script's rows, errors and return value pass through the script that delegates."""

    def lookup(name: str) -> Script[int | None]:
        try:
            rows = yield Query(f"id of {name}")
        except StoreError as exc:
            raise StoreError(f"looking up {name}: {exc}") from exc
        return int(rows[0][0]) if rows else None

    def script() -> Script[list[int | None]]:
        found = [(yield from lookup("a")), (yield from lookup("b"))]
        try:
            found.append((yield from lookup("c")))
        except StoreError as exc:
            errors.append(str(exc))
            found.append(-1)
        return found

    errors: list[str] = []

    seen: list[Op] = []
    answers: Answers = {"id of a": [(4,)], "id of b": [], "id of c": StoreError("locked")}

    assert await drive(driver, script(), engine(answers, seen)) == [4, None, -1]
    assert errors == ["looking up c: locked"]
    assert [op.sql for op in seen if isinstance(op, Query)] == ["id of a", "id of b", "id of c"]


# -- Params ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dialect", "marks"), [(SQLITE, "?1 ?2 ?3"), (POSTGRES, "$1 $2 $3")])
def test_params_number_placeholders_per_dialect(dialect: Dialect, marks: str) -> None:
    """Each value gets the next number in the dialect's spelling, and is kept in order."""
    p = Params(dialect)

    assert " ".join([p("a"), p(2), p(None)]) == marks
    assert p.values == ["a", 2, None]


@pytest.mark.parametrize(("dialect", "prefix"), [(SQLITE, "?"), (POSTGRES, "$")])
def test_named_adds_each_name_once_when_first_used(dialect: Dialect, prefix: str) -> None:
    """A name used twice is one parameter; an unused name is not passed."""
    p = Params(dialect)
    first = p("x")
    ph = p.named({"start": 10, "end": 20, "unused": 30})

    assert [first, ph("end"), ph("start"), ph("end")] == [f"{prefix}{n}" for n in (1, 2, 3, 2)]
    assert p.values == ["x", 20, 10]


def test_array_in_sqlite_is_one_json_text_parameter() -> None:
    """SQLite reads the values from one JSON array through json_each."""
    p = Params(SQLITE)
    p("x")

    assert p.array("d.uid", ("a", 'b"c'), "text") == "d.uid IN (SELECT value FROM json_each(?2))"
    assert p.values[1] == '["a","b\\"c"]'
    assert orjson.loads(str(p.values[1])) == ["a", 'b"c']


def test_array_in_postgres_is_a_typed_array_parameter() -> None:
    """PostgreSQL compares with ANY of an array of the given type, passed as a list."""
    p = Params(POSTGRES)
    p("x")

    assert p.array("id", (3, 1), "bigint") == "id = ANY($2::bigint[])"
    assert p.values[1] == [3, 1]
    assert isinstance(p.values[1], list)


def test_sqlite_array_selects_exactly_its_values() -> None:
    """The SQLite form with its parameter picks the listed rows on a real connection."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (uid TEXT, n INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [("a", 1), ("b", 2), ("c", 3), ("d", 2)])
    p = Params(SQLITE)
    sql = f"SELECT uid FROM t WHERE n >= {p(2)} AND {p.array('uid', ['d', 'a', 'b'], 'text')}"

    assert sorted(row[0] for row in conn.execute(sql, p.values)) == ["b", "d"]


# -- real scripts on a bare SQLite connection --------------------------------------------------


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    """An empty in-memory database in autocommit mode."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    yield connection
    connection.close()


def run(conn: sqlite3.Connection, script: Script[T]) -> T:
    """Run a store script with the SQLite engine's own operation runner, no store around it."""
    return run_sync(script, lambda op: _execute(conn, op))


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration, one step per call as the store does; the versions applied."""
    applied = []
    while (version := run(conn, writes.migrate_step(SQLITE, MIGRATIONS, ":memory:"))) is not None:
        applied.append(version)
    return applied


def test_migrations_apply_one_per_step_then_report_up_to_date(conn: sqlite3.Connection) -> None:
    """Each step applies the next migration and records it; then steps report None."""
    assert migrate(conn) == [version for version, _, _ in MIGRATIONS]
    assert run(conn, writes.migrate_step(SQLITE, MIGRATIONS, ":memory:")) is None
    recorded = conn.execute("SELECT version, description FROM schema_migrations ORDER BY version")
    assert recorded.fetchall() == [(version, text) for version, text, _ in MIGRATIONS]


def test_a_failing_migration_is_named_in_the_error(conn: sqlite3.Connection) -> None:
    """migrate_step catches the engine's StoreError at its yield and says which migration failed."""
    broken = [(1, "table a", "CREATE TABLE a (x)"), (2, "table b", "CREATE TABLE b (x); NOT SQL")]

    assert run(conn, writes.migrate_step(SQLITE, broken, "t.db")) == 1
    with pytest.raises(StoreError, match=r"^migration 2 \(table b\) failed: SQLite: ") as info:
        run(conn, writes.migrate_step(SQLITE, broken, "t.db"))

    assert isinstance(info.value.__cause__, StoreError)
    assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,)]


def test_a_newer_schema_is_refused(conn: sqlite3.Connection) -> None:
    """A database recorded at a version this fieldhub does not know is not touched."""
    migrate(conn)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")

    with pytest.raises(StoreError, match=r"^t\.db has schema version 99, newer than this"):
        run(conn, writes.migrate_step(SQLITE, MIGRATIONS, "t.db"))


def test_write_and_read_scripts_run_without_the_store(conn: sqlite3.Connection) -> None:
    """write_batch, the read scripts and load_caches work on a bare connection, and the caches
    a batch's delta teaches agree with what load_caches reads back."""
    migrate(conn)
    caches = run(conn, writes.load_caches())
    assert caches == WriterCaches()
    late = CommandReply("dev-2", "native", "c-9", True, None, None, T0)
    batch = WriteBatch(
        decoded=[
            msg("dev-1", T0 + 5, [("temp", T0, 21.5), ("hum", T0, 40.0)], presence="online"),
            msg("dev-1", T0 + 6, [("temp", T0 + S, 22.0)], attributes={"fw": "1.2"}),
            msg("dev-2", T0 + 7, [("temp", T0, 18.0)], profile="readings"),
        ],
        dead_letters=[DeadLetter("devices/x/telemetry", b"{", "malformed_json", "eof", T0)],
        command_replies=[late],
    )

    result, delta = run(conn, writes.write_batch(SQLITE, batch, caches, {"readings": 90}))
    caches.apply(delta)

    assert result.new_devices == ["dev-1", "dev-2"]
    assert (result.readings_written, result.readings_duplicate) == (4, 0)
    assert (result.dead_letters, result.late_replies) == (1, 1)
    assert run(
        conn,
        reads.query_readings(
            SQLITE,
            "dev-1",
            metrics=None,
            start_us=None,
            end_us=None,
            limit=10,
            after=None,
            descending=False,
        ),
    ) == [
        ReadingRow("hum", T0, 40.0, T0 + 5),
        ReadingRow("temp", T0, 21.5, T0 + 5),
        ReadingRow("temp", T0 + S, 22.0, T0 + 6),
    ]
    device = run(conn, reads.get_device(SQLITE, "dev-1", T0 + 6))
    assert device is not None
    assert (device.presence, device.last_seen_us, device.attributes) == (
        "online",
        T0 + 6,
        {"fw": "1.2"},
    )
    other = run(conn, reads.get_device(SQLITE, "dev-2", T0 + 7))
    assert other is not None
    assert (other.profile, other.stale_after_s) == ("readings", 90)
    assert run(conn, reads.count_dead_letters(SQLITE, T0)) == 1
    loaded = run(conn, writes.load_caches())
    assert (loaded.devices, loaded.metrics, loaded.series, loaded.presence) == (
        caches.devices,
        caches.metrics,
        caches.series,
        caches.presence,
    )
    assert sorted(loaded.devices) == ["dev-1", "dev-2"]
    assert len(loaded.series) == 3


def test_many_and_count_on_a_bare_connection(conn: sqlite3.Connection) -> None:
    """Many runs once per parameter tuple and sends no rows; Count sends the rows it changed."""

    def script() -> Script[tuple[list[Row], list[Row], list[Row]]]:
        yield Query("CREATE TABLE t (a INTEGER, b TEXT)")
        many = yield Many("INSERT INTO t VALUES (?1, ?2)", [(1, "x"), (2, "y"), (3, "x")])
        count = yield Count("DELETE FROM t WHERE b = ?1", ("x",))
        return many, count, (yield Query("SELECT a, b FROM t"))

    assert run(conn, script()) == ([], [(2,)], [(2, "y")])
