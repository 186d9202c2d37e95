"""The window-control loop's tables (issue 17) on both engines, through the Store interface:
decisions (appended, read back, listed newest first with a cursor, counted for the ML page,
deleted by age) and each device's guard configuration and state; the migration that adds them
to an existing database; and `fieldhub migrate` carrying them to PostgreSQL."""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Awaitable, Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fieldhub.store import Store, StoreError, WriteBatch, open_store
from fieldhub.store.migrate import TABLES, migrate_sqlite_to_postgres
from fieldhub.store.migrate_tables import NOT_COPIED
from fieldhub.store.ops import Op, Query
from fieldhub.store.postgres_schema import MIGRATIONS as POSTGRES_MIGRATIONS
from fieldhub.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from fieldhub.store.types import (
    ML_OUTCOMES,
    MlDecisionRow,
    MlDecisionStats,
    MlDeviceRow,
    MlOutcome,
    RuleVersionRow,
)
from support.postgres import PostgresServer
from support.store_rows import T0, S, msg, schema_before

Reopen = Callable[[Store], Awaitable[Store]]
STALE_AFTER_S = {"native": 120}
DAY = 86_400 * S
ML_TABLES = ("ml_decisions", "ml_devices")
DEVICE = "3C:E9:0E:72:12:4C"
VERDICTS: list[dict[str, object]] = [
    {"guard": "enabled", "ok": True, "detail": "automatic control is on"},
    {"guard": "min_confidence", "ok": False, "detail": "confidence 0.310 below the minimum 0.5"},
]


def uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def decision(
    n: int,
    *,
    device: str = DEVICE,
    outcome: MlOutcome = "actuated",
    at_us: int | None = None,
    confidence: float | None = 0.8,
    latency_us: int | None = 1_500,
) -> MlDecisionRow:
    """A full decision (every column set); `n` makes it distinct."""
    return MlDecisionRow(
        decision_id=uuid(n),
        device_id=device,
        at_us=T0 + n * S if at_us is None else at_us,
        trigger="request" if n % 3 == 0 else "own",
        reason="temperature_zscore,volume_zscore" if n % 2 else "first_inference",
        inputs={
            "temperature": {"value": 24.5 + n, "age_s": 12.0},
            "volume": {"value": 61.25, "age_s": 3.5},
            "label": "ü",
        },
        verdicts=VERDICTS,
        outcome=outcome,
        zscores={"temperature": 2.75, "volume": -0.5},
        model_name="window-mlp",
        model_version=3,
        position=72.4 + n,
        confidence=confidence,
        target_position=72,
        command_id=uuid(1000 + n),
        latency_us=latency_us,
        request={"v": 1, "id": f"req-{n}", "reason": "request", "nested": [1, 2.5, None]},
        committed_us=T0 + n * S - 3_250,
    )


def bare(n: int, **kw: Any) -> MlDecisionRow:
    """A decision with every nullable column empty (a loop switched off)."""
    return replace(
        decision(n, **kw),
        zscores=None,
        model_name=None,
        model_version=None,
        position=None,
        confidence=None,
        target_position=None,
        command_id=None,
        latency_us=None,
        request=None,
        committed_us=None,
    )


# -- decisions -----------------------------------------------------------------------------------


async def test_a_decision_comes_back_as_recorded(store: Store, reopen: Reopen) -> None:
    """Every column round-trips, JSON values included; absent ones are None, not JSON null."""
    full = decision(1)
    empty = bare(2, outcome="off")
    first = await store.append_ml_decision(full)
    second = await store.append_ml_decision(empty)
    assert second > first
    assert await store.get_ml_decision(uuid(1)) == replace(full, seq=first)
    assert await store.get_ml_decision(uuid(2)) == replace(empty, seq=second)
    assert await store.get_ml_decision(uuid(3)) is None
    # `seq` on an appended row is ignored.
    third = await store.append_ml_decision(replace(decision(3), seq=first))
    assert third > second
    store = await reopen(store)
    assert await store.get_ml_decision(uuid(2)) == replace(empty, seq=second)
    nulls = await store._read(  # type: ignore[attr-defined]
        _scalar(
            "SELECT count(*) FROM ml_decisions WHERE zscores IS NULL AND request IS NULL "
            "AND position IS NULL AND confidence IS NULL"
        )
    )
    assert nulls == 1


