"""query_series: every aggregate checked against Python over seeded random data."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import pytest

from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.store import SeriesPoint, Store, WriteBatch
from fieldhub.store.types import AGGREGATES, Aggregate

T0 = 1_700_000_000_000_000
S = 1_000_000
HOUR = 3600 * S
SPAN = 3 * HOUR


def random_readings(rng: random.Random, n: int) -> dict[int, float]:
    """n distinct times in [T0, T0 + SPAN) with values of either sign, some repeated."""
    times = rng.sample(range(T0, T0 + SPAN, 1_000), n)
    return {ts: rng.choice([round(rng.uniform(-50, 50), 3), 7.25]) for ts in times}


def reference(
    data: dict[int, float], start: int, end: int, interval: int, agg: Aggregate
) -> list[tuple[int, float, int]]:
    """(bucket start, aggregate, count) computed in Python; buckets are multiples of interval."""
    buckets: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for ts, value in data.items():
        if start <= ts < end:
            buckets[ts - ts % interval].append((ts, value))
    out = []
    for bucket, rows in sorted(buckets.items()):
        rows.sort()
        values = [v for _, v in rows]
        if agg == "avg":
            result = math.fsum(values) / len(values)
        elif agg == "sum":
            result = math.fsum(values)
        elif agg == "count":
            result = float(len(values))
        else:
            result = {
                "min": min(values),
                "max": max(values),
                "first": values[0],
                "last": values[-1],
            }[agg]
        out.append((bucket, result, len(rows)))
    return out


async def write_shuffled(
    store: Store, device_id: str, metric: str, data: dict[int, float], rng: random.Random
) -> None:
    """One message per reading, in random order, so arrival order says nothing about time."""
    items = list(data.items())
    rng.shuffle(items)
    await store.write_batch(
        WriteBatch(
            decoded=[
                Decoded(
                    device_id=device_id,
                    profile="native",
                    channel="telemetry",
                    received_us=T0 + SPAN + i,
                    readings=[Reading(metric, ts, value)],
                )
                for i, (ts, value) in enumerate(items)
            ]
        )
    )


def assert_series(got: list[SeriesPoint], want: list[tuple[int, float, int]], agg: str) -> None:
    assert [(p.ts_us, p.count) for p in got] == [(b, n) for b, _, n in want]
    for point, (bucket, value, _) in zip(got, want, strict=True):
        if agg in ("avg", "sum"):
            assert point.value == pytest.approx(value, rel=1e-9, abs=1e-9), bucket
        else:
            assert point.value == value, (agg, bucket)


@pytest.mark.parametrize("agg", AGGREGATES)
async def test_aggregates_match_python(store: Store, agg: Aggregate) -> None:
    """Several intervals and unaligned ranges; other metrics and devices do not leak in."""
    rng = random.Random(f"series-{agg}")
    data = random_readings(rng, 600)
    # A dense run: many buckets of the smallest interval below hold one reading or none.
    data.update({ts: rng.uniform(-1, 1) for ts in range(T0 + 1_000, T0 + 50_000, 3_000)})
    await write_shuffled(store, "dev-1", "temp", data, rng)
    await write_shuffled(store, "dev-1", "hum", random_readings(rng, 100), rng)
    await write_shuffled(store, "dev-2", "temp", random_readings(rng, 100), rng)

    cases = [
        (T0, T0 + SPAN, 60 * S),
        (T0 + 12_345_678, T0 + SPAN - 4_321, 7 * 60 * S),  # interval not dividing an hour
        (T0 - HOUR, T0 + 2 * SPAN, HOUR),
        (T0 + 17 * 60 * S + 1, T0 + 83 * 60 * S, 900 * S),
        (T0, T0 + SPAN, 24 * HOUR),
        (T0 + 1_000, T0 + 50_000, 1_000),  # one reading per bucket at most
    ]
    for start, end, interval in cases:
        got = await store.query_series(
            "dev-1", "temp", start_us=start, end_us=end, interval_us=interval, agg=agg
        )
        want = reference(data, start, end, interval, agg)
        assert want, "the case should cover some data"
        assert all(p.ts_us % interval == 0 for p in got)
        assert_series(got, want, agg)


@pytest.mark.parametrize("agg", AGGREGATES)
async def test_empty_ranges(store: Store, agg: Aggregate) -> None:
    """No readings in range, unknown metric or device: an empty series, not zero buckets."""
    await write_shuffled(store, "dev-1", "temp", {T0 + S: 1.0, T0 + 2 * S: 2.0}, random.Random(1))

    async def series(device: str, metric: str, start: int, end: int) -> list[SeriesPoint]:
        return await store.query_series(
            device, metric, start_us=start, end_us=end, interval_us=60 * S, agg=agg
        )

    assert await series("dev-1", "temp", T0 + HOUR, T0 + 2 * HOUR) == []
    assert await series("dev-1", "temp", T0 + S, T0 + S) == []
    assert await series("dev-1", "temp", T0 + 3 * S, T0) == []
    assert await series("dev-1", "nope", T0, T0 + HOUR) == []
    assert await series("nobody", "temp", T0, T0 + HOUR) == []


async def test_first_and_last_pick_by_time_not_arrival(store: Store) -> None:
    """In each bucket, first is the earliest reading's value and last the latest's."""
    base = T0 - T0 % (60 * S)
    # Arrival order: middle, last, first of bucket 0; then last, first of bucket 1.
    writes = [
        (base + 30 * S, 2.0),
        (base + 59 * S, 3.0),
        (base + 1 * S, 1.0),
        (base + 119 * S, 6.0),
        (base + 60 * S, 4.0),
    ]
    for ts, value in writes:
        await store.write_batch(
            WriteBatch(
                decoded=[
                    Decoded("dev-1", "native", "telemetry", T0 + HOUR, [Reading("t", ts, value)])
                ]
            )
        )

    async def series(agg: Aggregate) -> list[tuple[int, float, int]]:
        points = await store.query_series(
            "dev-1", "t", start_us=base, end_us=base + 2 * 60 * S, interval_us=60 * S, agg=agg
        )
        return [(p.ts_us, p.value, p.count) for p in points]

    assert await series("first") == [(base, 1.0, 3), (base + 60 * S, 4.0, 2)]
    assert await series("last") == [(base, 3.0, 3), (base + 60 * S, 6.0, 2)]
