"""query_fleet_series: one metric aggregated across devices, checked against a brute-force
computation over every reading stored, through the same rollup plan as a device's series."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from fieldhub.store import Store, WriteBatch
from fieldhub.store.rollups import HOUR_US, MINUTE_US, plan_series
from fieldhub.store.types import AGGREGATES, Aggregate, SeriesPoint
from support.store_rows import T0, S, msg

# An hour boundary, so ranges below are aligned or ragged on purpose.
H0 = T0 - T0 % HOUR_US
DEVICES = ("dev-a", "dev-b", "dev-c", "dev-d")
METRIC = "t"

# (device, ts) -> value
Readings = dict[tuple[str, int], float]


def reference(
    readings: Readings,
    devices: Sequence[str] | None,
    start: int,
    end: int,
    interval: int,
    agg: Aggregate,
) -> list[tuple[int, float, int]]:
    """(bucket, value, count) from every reading, as the store documents the fleet aggregate:
    the devices' readings pooled per bucket; first/last by time, ties to the smallest id."""
    buckets: dict[int, list[tuple[int, str, float]]] = {}
    for (device, ts), value in readings.items():
        if (devices is None or device in devices) and start <= ts < end:
            buckets.setdefault(ts - ts % interval, []).append((ts, device, value))
    out = []
    for bucket, rows in sorted(buckets.items()):
        values = [v for _, _, v in rows]
        value = {
            "avg": math.fsum(values) / len(values),
            "min": min(values),
            "max": max(values),
            "sum": math.fsum(values),
            "count": float(len(values)),
            "first": min(rows, key=lambda r: (r[0], r[1]))[2],
            "last": min(rows, key=lambda r: (-r[0], r[1]))[2],
        }[agg]
        out.append((bucket, value, len(values)))
    return out


def assert_matches(got: list[SeriesPoint], want: list[tuple[int, float, int]], what: str) -> None:
    assert [(p.ts_us, p.count) for p in got] == [(b, n) for b, _, n in want], what
    assert [p.value for p in got] == pytest.approx([v for _, v, _ in want], rel=1e-9), what