async def test_a_repeated_decision_id_is_an_error_not_a_second_row(store: Store) -> None:
    await store.append_ml_decision(decision(1))
    with pytest.raises(StoreError):
        await store.append_ml_decision(replace(decision(2), decision_id=uuid(1)))
    assert [d.decision_id for d in await store.list_ml_decisions(limit=10)] == [uuid(1)]


async def test_several_decisions_are_appended_in_one_transaction(store: Store) -> None:
    """In order, seqs ascending; a batch with a bad row stores none of it."""
    seqs = await store.append_ml_decisions([decision(1), decision(2), decision(3)])
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    listed = await store.list_ml_decisions(limit=10)
    assert [(d.seq, d.decision_id) for d in listed] == list(
        zip(reversed(seqs), (uuid(3), uuid(2), uuid(1)), strict=True)
    )
    with pytest.raises(StoreError):
        await store.append_ml_decisions([decision(4), decision(1)])
    assert await store.get_ml_decision(uuid(4)) is None
    assert await store.append_ml_decisions([]) == []
    later = await store.append_ml_decision(decision(5))
    assert later > seqs[-1]


async def test_decisions_list_newest_first_filtered_and_paged(store: Store, reopen: Reopen) -> None:
    assert await store.list_ml_decisions(limit=10) == []
    made: dict[int, MlDecisionRow] = {}
    for n in range(30):
        row = decision(n, device=f"dev-{n % 3}", outcome=ML_OUTCOMES[n % 4])
        made[await store.append_ml_decision(row)] = row
    newest = [replace(made[s], seq=s) for s in sorted(made, reverse=True)]
    assert await store.list_ml_decisions(limit=100) == newest

    pages: list[list[MlDecisionRow]] = []
    before: int | None = None
    while page := await store.list_ml_decisions(limit=8, before_seq=before):
        pages.append(page)
        before = page[-1].seq
    assert [len(p) for p in pages] == [8, 8, 8, 6]
    assert [d for p in pages for d in p] == newest

    def where(device: str | None = None, outcome: str | None = None) -> list[MlDecisionRow]:
        return [d for d in newest if device in (None, d.device_id) and outcome in (None, d.outcome)]

    assert await store.list_ml_decisions(device="dev-1", limit=100) == where("dev-1")
    assert await store.list_ml_decisions(outcome="held", limit=100) == where(outcome="held")
    both = where("dev-2", "actuated")
    assert both
    assert await store.list_ml_decisions(device="dev-2", outcome="actuated", limit=100) == both
    mine = where("dev-0")
    page = await store.list_ml_decisions(device="dev-0", limit=3, before_seq=mine[2].seq)
    assert page == mine[3:6]
    assert await store.list_ml_decisions(device="dev-9", limit=10) == []
    assert await store.list_ml_decisions(outcome="nonsense", limit=10) == []

    store = await reopen(store)
    seq = await store.append_ml_decision(decision(99))
    assert seq > max(made)
    assert (await store.list_ml_decisions(limit=1))[0] == replace(decision(99), seq=seq)


