"""Retention deletes what it should and nothing else, judged by a fake clock."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from fieldhub.config import RetentionRuleSetting
from fieldhub.store import Store, WriteBatch, retention
from fieldhub.store.postgres import PostgresStore
from fieldhub.store.postgres_partitions import month_start_us, partition_month
from fieldhub.store.retention import US_PER_DAY, RetentionJob, RetentionPolicy, Rule
from fieldhub.store.rollups import HOUR_US
from fieldhub.store.types import MlDecisionRow, Selector
from support.store_rows import S, msg

NOW = 1_790_000_000 * S - (1_790_000_000 * S) % HOUR_US  # "now", on an hour boundary
DAY = US_PER_DAY


async def seed(store: Store) -> None:
    """Two devices x two metrics with a reading at each of these ages (days)."""
    ages = (0.5, 10, 29, 31, 100, 364, 366, 800)
    batch = WriteBatch()
    for device in ("dev-a", "dev-b"):
        for age in ages:
            ts = NOW - int(age * DAY)
            batch.decoded.append(msg(device, NOW, [("temp", ts, age), ("sound", ts, -age)]))
    await store.write_batch(batch)


async def ages_left(store: Store, device: str, metric: str, interval_us: int) -> list[float]:
    """The ages (days) still readable at this interval: raw for 1 s, rollups for 1 min / 1 h."""
    points = await store.query_series(
        device, metric, start_us=NOW - 1000 * DAY, end_us=NOW, interval_us=interval_us, agg="count"
    )
    return sorted(round((NOW - p.ts_us) / DAY) for p in points)


def job(store: Store, policy: RetentionPolicy, **kw: object) -> RetentionJob:
    return RetentionJob(
        store=store,
        policy=policy,
        registry=CollectorRegistry(),
        clock_us=lambda: NOW,
        **kw,  # type: ignore[arg-type]
    )


async def test_defaults_keep_raw_30_days_minutes_a_year_hours_forever(store: Store) -> None:
    await seed(store)
    deleted = await job(store, RetentionPolicy()).run_once()
    assert deleted == {"raw": 2 * 2 * 5, "minute": 2 * 2 * 2, "hour": 0}
    for device in ("dev-a", "dev-b"):
        assert await ages_left(store, device, "temp", S) == [0, 10, 29]  # raw: < 30 d
        assert await ages_left(store, device, "temp", 60 * S) == [0, 10, 29, 31, 100, 364]
        assert await ages_left(store, device, "temp", HOUR_US) == [
            0, 10, 29, 31, 100, 364, 366, 800
        ]  # fmt: skip
    # Running again deletes nothing more: the same cutoffs.
    assert await job(store, RetentionPolicy()).run_once() == {"raw": 0, "minute": 0, "hour": 0}


async def test_the_most_specific_rule_wins(store: Store) -> None:
    """sound: raw 7 d everywhere; dev-b: raw 100 d; dev-b's sound: raw kept forever; dev-a's
    hour rollups 365 d."""
    await seed(store)
    policy = RetentionPolicy(
        overrides=(
            Rule(Selector(metric="sound"), {"raw": 7.0}),
            Rule(Selector(device="dev-b"), {"raw": 100.5}),
            Rule(Selector(device="dev-b", metric="sound"), {"raw": None}),
            Rule(Selector(device="dev-a"), {"hour": 365.0}),
        )
    )
    await job(store, policy).run_once()
    assert await ages_left(store, "dev-a", "temp", S) == [0, 10, 29]
    assert await ages_left(store, "dev-a", "sound", S) == [0]
    assert await ages_left(store, "dev-b", "temp", S) == [0, 10, 29, 31, 100]
    assert await ages_left(store, "dev-b", "sound", S) == [0, 10, 29, 31, 100, 364, 366, 800]
    assert await ages_left(store, "dev-a", "temp", HOUR_US) == [0, 10, 29, 31, 100, 364]
    assert await ages_left(store, "dev-b", "temp", HOUR_US) == [0, 10, 29, 31, 100, 364, 366, 800]


async def test_rules_naming_unknown_devices_or_metrics_shield_nothing(store: Store) -> None:
    await seed(store)
    policy = RetentionPolicy(
        overrides=(
            Rule(Selector(device="nobody"), {"raw": None}),
            Rule(Selector(metric="nothing"), {"raw": None}),
        )
    )
    deleted = await job(store, policy).run_once()
    assert deleted["raw"] == 20


async def test_the_disk_budget_warns_before_it_is_hit(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(store)
    size = await store.size_bytes()
    assert size > 0
    with caplog.at_level(logging.INFO, logger="fieldhub.retention"):
        await job(store, RetentionPolicy(), disk_budget_bytes=size * 100).run_once()
        assert "disk budget" not in caplog.text
        assert "retention: deleted 20 raw readings" in caplog.text
        await job(store, RetentionPolicy(), disk_budget_bytes=int(size * 1.05)).run_once()
    assert "disk budget" in caplog.text


async def test_a_sweep_deletes_in_short_transactions_that_let_ingest_in(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One DELETE of a tier's whole backlog held SQLite's writer for seconds: a sweep deletes
    series by series, at most SWEEP_TX_ROWS rows a transaction, and a batch that arrives
    meanwhile commits between two of them."""
    monkeypatch.setattr(retention, "SWEEP_TX_ROWS", 50)
    monkeypatch.setattr(retention, "SWEEP_TX_SERIES", 2)
    batch = WriteBatch()
    for device in ("dev-a", "dev-b", "dev-c"):
        old = [(metric, NOW - 31 * DAY + i * S, float(i)) for metric in "xy" for i in range(70)]
        young = [(metric, NOW - DAY, 1.0) for metric in "xy"]
        batch.decoded.append(msg(device, NOW, [*old, *young]))
    await store.write_batch(batch)

    transactions: list[int] = []
    events: list[str] = []
    write = store._write  # type: ignore[attr-defined]

    async def watched(script: object) -> object:
        result = await write(script)
        # One transaction of the sweep returns (rows deleted, next series).
        if isinstance(result, tuple) and all(type(x) is int for x in result):
            transactions.append(result[0])
            if len(transactions) == 1:
                late = msg("dev-late", NOW, [("x", NOW - S, 1.0)])
                wrote.append(asyncio.create_task(store.write_batch(WriteBatch([late]))))
                wrote[0].add_done_callback(lambda _: events.append("ingest committed"))
        return result

    wrote: list[asyncio.Task[object]] = []
    monkeypatch.setattr(store, "_write", watched)
    deleted = await store.delete_older("raw", NOW - 30 * DAY, selector=Selector(), keep=())
    events.append("sweep done")

    assert deleted == 3 * 2 * 70
    assert sum(transactions) == deleted
    assert max(transactions) <= 50
    assert len(transactions) >= deleted // 50
    assert events == ["ingest committed", "sweep done"]
    for device in ("dev-a", "dev-b", "dev-c"):
        for metric in "xy":
            assert await ages_left(store, device, metric, S) == [1]
    assert await ages_left(store, "dev-late", "x", S) == [0]