async def write_shuffled(store: Store, readings: Readings, rng: random.Random) -> None:
    """Batches mixing devices in random order, a tenth of the readings sent twice (a
    redelivery must not count twice), so closed minutes and hours receive late data."""
    items = list(readings.items())
    items += rng.sample(items, len(items) // 10)
    rng.shuffle(items)
    for start in range(0, len(items), 53):
        await store.write_batch(
            WriteBatch(
                decoded=[
                    msg(device, T0, [(METRIC, ts, value)])
                    for (device, ts), value in items[start : start + 53]
                ]
            )
        )


def fleet_readings(seed: int) -> Readings:
    """~3 hours of each device at irregular times, and every 10 minutes a reading of every
    device at the same instant (on minute and hour boundaries: first/last ties)."""
    rng = random.Random(seed)
    readings: Readings = {}
    for device in DEVICES:
        ts = H0 - 7 * MINUTE_US + rng.randrange(90 * S)
        while ts < H0 + 3 * HOUR_US:
            readings[(device, ts)] = round(rng.uniform(-20, 40), 3)
            ts += rng.randrange(1, 120) * S + rng.randrange(S)
        for shared in range(H0 - 10 * MINUTE_US, H0 + 3 * HOUR_US, 10 * MINUTE_US):
            readings[(device, shared)] = round(rng.uniform(-20, 40), 3)
    return readings


async def other_series(store: Store) -> None:
    """Another metric of the same devices and the metric of a device asked for by nobody:
    neither may leak into the fleet series."""
    await store.write_batch(
        WriteBatch(
            decoded=[
                msg("dev-a", T0, [("h", H0 + 5 * S, 1e6)]),
                msg("dev-b", T0, [("h", H0 + HOUR_US + 5 * S, -1e6)]),
            ]
        )
    )


RANGES = [
    (H0, H0 + 3 * HOUR_US),  # aligned: hour rollups only
    # Ragged: raw readings and minute rollups at both ends, hours between.
    (H0 - 5 * MINUTE_US + 17 * S, H0 + 2 * HOUR_US + 41 * MINUTE_US + 3 * S),
    (H0 + 10 * MINUTE_US + 1, H0 + 50 * MINUTE_US),  # inside one hour
]
INTERVALS = (MINUTE_US, 5 * MINUTE_US, HOUR_US, 2 * HOUR_US, 90 * S)


def test_the_ragged_range_reads_every_tier() -> None:
    """The cases below cover buckets built from raw readings, minute and hour rollups at once."""
    tables = {p.table for p in plan_series(*RANGES[1], HOUR_US)}
    assert tables == {None, "rollup_minute", "rollup_hour"}


@pytest.mark.parametrize("agg", AGGREGATES)
async def test_fleet_series_equals_brute_force(store: Store, agg: Aggregate) -> None:
    """Every device, a subset, one device (and an id nobody has) over aligned and ragged
    ranges, on intervals the rollups serve and one they do not."""
    readings = fleet_readings(seed=11)
    await write_shuffled(store, readings, random.Random(12))
    await other_series(store)
    await store.write_batch(WriteBatch(decoded=[msg("dev-z", T0, [("h", H0 + S, 3.0)])]))
    device_sets: list[list[str] | None] = [
        None,
        ["dev-b", "dev-d"],
        ["dev-c"],
        ["dev-a", "nobody", "dev-c"],
    ]
    for devices in device_sets:
        for start, end in RANGES:
            for interval in INTERVALS:
                got = await store.query_fleet_series(
                    METRIC,
                    device_ids=devices,
                    start_us=start,
                    end_us=end,
                    interval_us=interval,
                    agg=agg,
                )
                want = reference(readings, devices, start, end, interval, agg)
                assert want
                assert_matches(got, want, f"{devices} {start - H0} {interval}")


@pytest.mark.parametrize("agg", AGGREGATES)
async def test_one_device_fleet_equals_its_own_series(store: Store, agg: Aggregate) -> None:
    """The fleet path and the device path are one code path: a fleet of one is the device."""
    readings = fleet_readings(seed=21)
    await write_shuffled(store, readings, random.Random(22))
    start, end = RANGES[1]
    for interval in INTERVALS:
        fleet = await store.query_fleet_series(
            METRIC, device_ids=["dev-b"], start_us=start, end_us=end, interval_us=interval, agg=agg
        )
        own = await store.query_series(
            "dev-b", METRIC, start_us=start, end_us=end, interval_us=interval, agg=agg
        )
        assert fleet == own


async def test_late_data_of_another_device_updates_closed_buckets(store: Store) -> None:
    """A device's buffered readings for hours already rolled up (and read) are counted."""
    readings = fleet_readings(seed=31)
    on_time = {k: v for k, v in readings.items() if k[0] != "dev-d"}
    await write_shuffled(store, on_time, random.Random(32))
    start, end = RANGES[1]
    for agg in AGGREGATES:
        got = await store.query_fleet_series(
            METRIC, device_ids=None, start_us=start, end_us=end, interval_us=HOUR_US, agg=agg
        )
        assert_matches(got, reference(on_time, None, start, end, HOUR_US, agg), agg)
    # dev-d comes back from a long outage with its buffer, sent newest first, including
    # readings at the very times of the first hour's first and last readings of the others:
    # the extremes change, and the ties go to the smaller ids (dev-a..c), never to dev-d.
    late = {k: v for k, v in readings.items() if k[0] == "dev-d"}
    latest_other = max(ts for (_, ts) in on_time if H0 <= ts < H0 + HOUR_US)
    late[("dev-d", H0)] = -99.0
    late[("dev-d", latest_other)] = 99.0
    for (device, ts), value in sorted(late.items(), key=lambda item: -item[0][1]):
        await store.write_batch(WriteBatch(decoded=[msg(device, T0, [(METRIC, ts, value)])]))
    everything = {**on_time, **late}
    for agg in AGGREGATES:
        for interval in (HOUR_US, MINUTE_US, 90 * S):
            got = await store.query_fleet_series(
                METRIC, device_ids=None, start_us=start, end_us=end, interval_us=interval, agg=agg
            )
            want = reference(everything, None, start, end, interval, agg)
            assert_matches(got, want, f"{agg} {interval}")
    hour = {"start_us": H0, "end_us": H0 + HOUR_US, "interval_us": HOUR_US}
    lowest = await store.query_fleet_series(METRIC, device_ids=None, agg="min", **hour)
    first = await store.query_fleet_series(METRIC, device_ids=None, agg="first", **hour)
    assert [p.value for p in lowest] == [-99.0]
    assert [p.value for p in first] == [readings[("dev-a", H0)]]


async def test_first_and_last_ties_go_to_the_smallest_device_id(store: Store) -> None:
    """Readings of several devices at the very same time: the id that sorts first (bytewise,
    so upper-case MACs before lower-case names) gives first and last, in raw and rollup parts."""
    mac = "3C:E9:0E:72:12:4C"
    at = H0 + 30 * S
    await store.write_batch(
        WriteBatch(
            decoded=[
                msg("dev-b", T0, [(METRIC, at, 2.0)]),
                msg("dev-a", T0, [(METRIC, at, 1.0)]),
                msg(mac, T0, [(METRIC, at, 3.0)]),
            ]
        )
    )
    for devices, want in ((None, 3.0), (["dev-b", "dev-a"], 1.0), (["dev-b"], 2.0)):
        # 90 s reads raw readings, an hour the rollups.
        for interval in (90 * S, HOUR_US):
            for agg in ("first", "last"):
                points = await store.query_fleet_series(
                    METRIC,
                    device_ids=devices,
                    start_us=H0,
                    end_us=H0 + HOUR_US,
                    interval_us=interval,
                    agg=agg,
                )
                assert [(p.value, p.count) for p in points] == [(want, len(devices or "abc"))]


@pytest.mark.parametrize("agg", AGGREGATES)
async def test_empty_fleet_series(store: Store, agg: Aggregate) -> None:
    """No devices asked for, only unknown ones, an unknown metric, an empty range: no points."""
    await store.write_batch(WriteBatch(decoded=[msg("dev-a", T0, [(METRIC, H0 + S, 1.0)])]))

    async def series(metric: str, devices: list[str] | None, end: int) -> list[SeriesPoint]:
        return await store.query_fleet_series(
            metric, device_ids=devices, start_us=H0, end_us=end, interval_us=MINUTE_US, agg=agg
        )

    assert await series(METRIC, [], H0 + HOUR_US) == []
    assert await series(METRIC, ["nobody"], H0 + HOUR_US) == []
    assert await series("nope", None, H0 + HOUR_US) == []
    assert await series(METRIC, None, H0) == []
    assert [p.count for p in await series(METRIC, None, H0 + HOUR_US)] == [1]
