"""`fieldhub migrate`: a SQLite installation copied into an empty PostgreSQL database.

The source is written through the Store interface, migrated, and the target is then read through
the same interface: every query answers as the source did, and the target keeps working
(new devices, metrics, dead letters and commands get fresh ids). Refusals write nothing. A few
runs go through the real `fieldhub migrate` command for its output and exit codes.
"""

from __future__ import annotations

import math
import sqlite3
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import CommandReply, Decoded
from fieldhub.store import DeadLetter, Store, StoreError, WriteBatch, open_store
from fieldhub.store.migrate import (
    TABLES,
    MigrationRefused,
    MigrationResult,
    SeriesCheck,
    SeriesStats,
    check_urls,
    migrate_sqlite_to_postgres,
)
from fieldhub.store.types import CommandOutcome, CommandRow
from support.fieldhub_process import FIELDHUB
from support.postgres import PostgresServer
from support.store_rows import T0, S, msg

DAY = 86_400 * S
# Lands in no monthly partition: older than migrate's PARTITION_HISTORY_MONTHS before now.
ANCIENT = 978_307_200 * S  # 2001-01-01T00:00:00Z
# Months of readings before T0 (2023-11-14): three months of the source's history.
MONTHS_AGO = (0, 35, 70)
NOW = int(datetime.now(tz=UTC).timestamp()) * S
DEVICES = ("dev-1", "dev-2", "gw-1")
METRICS = ("humidity", "temperature")


def _command(device: str, command_id: str, created_us: int) -> CommandRow:
    return CommandRow(
        device_id=device,
        command_id=command_id,
        name="set_window",
        params={"position": 40, "nested": {"speed": [1, 2.5, None], "label": "Fenster ö"}},
        format="native",
        topic=f"devices/{device}/commands",
        state=CommandState.PENDING,
        created_us=created_us,
        updated_us=created_us,
        timeout_s=12.5,
        expires_us=created_us + 3600 * S,
    )


def _letter(n: int, device: str | None) -> DeadLetter:
    return DeadLetter(
        topic=f"devices/{device or 'unknown'}/telemetry",
        payload=bytes([0, 255, n]) + b'{"temp": NaN}',
        reason="malformed_json",
        detail=f"letter {n}",
        received_us=T0 + n * S,
        device_id=device,
        profile=None if device is None else "native",
    )


async def populate(store: Store) -> None:
    """Devices of two profiles with attributes, readings over several months (one of them in
    2001, one now), presence changes, dead letters, retained digests and commands."""
    batch: list[Decoded] = []
    for days_ago in MONTHS_AGO:
        at = T0 - days_ago * DAY
        for i in range(30):
            ts = at + i * 60 * S
            for n, device in enumerate(DEVICES):
                batch.append(
                    msg(
                        device,
                        ts + n,
                        [(m, ts, 20.0 + i * 0.1 + k + n / 3) for k, m in enumerate(METRICS)],
                        profile="readings" if device.startswith("gw") else "native",
                    )
                )
    await store.write_batch(WriteBatch(decoded=batch))
    await store.write_batch(
        WriteBatch(
            decoded=[
                msg("dev-1", T0 + S, [("temperature", ANCIENT, -40.5)]),
                msg("dev-2", NOW, [("humidity", NOW, 55.5)]),
                msg(
                    "dev-1",
                    T0 + 2 * S,
                    attributes={"fw": "1.2.3", "rssi": -61, "ratio": 0.1 + 0.2, "ok": True},
                    presence="online",
                ),
                replace(
                    msg("gw-1", T0 + 3 * S, attributes={"site": "Nord ü"}, profile="readings"),
                    command_format="fastapi",
                    topic_id="GW1",
                ),
                msg("dev-2", T0 + 4 * S, presence="online"),
            ],
            dead_letters=[_letter(n, "dev-1" if n % 2 else None) for n in range(5)],
            retained_digests={"devices/dev-1/status": b"\x00\x01digest", "gw/gw-1": b"\xff"},
        )
    )
    await store.write_batch(WriteBatch(decoded=[msg("dev-2", T0 + 9 * S, presence="offline")]))
    for n, device in enumerate(("dev-1", "dev-1", "dev-2")):
        assert await store.insert_command(_command(device, f"c-{n}", T0 + n * S), "accepted")
    assert await store.transition_command(
        "dev-1", "c-0", CommandState.SENT, T0 + 10 * S, CommandOutcome("broker acked", "mqtt")
    )
    await store.write_batch(
        WriteBatch(
            command_replies=[
                CommandReply("dev-1", "native", "c-0", True, {"position": 40}, None, T0 + 11 * S)
            ]
        )
    )
    assert await store.transition_command(
        "dev-2", "c-2", CommandState.CANCELLED, T0 + 12 * S, CommandOutcome("user", "api")
    )