async def test_a_run_longer_than_its_interval_says_it_falls_behind(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(store)
    registry = CollectorRegistry()
    slow = RetentionJob(store, RetentionPolicy(), registry, interval_s=1e-6, clock_us=lambda: NOW)
    with caplog.at_level(logging.INFO, logger="fieldhub.retention"):
        await job(store, RetentionPolicy(), interval_s=3600.0).run_once()
        assert "not keeping up" not in caplog.text
        await slow.run_once()
    assert "longer than its interval" in caplog.text
    took = registry.get_sample_value("fieldhub_retention_last_run_seconds")
    assert took is not None
    assert took > 0


def test_settings_rules_name_what_they_override() -> None:
    rule = RetentionRuleSetting.model_validate(
        {"device": "3c-e9-0e-72-12-4c", "raw_days": 90, "hour_days": None}
    ).rule()
    assert rule == Rule(Selector("3C:E9:0E:72:12:4C", None), {"raw": 90.0, "hour": None})
    with pytest.raises(ValueError, match="names a device"):
        RetentionRuleSetting.model_validate({"raw_days": 3})
    with pytest.raises(ValueError, match="sets raw_days"):
        RetentionRuleSetting.model_validate({"metric": "t"})


async def partitions(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'readings'::regclass"
        )
        return {row["relname"] for row in rows}
    finally:
        await conn.close()


@pytest.mark.parametrize("backend_url", ["postgresql"], indirect=True)
async def test_postgresql_drops_whole_months_older_than_the_raw_tier(
    store: Store, backend_url: str
) -> None:
    """The same rows go as with DELETE alone; the months wholly past the cutoff go as tables."""
    assert isinstance(store, PostgresStore)
    for months_back in range(5):  # the partitions a long-running installation has
        await store.ensure_partitions(NOW - months_back * 30 * DAY)
    await seed(store)
    before = await partitions(backend_url)
    cutoff = NOW - 30 * DAY
    expected_gone = {
        name
        for name in before
        if (month := partition_month(name)) is not None and month_start_us(month + 1) <= cutoff
    }
    assert len(expected_gone) >= 2  # the test means something only if months do go

    deleted = await job(store, RetentionPolicy()).run_once()

    assert deleted["raw"] == 2 * 2 * 5  # as in the defaults test, where most go by DELETE
    after = await partitions(backend_url)
    assert before - after == expected_gone
    for device in ("dev-a", "dev-b"):
        assert await ages_left(store, device, "temp", S) == [0, 10, 29]
        assert await ages_left(store, device, "temp", HOUR_US) == [
            0, 10, 29, 31, 100, 364, 366, 800
        ]  # fmt: skip


@pytest.mark.parametrize("backend_url", ["postgresql"], indirect=True)
async def test_postgresql_keeps_partitions_when_a_rule_keeps_raw_longer(
    store: Store, backend_url: str
) -> None:
    """A more specific rule shields some series: whole months may not go, rows still do."""
    assert isinstance(store, PostgresStore)
    for months_back in range(5):
        await store.ensure_partitions(NOW - months_back * 30 * DAY)
    await seed(store)
    before = await partitions(backend_url)
    policy = RetentionPolicy(overrides=(Rule(Selector(device="dev-b"), {"raw": 100.5}),))
    await job(store, policy).run_once()
    assert await partitions(backend_url) == before
    assert await ages_left(store, "dev-a", "temp", S) == [0, 10, 29]
    assert await ages_left(store, "dev-b", "temp", S) == [0, 10, 29, 31, 100]


async def test_window_decisions_are_kept_90_days_by_default(store: Store) -> None:
    def decision(n: int, age_days: float) -> MlDecisionRow:
        return MlDecisionRow(
            decision_id=f"00000000-0000-4000-8000-{n:012d}",
            device_id="dev-a",
            at_us=NOW - int(age_days * DAY),
            trigger="own",
            reason="first_inference",
            inputs={},
            verdicts=[],
            outcome="shadow",
        )

    await store.append_ml_decisions([decision(n, age) for n, age in enumerate((1, 89, 91, 400))])
    retention = job(store, RetentionPolicy())
    await retention.run_once()
    left = await store.list_ml_decisions(limit=10)
    assert sorted(round((NOW - row.at_us) / DAY) for row in left) == [1, 89]
    assert (
        retention.registry.get_sample_value(
            "fieldhub_retention_deleted_rows_total", {"tier": "ml_decisions"}
        )
        == 2
    )
    # None keeps them forever.
    await store.append_ml_decisions([decision(9, 500)])
    await job(store, RetentionPolicy(ml_decision_days=None)).run_once()
    assert len(await store.list_ml_decisions(limit=10)) == 3