async def test_decision_stats_count_outcomes_confidence_and_latency(store: Store) -> None:
    """Counts per outcome, the confidence histogram and nearest-rank latency percentiles, of
    the decisions since a time, of one device or all."""
    empty = await store.ml_decision_stats(since_us=0)
    assert empty == MlDecisionStats(
        total=0,
        outcomes=dict.fromkeys(ML_OUTCOMES, 0),
        confidence=(0,) * 10,
        latency_p50_us=None,
        latency_p99_us=None,
    )
    # Confidences on and between the bucket edges; latencies 1..100 ms on dev-a.
    confidences = [0.0, 0.05, 0.1, 0.3, 0.5, 0.55, 0.7, 0.9, 0.95, 1.0, None]
    rows = []
    for n in range(100):
        rows.append(
            decision(
                n,
                device="dev-a",
                outcome=ML_OUTCOMES[n % 3],  # actuated, held, shadow
                confidence=confidences[n % len(confidences)],
                latency_us=(100 - n) * 1000,
            )
        )
    rows.append(bare(100, device="dev-b", outcome="error"))
    rows.append(decision(101, device="dev-b", outcome="refused", confidence=0.45, latency_us=7))
    # Before `since`: never counted.
    rows.append(decision(102, device="dev-a", at_us=T0 - 1, confidence=0.2, latency_us=10**9))
    await store.append_ml_decisions(rows)

    stats = await store.ml_decision_stats(since_us=T0)
    assert stats.total == 102
    assert stats.outcomes == {
        "actuated": 34,
        "held": 33,
        "shadow": 33,
        "refused": 1,
        "fallback": 0,
        "off": 0,
        "error": 1,
    }
    expected = [0] * 10
    for n in range(100):
        c = confidences[n % len(confidences)]
        if c is not None:
            expected[min(int(c * 10 + 1e-9), 9)] += 1
    expected[4] += 1  # dev-b's 0.45
    assert stats.confidence == tuple(expected)
    assert expected[0] == 2 * 10 - 1  # 0.0 and 0.05 (n = 0..99: 10 or 9 of each)
    assert sum(stats.confidence) == 100 - 9 + 1  # the decisions with a confidence
    # 101 latencies: 7 us and 1..100 ms. Nearest rank: the 51st and the 100th smallest.
    assert (stats.latency_p50_us, stats.latency_p99_us) == (50_000, 99_000)

    only_a = await store.ml_decision_stats(since_us=T0, device="dev-a")
    assert only_a.total == 100
    assert only_a.outcomes["error"] == 0
    assert (only_a.latency_p50_us, only_a.latency_p99_us) == (50_000, 99_000)
    only_b = await store.ml_decision_stats(since_us=T0, device="dev-b")
    assert (only_b.total, only_b.outcomes["refused"], only_b.outcomes["error"]) == (2, 1, 1)
    assert only_b.confidence == (0, 0, 0, 0, 1, 0, 0, 0, 0, 0)
    assert (only_b.latency_p50_us, only_b.latency_p99_us) == (7, 7)
    with_old = await store.ml_decision_stats(since_us=T0 - 1, device="dev-a")
    assert (with_old.total, with_old.latency_p99_us) == (101, 100_000)
    assert with_old.confidence[2] == only_a.confidence[2] + 1
    late = await store.ml_decision_stats(since_us=T0 + 95 * S, device="dev-a")
    assert late.total == 5  # n = 95..99: latencies 5..1 ms
    assert (late.latency_p50_us, late.latency_p99_us) == (3_000, 5_000)


async def test_old_decisions_are_deleted_by_age(store: Store) -> None:
    """Retention: decisions before the cutoff go, the rest stay; seqs are not reused."""
    seqs = await store.append_ml_decisions([decision(n, at_us=T0 + n * DAY) for n in range(5)])
    assert await store.delete_ml_decisions_before(T0 + 2 * DAY) == 2
    assert [d.decision_id for d in await store.list_ml_decisions(limit=10)] == [
        uuid(4),
        uuid(3),
        uuid(2),
    ]
    assert await store.delete_ml_decisions_before(T0 + 2 * DAY) == 0
    assert await store.append_ml_decision(decision(5)) > seqs[-1]


# -- devices -------------------------------------------------------------------------------------


def ml_device(device: str, n: int) -> MlDeviceRow:
    return MlDeviceRow(
        device_id=device,
        config={"enabled": True, "shadow": n % 2 == 1, "max_step": 10 + n, "fallback": "hold"},
        state={"position": 40 + n, "last_move_us": T0 + n * S, "manual_until_us": None},
        updated_us=T0 + n * S,
    )


async def test_ml_devices_upsert_and_survive_a_restart(store: Store, reopen: Reopen) -> None:
    assert await store.list_ml_devices() == []
    assert await store.get_ml_device(DEVICE) is None
    for n, device in enumerate(("dev-b", DEVICE, "dev-a", "Dev-c")):
        await store.put_ml_device(ml_device(device, n))
    changed = replace(
        ml_device("dev-a", 7),
        config={"enabled": False, "fallback": 20, "min_confidence": 0.625},
        state={"position": None, "last_move_us": None, "manual_until_us": T0 + 1800 * S},
    )
    await store.put_ml_device(changed)
    assert await store.get_ml_device("dev-a") == changed
    store = await reopen(store)
    listed = await store.list_ml_devices()
    # Bytewise: upper case before lower case on both engines.
    assert [d.device_id for d in listed] == [DEVICE, "Dev-c", "dev-a", "dev-b"]
    assert listed == [ml_device(DEVICE, 1), ml_device("Dev-c", 3), changed, ml_device("dev-b", 0)]


# -- schema --------------------------------------------------------------------------------------


