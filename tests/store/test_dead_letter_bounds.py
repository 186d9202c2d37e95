"""Dead letters are bounded: a topic, a detail and a payload are cut, old ones go by their
reason's days, and past their byte budget the oldest go first, counted (both engines)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from fieldhub.store import DeadLetter, Store, WriteBatch
from fieldhub.store.dead_letter_rows import ROW_OVERHEAD_BYTES
from fieldhub.store.plan import (
    DEAD_LETTER_DETAIL_MAX_CHARS,
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_TOPIC_MAX_CHARS,
    TRUNCATED,
)
from fieldhub.store.retention import US_PER_DAY, RetentionJob, RetentionPolicy
from fieldhub.store.types import WriteResult

NOW = 1_790_000_000_000_000
DAY = US_PER_DAY
PAYLOAD = b"x" * 1000


def letter(n: int, *, reason: str = "malformed_json", age_days: float = 0.0) -> DeadLetter:
    return DeadLetter(
        topic=f"devices/d{n:04d}/telemetry",
        payload=PAYLOAD,
        reason=reason,
        detail=f"letter {n:04d}",
        received_us=NOW - int(age_days * DAY) + n,
    )


def row_bytes(d: DeadLetter) -> int:
    """What the budget counts for one letter, as the store does."""
    return len(d.payload) + len(d.topic) + len(d.detail) + ROW_OVERHEAD_BYTES


async def kept(store: Store) -> list[str]:
    rows = await store.list_dead_letters(limit=1000, before_id=None, reason=None, device_id=None)
    return sorted(row.detail for row in rows)


def job(store: Store, policy: RetentionPolicy) -> tuple[RetentionJob, CollectorRegistry]:
    registry = CollectorRegistry()
    return RetentionJob(
        store=store, policy=policy, registry=registry, clock_us=lambda: NOW
    ), registry


async def test_a_hostile_topic_detail_and_payload_are_cut(store: Store) -> None:
    hostile = DeadLetter(
        topic="devices/" + "t" * 60_000,
        payload=b"p" * (DEAD_LETTER_MAX_BYTES * 3),
        reason="unknown_topic",
        detail="d" * 50_000,
        received_us=NOW,
        device_id="i" * 10_000,
    )
    await store.write_batch(WriteBatch(dead_letters=[hostile]))
    [row] = await store.list_dead_letters(limit=10, before_id=None, reason=None, device_id=None)
    assert len(row.topic) == DEAD_LETTER_TOPIC_MAX_CHARS
    assert row.topic.endswith(TRUNCATED)
    assert row.topic.startswith("devices/ttt")
    assert len(row.detail) == DEAD_LETTER_DETAIL_MAX_CHARS
    assert row.detail.endswith(TRUNCATED)
    assert len(row.payload) == DEAD_LETTER_MAX_BYTES
    assert row.size == DEAD_LETTER_MAX_BYTES * 3  # the true size is kept
    assert row.device_id is not None
    assert len(row.device_id) == DEAD_LETTER_TOPIC_MAX_CHARS
    # Short ones are kept whole.
    await store.write_batch(WriteBatch(dead_letters=[letter(1)]))
    rows = await store.list_dead_letters(limit=10, before_id=None, reason=None, device_id=None)
    assert rows[0].topic == "devices/d0001/telemetry"
    assert rows[0].detail == "letter 0001"


async def test_their_size_is_what_the_budget_counts(store: Store) -> None:
    letters = [letter(n) for n in range(20)]
    await store.write_batch(WriteBatch(dead_letters=letters))
    assert await store.dead_letter_bytes() == sum(row_bytes(d) for d in letters)


async def test_past_the_budget_the_oldest_go_first(store: Store) -> None:
    letters = [letter(n) for n in range(50)]
    await store.write_batch(WriteBatch(dead_letters=letters))
    each = row_bytes(letters[0])
    deleted = await store.prune_dead_letters(10 * each)
    assert deleted == 40
    assert await kept(store) == sorted(f"letter {n:04d}" for n in range(40, 50))
    assert await store.dead_letter_bytes() == 10 * each
    assert await store.prune_dead_letters(10 * each) == 0  # within budget: nothing


async def test_old_ones_go_by_their_reasons_days(store: Store) -> None:
    batch = WriteBatch(
        dead_letters=[
            letter(1, age_days=40),  # default 30 days: goes
            letter(2, age_days=20),  # stays
            letter(3, reason="store_rejected", age_days=40),  # its own 90 days: stays
            letter(4, reason="store_rejected", age_days=100),  # goes
            letter(5, reason="unknown_topic", age_days=2),  # its own 1 day: goes
        ]
    )
    await store.write_batch(batch)
    policy = RetentionPolicy(
        dead_letter_days=30,
        dead_letter_reason_days=(("store_rejected", 90), ("unknown_topic", 1)),
    )
    retention, registry = job(store, policy)
    await retention.run_once()
    assert await kept(store) == ["letter 0002", "letter 0003"]
    assert registry.get_sample_value("fieldhub_dead_letters_pruned_total", {"why": "age"}) == 3
    forever, _ = job(store, RetentionPolicy(dead_letter_days=None))
    await store.write_batch(WriteBatch(dead_letters=[letter(6, age_days=5000)]))
    await forever.run_once()
    assert "letter 0006" in await kept(store)


async def test_a_flood_past_the_budget_is_pruned_at_once_and_counted(store: Store) -> None:
    each = row_bytes(letter(0))
    budget = 100 * each
    retention, registry = job(store, RetentionPolicy(dead_letter_max_bytes=budget))
    watch = asyncio.create_task(retention.watch())
    try:
        await asyncio.sleep(0.2)  # the first watch measures: empty
        assert registry.get_sample_value("fieldhub_dead_letter_bytes") == 0
        for start in range(0, 300, 50):
            batch = WriteBatch(dead_letters=[letter(n) for n in range(start, start + 50)])
            await store.write_batch(batch)
            retention.on_commit(batch, WriteResult(), NOW)
        # Woken by the estimate, not by the 15 s timer.
        for _ in range(100):
            if await store.dead_letter_bytes() <= budget:
                break
            await asyncio.sleep(0.05)
        left = await store.dead_letter_bytes()
        assert left <= budget
        rows = await kept(store)
        assert "letter 0299" in rows  # the newest stay
        assert "letter 0000" not in rows
        pruned = registry.get_sample_value("fieldhub_dead_letters_pruned_total", {"why": "bytes"})
        assert pruned == 300 - len(rows)
        assert registry.get_sample_value("fieldhub_dead_letter_bytes") == left
    finally:
        watch.cancel()


async def test_the_database_size_is_followed_between_retention_runs(store: Store) -> None:
    """`fieldhub_database_bytes` (the file and its WAL) is set by each watch, not only by the
    hourly run, so it follows a growing database within WATCH_S."""
    retention, registry = job(store, RetentionPolicy())
    await retention.watch_once()
    before = registry.get_sample_value("fieldhub_database_bytes")
    assert before == await store.size_bytes()
    await store.write_batch(WriteBatch(dead_letters=[letter(n) for n in range(2000)]))
    await retention.watch_once()
    after = registry.get_sample_value("fieldhub_database_bytes")
    assert after == await store.size_bytes()
    assert after is not None
    assert before is not None
    assert after > before


async def test_the_size_gauge_follows_each_batch_not_only_the_watch(store: Store) -> None:
    """`fieldhub_dead_letter_bytes` (and /api/v1/system's `bytes`) moves with the batch that
    brings dead letters, not up to 15 s later at the next watch."""
    retention, registry = job(store, RetentionPolicy())
    await retention.watch_once()  # measured at start: empty
    assert registry.get_sample_value("fieldhub_dead_letter_bytes") == 0
    batch = WriteBatch(dead_letters=[letter(n) for n in range(5)])
    await store.write_batch(batch)
    retention.on_commit(batch, WriteResult(), NOW)
    assert registry.get_sample_value("fieldhub_dead_letter_bytes") == (
        await store.dead_letter_bytes()
    )
    assert await store.dead_letter_bytes() > 0