@pytest.fixture
def target_url(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


async def _sqlite_source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/old/fieldhub.db"
    store = open_store(url)
    await store.open()
    try:
        await populate(store)
    finally:
        await store.close()
    return url


@pytest_asyncio.fixture(loop_scope="function")
async def source_url(tmp_path: Path) -> str:
    return await _sqlite_source(tmp_path)


async def snapshot(store: Store) -> dict[str, object]:
    """Everything the Store interface answers about the populated data."""
    out: dict[str, object] = {
        "devices": await store.list_devices(
            profile=None, presence=None, search=None, limit=100, after=None, now_us=T0 + 60 * S
        ),
        "count_online": await store.count_devices(
            profile=None, presence="online", search=None, now_us=T0 + 60 * S
        ),
        "search": await store.count_devices(
            profile=None, presence=None, search="Nord", now_us=T0 + 60 * S
        ),
        "latest": await store.latest_values(list(DEVICES)),
        "dead_letters": await store.list_dead_letters(
            limit=100, before_id=None, reason=None, device_id=None
        ),
        "dead_letters_dev1": await store.list_dead_letters(
            limit=100, before_id=None, reason=None, device_id="dev-1"
        ),
        "dead_letter_count": await store.count_dead_letters(since_us=T0 + 2 * S),
        "digests": await store.retained_digests(),
        "active": await store.active_commands(),
    }
    for device in DEVICES:
        out[f"get {device}"] = await store.get_device(device, now_us=T0 + 60 * S)
        out[f"metrics {device}"] = await store.device_metrics(device)
        out[f"readings {device}"] = await store.query_readings(
            device,
            metrics=None,
            start_us=None,
            end_us=None,
            limit=10_000,
            after=None,
            descending=False,
        )
        out[f"presence {device}"] = await store.presence_history(
            device, start_us=T0, end_us=T0 + DAY, limit=10
        )
        out[f"commands {device}"] = await store.list_commands(
            device, state=None, limit=100, before=None
        )
        out[f"time rows {device}"] = await store.query_time_rows(
            device,
            "temperature",
            with_metrics=["humidity"],
            start_us=None,
            end_us=None,
            limit=1000,
            before_us=None,
        )
        for metric in METRICS:
            for interval, agg in ((60 * S, "avg"), (3600 * S, "sum"), (DAY, "last")):
                out[f"series {device} {metric} {interval} {agg}"] = await store.query_series(
                    device,
                    metric,
                    start_us=T0 - 100 * DAY,
                    end_us=T0 + DAY,
                    interval_us=interval,
                    agg=agg,  # type: ignore[arg-type]
                )
    for device, command_id in (("dev-1", "c-0"), ("dev-1", "c-1"), ("dev-2", "c-2")):
        out[f"command {device} {command_id}"] = await store.get_command(device, command_id)
    return out


async def _opened(url: str) -> Store:
    store = open_store(url)
    await store.open()
    return store


async def test_the_target_answers_every_query_as_the_source_did(
    source_url: str, target_url: str
) -> None:
    result = await migrate_sqlite_to_postgres(source_url, target_url)
    assert result.ok, result
    source, target = await _opened(source_url), await _opened(target_url)
    try:
        before, after = await snapshot(source), await snapshot(target)
    finally:
        await source.close()
        await target.close()
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    # The data is really there (not two empty answers agreeing).
    assert len(after["devices"]) == len(DEVICES)  # type: ignore[arg-type]
    assert all(
        after[f"series {device} {metric} {3600 * S} sum"]
        for device in DEVICES
        for metric in METRICS
    )
    command = after["command dev-1 c-0"]
    assert isinstance(command, CommandRow)
    assert command.state is CommandState.SUCCEEDED
    assert command.result == {"position": 40}
    assert [h.state for h in command.history] == [
        CommandState.PENDING,
        CommandState.SENT,
        CommandState.SUCCEEDED,
    ]
    assert len(after["readings dev-1"]) == 2 * 30 * len(MONTHS_AGO) + 1  # type: ignore[arg-type]
    assert after["digests"] == {"devices/dev-1/status": b"\x00\x01digest", "gw/gw-1": b"\xff"}


async def test_counts_per_table_match_and_series_are_compared(
    source_url: str, target_url: str
) -> None:
    result = await migrate_sqlite_to_postgres(source_url, target_url)
    counts = {c.table: (c.source, c.target) for c in result.counts}
    assert set(counts) == {t.name for t in TABLES}
    assert all(source == target for source, target in counts.values()), counts
    assert counts["readings"][0] == len(DEVICES) * len(METRICS) * 30 * len(MONTHS_AGO) + 2
    assert counts["devices"][0] == len(DEVICES)
    assert counts["dead_letters"][0] == 5
    assert counts["command_history"][0] == 3 + 1 + 2  # succeeded, pending, cancelled
    assert counts["presence_events"][0] == 3
    assert result.series_total == len(DEVICES) * len(METRICS)
    assert len(result.series) == result.series_total  # fewer than the sample: all compared
    assert all(s.ok and s.source.count > 0 for s in result.series)


async def test_readings_land_in_monthly_partitions_and_the_ancient_one_in_default(
    source_url: str, target_url: str
) -> None:
    result = await migrate_sqlite_to_postgres(source_url, target_url)
    months = {f"readings_p{datetime.fromtimestamp((T0 - d * DAY) / S, UTC):%Y%m}" for d in (0, 70)}
    assert months <= set(result.partitions_created)
    conn = await asyncpg.connect(target_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM readings_default") == 1
        assert await conn.fetchval("SELECT ts FROM readings_default") == ANCIENT
        for name in months:
            assert await conn.fetchval(f"SELECT count(*) FROM {name}") > 0
        # The reading of now sits in the store's own partition for this month.
        now_part = f"readings_p{datetime.fromtimestamp(NOW / S, UTC):%Y%m}"
        assert await conn.fetchval(f"SELECT count(*) FROM {now_part}") == 1
    finally:
        await conn.close()


async def _indexes(url: str) -> set[tuple[str, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'public'::regnamespace "
            "AND NOT c.relispartition"
        )
        constraints = await conn.fetch(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace AND contype IN ('p', 'u') "
            "AND conrelid IN (SELECT oid FROM pg_class WHERE NOT relispartition)"
        )
    finally:
        await conn.close()
    return {(r[0], r[1]) for r in rows} | {(r[0], r[1]) for r in constraints}


async def test_indexes_and_keys_are_rebuilt_as_the_store_makes_them(
    source_url: str, target_url: str, postgres_server: PostgresServer
) -> None:
    """The copy drops indexes and rebuilds them after loading: same names, same definitions."""
    await migrate_sqlite_to_postgres(source_url, target_url)
    fresh = postgres_server.new_database()
    await (await _opened(fresh)).close()
    assert await _indexes(target_url) == await _indexes(fresh)


async def test_writing_after_the_migration_gets_fresh_ids(source_url: str, target_url: str) -> None:
    await migrate_sqlite_to_postgres(source_url, target_url)
    store = await _opened(target_url)
    try:
        result = await store.write_batch(
            WriteBatch(
                decoded=[msg("dev-new", T0 + DAY, [("pressure", T0 + DAY, 1013.0)])],
                dead_letters=[_letter(9, "dev-new")],
            )
        )
        assert result.new_devices == ["dev-new"]
        assert await store.insert_command(_command("dev-new", "c-new", T0 + DAY), "accepted")
        newest = await store.list_dead_letters(limit=1, before_id=None, reason=None, device_id=None)
        assert (newest[0].id, newest[0].detail) == (6, "letter 9")
        assert await store.device_metrics("dev-new") != []
        got = await store.get_command("dev-new", "c-new")
        assert got is not None
        assert [h.state for h in got.history] == [CommandState.PENDING]
    finally:
        await store.close()
    conn = await asyncpg.connect(target_url)
    try:
        assert await conn.fetchval("SELECT id FROM devices WHERE uid = 'dev-new'") == 4
        assert await conn.fetchval("SELECT id FROM metrics WHERE name = 'pressure'") == 3
        assert await conn.fetchval("SELECT id FROM commands WHERE uid = 'c-new'") == 4
    finally:
        await conn.close()


async def test_deleted_dead_letter_ids_are_not_handed_out_again(
    source_url: str, target_url: str
) -> None:
    """SQLite's AUTOINCREMENT never reuses the id of a deleted newest row; neither does the
    target's sequence."""
    with sqlite3.connect(source_url.removeprefix("sqlite:///")) as conn:
        conn.execute("DELETE FROM dead_letters WHERE id = 5")
    await migrate_sqlite_to_postgres(source_url, target_url)
    store = await _opened(target_url)
    try:
        await store.write_batch(WriteBatch(dead_letters=[_letter(9, None)]))
        newest = await store.list_dead_letters(limit=1, before_id=None, reason=None, device_id=None)
        assert newest[0].id == 6
    finally:
        await store.close()


async def test_an_empty_installation_migrates(tmp_path: Path, target_url: str) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    await (await _opened(url)).close()
    result = await migrate_sqlite_to_postgres(url, target_url)
    assert result.ok
    assert result.rows == 0
    assert result.series == []


async def test_a_target_with_data_is_refused_and_left_alone(
    source_url: str, target_url: str
) -> None:
    store = await _opened(target_url)
    try:
        await store.write_batch(WriteBatch(decoded=[msg("already-here", T0)]))
    finally:
        await store.close()
    with pytest.raises(MigrationRefused, match=r"already holds fieldhub data \(rows in devices"):
        await migrate_sqlite_to_postgres(source_url, target_url)
    conn = await asyncpg.connect(target_url)
    try:
        assert await conn.fetchval("SELECT array_agg(uid) FROM devices") == ["already-here"]
        assert await conn.fetchval("SELECT count(*) FROM readings") == 0
    finally:
        await conn.close()


async def test_a_failed_copy_is_rolled_back_and_can_be_retried(
    source_url: str, target_url: str
) -> None:
    """A row PostgreSQL rejects (invalid JSON in SQLite's TEXT) fails the whole migration; the
    target is left empty, so once the source is fixed the same command succeeds."""
    path = source_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE commands SET params = '{not json' WHERE uid = 'c-1'")
    with pytest.raises(StoreError, match="copying commands failed"):
        await migrate_sqlite_to_postgres(source_url, target_url)
    conn2 = await asyncpg.connect(target_url)
    try:
        assert await conn2.fetchval("SELECT count(*) FROM devices") == 0
        assert await conn2.fetchval("SELECT count(*) FROM readings") == 0
    finally:
        await conn2.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE commands SET params = '{}' WHERE uid = 'c-1'")
    assert (await migrate_sqlite_to_postgres(source_url, target_url)).ok


class _WritesDuringCopy:
    """A progress hook that commits to the SQLite file while readings are being copied, as a
    fieldhub still running on it would."""

    def __init__(self, path: str) -> None:
        self.path = path

    def step(self, text: str) -> None:
        pass

    def table_started(self, table: str, rows: int) -> None:
        if table == "readings":
            with sqlite3.connect(self.path) as conn:
                conn.execute("UPDATE devices SET last_seen_us = last_seen_us + 1")

    def rows_copied(self, table: str, rows: int) -> None:
        pass

    def table_done(self, table: str, rows: int, seconds: float) -> None:
        pass

    def committed(self) -> None:
        pass


async def test_a_source_written_during_the_copy_is_reported(
    source_url: str, target_url: str
) -> None:
    progress = _WritesDuringCopy(source_url.removeprefix("sqlite:///"))
    result = await migrate_sqlite_to_postgres(source_url, target_url, progress=progress)
    assert result.source_changed
    assert not result.ok
    # The copy itself is the consistent snapshot taken at the start.
    assert all(c.ok for c in result.counts)


async def test_a_small_chunk_size_copies_the_same(source_url: str, target_url: str) -> None:
    """Many chunks per table (the prefetching path) give the same rows as one."""
    result = await migrate_sqlite_to_postgres(source_url, target_url, chunk_rows=7)
    assert result.ok, result


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("postgresql://u@h/db", "sqlite:///x.db", "wrong way round"),
        ("postgresql://u@h/a", "postgresql://u@h/b", "SOURCE 'postgresql://u@h/a' is not a SQLite"),
        ("/data/fieldhub.db", "postgresql://u@h/b", "is not a SQLite URL"),
        ("sqlite:///x.db", "sqlite:///y.db", "TARGET 'sqlite:///y.db' is not a PostgreSQL URL"),
        ("sqlite:///x.db", "mysql://u:secret@h/db", "TARGET 'mysql://u@h/db'"),
        ("sqlite:///", "postgresql://u@h/db", "write sqlite:///relative/file.db"),
    ],
)
def test_urls_of_the_wrong_kind_are_refused(source: str, target: str, message: str) -> None:
    with pytest.raises(MigrationRefused, match=message.replace("(", r"\(")) as refused:
        check_urls(source, target)
    assert "secret" not in str(refused.value)


async def test_a_missing_or_foreign_source_is_refused(tmp_path: Path, target_url: str) -> None:
    with pytest.raises(MigrationRefused, match="no SQLite database at"):
        await migrate_sqlite_to_postgres(f"sqlite:///{tmp_path}/nope.db", target_url)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(MigrationRefused, match="not a fieldhub SQLite database"):
        await migrate_sqlite_to_postgres(f"sqlite:///{foreign}", target_url)
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER, description, applied_us)")
        conn.execute("INSERT INTO schema_migrations VALUES (2, 'old', 0)")
    with pytest.raises(MigrationRefused, match=r"schema version 2.*fieldhub up --db"):
        await migrate_sqlite_to_postgres(f"sqlite:///{old}", target_url)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIELDHUB), "migrate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_migrates_with_progress_and_a_verification_table(
    source_url: str, target_url: str
) -> None:
    done = _cli(source_url, target_url)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    readings = len(DEVICES) * len(METRICS) * 30 * len(MONTHS_AGO) + 2
    # A line per table as it is copied, then the table of counts side by side.
    assert any(line.split()[:3] == ["readings", f"{readings:,}", "rows"] for line in lines)
    assert any(line.split() == ["readings", f"{readings:,}", f"{readings:,}"] for line in lines)
    assert any(line.split() == ["devices", "3", "3"] for line in lines)
    assert "series compared (count, min, max, sum): 6 of 6, 0 differ" in done.stdout
    assert lines[-1].startswith("done: ")
    assert f"--db {target_url}" in lines[-1]