def test_the_migration_numbers_per_engine() -> None:
    def number(migrations: list[tuple[int, str, str]]) -> list[int]:
        return [v for v, description, _ in migrations if description.startswith("ml:")]

    assert number(SQLITE_MIGRATIONS) == [8, 9]
    assert number(POSTGRES_MIGRATIONS) == [7, 8]


@pytest.mark.parametrize("table", ML_TABLES)
async def test_every_ml_table_exists_on_both_engines(store: Store, table: str) -> None:
    """Each table is made by the engine's migration (and empty in a new database)."""
    assert await store._read(_scalar(f"SELECT count(*) FROM {table}")) == 0  # type: ignore[attr-defined]


async def test_the_migration_adds_the_tables_to_an_existing_database(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at the schema before this migration, with data in it, is brought up to
    date: the data stays and the new tables work at once."""
    engine = (
        "fieldhub.store.sqlite" if backend_url.startswith("sqlite") else "fieldhub.store.postgres"
    )
    full = importlib.import_module(engine).MIGRATIONS
    at = next(i for i, (_, description, _) in enumerate(full) if description.startswith("ml:"))
    monkeypatch.setattr(f"{engine}.MIGRATIONS", schema_before(full, at))
    old = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await old.open()
    try:
        await old.write_batch(WriteBatch(decoded=[msg("dev-1", T0, [("temperature", T0, 21.5)])]))
        rule = RuleVersionRow(
            rule_id="r", document={"id": "r"}, enabled=True, author="alice", created_us=T0
        )
        assert await old.put_rule_version(rule) == 1
    finally:
        await old.close()
    monkeypatch.setattr(f"{engine}.MIGRATIONS", full)

    new = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await new.open()
    try:
        assert [m.name for m in await new.device_metrics("dev-1")] == ["temperature"]
        assert [r.rule_id for r in await new.list_rules()] == ["r"]
        assert await new.list_ml_decisions(limit=5) == []
        seq = await new.append_ml_decision(decision(1, device="dev-1"))
        assert seq == 1
        await new.put_ml_device(ml_device("dev-1", 1))
        assert await new.get_ml_device("dev-1") == ml_device("dev-1", 1)
        assert (await new.ml_decision_stats(since_us=0)).total == 1
    finally:
        await new.close()


def test_migrate_copies_every_ml_table() -> None:
    copied = {t.name for t in TABLES}
    assert copied >= set(ML_TABLES)
    assert not NOT_COPIED & set(ML_TABLES)
    serial = {t.name: t.serial for t in TABLES}
    assert (serial["ml_decisions"], serial["ml_devices"]) == ("seq", None)


async def test_fieldhub_migrate_carries_the_ml_rows_to_postgresql(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    source_url = f"sqlite:///{tmp_path}/fieldhub.db"
    target_url = postgres_server.new_database()
    source = open_store(source_url, stale_after_s=STALE_AFTER_S)
    await source.open()
    try:
        await source.append_ml_decisions(
            [decision(1), bare(2, outcome="fallback"), decision(3, device="dev-2", outcome="held")]
        )
        await source.append_ml_decision(decision(4))
        for n, device in enumerate((DEVICE, "dev-2")):
            await source.put_ml_device(ml_device(device, n))
        before = (
            await source.list_ml_decisions(limit=100),
            await source.list_ml_devices(),
            await source.ml_decision_stats(since_us=0),
        )
    finally:
        await source.close()
    # The newest decision deleted: its seq must not be handed out again.
    conn = sqlite3.connect(tmp_path / "fieldhub.db")
    with conn:
        conn.execute("DELETE FROM ml_decisions WHERE seq = 4")
    conn.close()

    result = await migrate_sqlite_to_postgres(source_url, target_url)
    assert result.ok, result
    counts = {c.table: (c.source, c.target) for c in result.counts}
    assert counts["ml_decisions"] == (3, 3)
    assert counts["ml_devices"] == (2, 2)

    target = open_store(target_url, stale_after_s=STALE_AFTER_S)
    await target.open()
    try:
        assert await target.list_ml_decisions(limit=100) == before[0][1:]
        assert await target.get_ml_decision(uuid(2)) == before[0][2]
        assert await target.list_ml_devices() == before[1]
        stats = await target.ml_decision_stats(since_us=0)
        assert stats.total == before[2].total - 1
        assert await target.append_ml_decision(decision(5)) == 5
    finally:
        await target.close()


def _scalar(sql: str) -> Generator[Op, list[Any], int]:
    rows = yield Query(sql)
    return int(rows[0][0])