def test_cli_refuses_a_filled_target_with_exit_2(source_url: str, target_url: str) -> None:
    assert _cli(source_url, target_url).returncode == 0
    again = _cli(source_url, target_url)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "already holds fieldhub data" in again.stderr
    assert "empty database" in again.stderr


def test_cli_refuses_wrong_url_kinds_with_exit_2(source_url: str) -> None:
    done = _cli(source_url, "sqlite:///elsewhere.db")
    assert done.returncode == 2
    assert "is not a PostgreSQL URL" in done.stderr
    assert "postgresql://user@host:5432/fieldhub" in done.stderr
    swapped = _cli("postgresql://u@127.0.0.1:1/x", source_url)
    assert swapped.returncode == 2
    assert "wrong way round" in swapped.stderr


def test_migration_result_ok_needs_every_check() -> None:
    assert MigrationResult().ok
    assert not MigrationResult(source_changed=True).ok


def test_series_sums_may_differ_by_rounding_only() -> None:
    def check(source: float | None, target: float | None, magnitude: float = 100.0) -> bool:
        stats = [SeriesStats(2, 1.0, 99.0, value) for value in (source, target)]
        return SeriesCheck("d", "m", stats[0], stats[1], magnitude).ok

    assert check(100.0, 100.0 + 1e-12)
    assert not check(100.0, 100.001)
    assert check(math.inf, math.inf)
    assert check(math.nan, math.nan)
    assert not check(math.inf, 5.0)
    assert not check(None, 5.0)
    different_count = SeriesCheck(
        "d", "m", SeriesStats(2, 1.0, 2.0, 3.0), SeriesStats(1, 1.0, 2.0, 3.0), 3.0
    )
    assert not different_count.ok
