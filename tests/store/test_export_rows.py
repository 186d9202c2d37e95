"""fieldhub/export.py over a real store (both engines): the wide merge, paging, windowed series,
device and metric order, and the exact bytes of each format and layout."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import pytest_asyncio

from fieldhub.export import (
    WIDE_KEY_COLUMNS,
    ExportSpec,
    LongRow,
    TimeFormatter,
    WideRow,
    export_bytes,
    long_rows,
    series_points,
    wide_column,
    wide_columns,
    wide_rows,
)
from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.protocol.timestamps import format_us
from fieldhub.store import SeriesPoint, Store, WriteBatch
from fieldhub.store.types import AGGREGATES, Aggregate, Selector

T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z: 20 s into a minute
S = 1_000_000
MIN = 60 * S
HOUR = 3600 * S


async def write(store: Store, device: str, readings: Sequence[tuple[str, int, float]]) -> None:
    """One message per distinct time, like a device reporting its sensors together."""
    by_time: dict[int, list[Reading]] = defaultdict(list)
    for metric, ts, value in readings:
        by_time[ts].append(Reading(metric, ts, value))
    await store.write_batch(
        WriteBatch(
            decoded=[
                Decoded(
                    device_id=device,
                    profile="native",
                    channel="telemetry",
                    received_us=ts + 1_000,
                    readings=rows,
                )
                for ts, rows in sorted(by_time.items())
            ]
        )
    )


def spec(**kwargs: object) -> ExportSpec:
    base: dict[str, object] = {
        "devices": None,
        "metrics": None,
        "start_us": T0,
        "end_us": T0 + 24 * HOUR,
    }
    base.update(kwargs)
    return ExportSpec(**base)  # type: ignore[arg-type]


async def collect_wide(store: Store, export: ExportSpec) -> tuple[list[str], list[WideRow]]:
    columns = await wide_columns(store, export, now_us=T0)
    return columns, [row async for row in wide_rows(store, export, columns, now_us=T0)]


async def collect_bytes(
    store: Store, export: ExportSpec, fmt: str, layout: str, chunk_bytes: int = 64 * 1024
) -> bytes:
    chunks = [
        chunk
        async for chunk in export_bytes(
            store,
            export,
            fmt=fmt,  # type: ignore[arg-type]
            layout=layout,  # type: ignore[arg-type]
            now_us=T0,
            chunk_bytes=chunk_bytes,
        )
    ]
    assert chunks, "export_bytes always yields at least one chunk"
    return b"".join(chunks)


@pytest.fixture
def small_fleet() -> dict[str, list[tuple[str, int, float]]]:
    """Two devices whose metrics report at different times (so wide rows have holes)."""
    return {
        "dev-a": [
            ("temp", T0, 20.5),
            ("temp", T0 + 10 * S, 21.0),
            ("temp", T0 + 20 * S, 21.5),
            ("hum", T0 + 10 * S, 40.0),
            ("hum", T0 + 30 * S, 41.25),
        ],
        "dev-b": [("rssi", T0 + 5 * S, -61.0), ("temp", T0 + 5 * S, 19.0)],
    }


@pytest_asyncio.fixture(loop_scope="function")
async def fleet(store: Store, small_fleet: dict[str, list[tuple[str, int, float]]]) -> Store:
    for device, readings in small_fleet.items():
        await write(store, device, readings)
    return store


# -- the wide merge ---------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 2, 10_000])
async def test_wide_rows_merge_each_devices_metrics_by_time(fleet: Store, page_size: int) -> None:
    """Pages of 1 or 2 readings force every stream across page boundaries mid-merge."""
    columns, rows = await collect_wide(fleet, spec(page_size=page_size))
    assert columns == ["hum", "rssi", "temp"]
    assert rows == [
        WideRow("dev-a", T0, {"temp": 20.5}),
        WideRow("dev-a", T0 + 10 * S, {"temp": 21.0, "hum": 40.0}),
        WideRow("dev-a", T0 + 20 * S, {"temp": 21.5}),
        WideRow("dev-a", T0 + 30 * S, {"hum": 41.25}),
        WideRow("dev-b", T0 + 5 * S, {"rssi": -61.0, "temp": 19.0}),
    ]


async def test_wide_merge_matches_a_reference_over_random_data(store: Store) -> None:
    """Four metrics at random, overlapping times, read one page of 7 at a time: every (ts,
    metric) lands in its row, rows in time order, nothing lost or doubled."""
    rng = random.Random(7)
    readings = [
        (metric, T0 + t * S, round(rng.uniform(-100, 100), 3))
        for metric in ("a", "b", "c", "d")
        for t in rng.sample(range(500), rng.randint(50, 200))
    ]
    await write(store, "dev-r", readings)
    reference: dict[int, dict[str, float]] = defaultdict(dict)
    for metric, ts, value in readings:
        reference[ts][metric] = value
    columns, rows = await collect_wide(store, spec(page_size=7))
    assert columns == ["a", "b", "c", "d"]
    assert [(r.ts_us, r.values) for r in rows] == sorted(reference.items())


async def test_wide_rows_take_only_the_listed_metrics_in_their_order(fleet: Store) -> None:
    columns, rows = await collect_wide(fleet, spec(metrics=["temp", "nope", "hum"]))
    assert columns == ["temp", "nope", "hum"]
    assert [(r.device, r.ts_us) for r in rows] == [
        ("dev-a", T0),
        ("dev-a", T0 + 10 * S),
        ("dev-a", T0 + 20 * S),
        ("dev-a", T0 + 30 * S),
        ("dev-b", T0 + 5 * S),
    ]
    assert rows[-1].values == {"temp": 19.0}


async def test_wide_respects_the_half_open_range(fleet: Store) -> None:
    _, rows = await collect_wide(fleet, spec(start_us=T0 + 10 * S, end_us=T0 + 30 * S))
    assert [(r.device, r.ts_us) for r in rows] == [("dev-a", T0 + 10 * S), ("dev-a", T0 + 20 * S)]


# Every name a key column of either layout has, or that looks like one (the escape's own names
# included), beside a plain metric: devices may name a metric anything.
KEY_LIKE_METRICS = {
    "ts": 1.0,
    "device": 2.0,
    "time": 3.0,
    "timestamp": 4.0,
    "device_id": 5.0,
    "metric": 6.0,
    "value": 7.0,
    "_ts": 8.0,
    "__ts": 9.0,
    "_device": 10.0,
    "ts_": 11.0,
    "temp": 12.0,
}
# The wide layout's column of each: a key column's name behind underscores takes one more.
KEY_LIKE_COLUMNS = {
    "ts": "_ts",
    "device": "_device",
    "_ts": "__ts",
    "__ts": "___ts",
    "_device": "__device",
}


@pytest.mark.parametrize(
    ("metric", "column"),
    [
        *KEY_LIKE_COLUMNS.items(),
        ("time", "time"),
        ("ts_", "ts_"),
        ("_ts_", "_ts_"),
        ("x_ts", "x_ts"),
        ("devices", "devices"),
        ("TS", "TS"),
        ("temp", "temp"),
    ],
)
def test_wide_column_renames_only_key_like_names(metric: str, column: str) -> None:
    assert wide_column(metric) == column


def test_wide_column_names_are_distinct_and_never_a_key_column() -> None:
    """One-to-one over every name built from underscores and a key column's letters, and no
    column is a key column."""
    names = [
        "_" * n + stem + "_" * m for n in range(4) for m in range(2) for stem in WIDE_KEY_COLUMNS
    ]
    names += ["t", "s", "dev", "_", "__", "device.ts"]
    columns = [wide_column(name) for name in names]
    assert len(set(columns)) == len(names)
    assert not set(columns) & set(WIDE_KEY_COLUMNS)


@pytest.mark.parametrize("listed", [False, True])
async def test_metrics_named_like_key_columns_export_in_every_format(
    store: Store, listed: bool
) -> None:
    """A metric may be named `ts`, `device` or any other key column: every format and layout
    still exports every value, the wide layout under the documented column names."""
    await write(store, "dev-ts", [(name, T0, value) for name, value in KEY_LIKE_METRICS.items()])
    await write(store, "dev-ts", [("ts", T0 + S, 0.5)])
    export = spec(metrics=list(KEY_LIKE_METRICS) if listed else None)
    order = list(KEY_LIKE_METRICS) if listed else sorted(KEY_LIKE_METRICS)
    columns = [KEY_LIKE_COLUMNS.get(name, name) for name in order]
    at = format_us(T0)
    later = format_us(T0 + S)

    wide_csv = (await collect_bytes(store, export, "csv", "wide")).decode()
    assert wide_csv.splitlines() == [
        ",".join(["device", "ts", *columns]),
        ",".join(["dev-ts", at, *(repr(KEY_LIKE_METRICS[name]) for name in order)]),
        ",".join(["dev-ts", later, *("0.5" if name == "ts" else "" for name in order)]),
    ]

    wide_jsonl = await collect_bytes(store, export, "jsonl", "wide")
    first, second = (orjson.loads(line) for line in wide_jsonl.splitlines())
    assert first == {
        "device": "dev-ts",
        "ts": at,
        **{KEY_LIKE_COLUMNS.get(name, name): value for name, value in KEY_LIKE_METRICS.items()},
    }
    assert list(first) == ["device", "ts", *columns]
    assert second == {"device": "dev-ts", "ts": later, "_ts": 0.5}

    # The long layout names metrics in a column of their own: nothing to rename.
    long_jsonl = await collect_bytes(store, export, "jsonl", "long")
    long_rows_seen = [orjson.loads(line) for line in long_jsonl.splitlines()]
    assert {(r["metric"], r["ts"]): r["value"] for r in long_rows_seen} == {
        **{(name, at): value for name, value in KEY_LIKE_METRICS.items()},
        ("ts", later): 0.5,
    }
    long_csv = (await collect_bytes(store, export, "csv", "long")).decode()
    assert len(long_csv.splitlines()) == 1 + len(KEY_LIKE_METRICS) + 1
    assert long_csv.startswith("device,metric,ts,value\r\ndev-ts,")


# -- long rows and device order ----------------------------------------------------------------


async def test_long_rows_by_device_then_metric_then_time(fleet: Store) -> None:
    rows = [row async for row in long_rows(fleet, spec(page_size=2), now_us=T0)]
    assert rows == [
        LongRow("dev-a", "hum", T0 + 10 * S, 40.0),
        LongRow("dev-a", "hum", T0 + 30 * S, 41.25),
        LongRow("dev-a", "temp", T0, 20.5),
        LongRow("dev-a", "temp", T0 + 10 * S, 21.0),
        LongRow("dev-a", "temp", T0 + 20 * S, 21.5),
        LongRow("dev-b", "rssi", T0 + 5 * S, -61.0),
        LongRow("dev-b", "temp", T0 + 5 * S, 19.0),
    ]


async def test_listed_devices_and_metrics_keep_their_order(fleet: Store) -> None:
    export = spec(devices=["dev-b", "dev-a"], metrics=["temp", "rssi"])
    rows = [(r.device, r.metric, r.ts_us) async for r in long_rows(fleet, export, now_us=T0)]
    assert rows == [
        ("dev-b", "temp", T0 + 5 * S),
        ("dev-b", "rssi", T0 + 5 * S),
        ("dev-a", "temp", T0),
        ("dev-a", "temp", T0 + 10 * S),
        ("dev-a", "temp", T0 + 20 * S),
    ]


async def test_every_device_is_read_page_by_page(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pages of 2 devices, 5 devices take three list_devices pages, none skipped."""
    monkeypatch.setattr("fieldhub.export.DEVICE_PAGE_SIZE", 2)
    for i in range(5):
        await write(store, f"dev-{i}", [("x", T0 + i * S, float(i))])
    rows = [row async for row in long_rows(store, spec(), now_us=T0)]
    assert [(r.device, r.value) for r in rows] == [(f"dev-{i}", float(i)) for i in range(5)]


# -- aggregated (interval) exports --------------------------------------------------------------


@pytest.mark.parametrize("agg", AGGREGATES)
async def test_windowed_series_equal_one_whole_range_query(store: Store, agg: Aggregate) -> None:
    """Windows of 3 buckets, long gaps without data and an unaligned start: the same points
    as query_series over the whole range."""
    rng = random.Random(3)
    times = sorted(
        {T0 + rng.randrange(0, 2 * HOUR, 1_000) for _ in range(300)}
        | {T0 + 20 * HOUR + rng.randrange(0, HOUR, 1_000) for _ in range(100)}
    )
    await write(store, "dev-s", [("v", ts, round(rng.uniform(-10, 10), 2)) for ts in times])
    start, end = T0 + 90 * S, T0 + 23 * HOUR
    export = spec(start_us=start, end_us=end, interval_us=5 * MIN, agg=agg)
    got = [p async for p in series_points(store, "dev-s", "v", export, chunk_buckets=3)]
    whole = await store.query_series(
        "dev-s", "v", start_us=start, end_us=end, interval_us=5 * MIN, agg=agg
    )
    assert got == [(p.ts_us, p.value) for p in whole]
    assert len(got) > 20


async def test_buckets_come_from_rollups_after_retention_deleted_the_raw_readings(
    store: Store,
) -> None:
    """Retention keeps rollups long after the raw readings: an hourly export of old data still
    has the series endpoint's points, though query_readings finds nothing."""
    await write(store, "dev-old", [("v", T0 + i * 7 * MIN, float(i)) for i in range(200)])
    await store.delete_older("raw", T0 + 100 * HOUR, selector=Selector(), keep=[])
    assert not await store.query_readings(
        "dev-old", metrics=None, start_us=None, end_us=None, limit=1, after=None, descending=False
    )
    export = spec(start_us=T0 - HOUR, end_us=T0 + 30 * HOUR, interval_us=HOUR, agg="sum")
    got = [p async for p in series_points(store, "dev-old", "v", export, chunk_buckets=4)]
    whole = await store.query_series(
        "dev-old", "v", start_us=export.start_us, end_us=export.end_us, interval_us=HOUR, agg="sum"
    )
    assert got == [(p.ts_us, p.value) for p in whole]
    assert sum(value for _, value in got) == sum(range(200))


async def test_coarse_counts_read_the_same_tier_as_the_buckets(store: Store) -> None:
    """Minute buckets over 7 h in chunks of 7 would be counted per hour (60 minutes), from the
    hour rollups; with those deleted, the counts must come from the minute tier or the export
    would skip everything."""
    await write(store, "dev-m", [("v", T0 + i * 50 * S, float(i)) for i in range(500)])
    await store.delete_older("hour", T0 + 100 * HOUR, selector=Selector(), keep=[])
    start = T0 - T0 % HOUR
    export = spec(start_us=start, end_us=start + 7 * HOUR, interval_us=MIN, agg="avg")
    got = [p async for p in series_points(store, "dev-m", "v", export, chunk_buckets=7)]
    whole = await store.query_series(
        "dev-m", "v", start_us=export.start_us, end_us=export.end_us, interval_us=MIN, agg="avg"
    )
    assert got == [(p.ts_us, p.value) for p in whole]
    assert len(got) > 300


async def test_empty_stretches_cost_no_queries(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two readings 20 h apart, 1 s buckets over a day (86,400) in chunks of 100: a count per
    coarse bucket finds the two, instead of 864 windows."""
    await write(store, "dev-sparse", [("v", T0 + 5 * S, 1.0), ("v", T0 + 20 * HOUR, 2.0)])
    calls: list[int] = []
    query_series = store.query_series

    async def counted(*args: Any, **kwargs: Any) -> list[SeriesPoint]:
        calls.append(kwargs["interval_us"])
        return await query_series(*args, **kwargs)

    monkeypatch.setattr(store, "query_series", counted)
    export = spec(start_us=T0, end_us=T0 + 24 * HOUR, interval_us=S, agg="max")
    got = [p async for p in series_points(store, "dev-sparse", "v", export, chunk_buckets=100)]
    assert got == [(T0 + 5 * S, 1.0), (T0 + 20 * HOUR, 2.0)]
    assert len(calls) <= 3, calls


async def test_wide_buckets_merge_like_raw_rows(fleet: Store) -> None:
    """Buckets start on whole minutes (the series endpoint's rule), here before `start`."""
    _, rows = await collect_wide(fleet, spec(interval_us=MIN, agg="max"))
    assert rows == [
        WideRow("dev-a", T0 - 20 * S, {"temp": 21.5, "hum": 41.25}),
        WideRow("dev-b", T0 - 20 * S, {"rssi": -61.0, "temp": 19.0}),
    ]


# -- bytes ----------------------------------------------------------------------------------------


async def test_csv_wide_bytes(fleet: Store) -> None:
    body = await collect_bytes(fleet, spec(), "csv", "wide")
    assert body.decode() == (
        "device,ts,hum,rssi,temp\r\n"
        "dev-a,2023-11-14T22:13:20Z,,,20.5\r\n"
        "dev-a,2023-11-14T22:13:30Z,40.0,,21.0\r\n"
        "dev-a,2023-11-14T22:13:40Z,,,21.5\r\n"
        "dev-a,2023-11-14T22:13:50Z,41.25,,\r\n"
        "dev-b,2023-11-14T22:13:25Z,,-61.0,19.0\r\n"
    )


async def test_csv_long_bytes(fleet: Store) -> None:
    body = await collect_bytes(fleet, spec(devices=["dev-b"]), "csv", "long")
    assert body.decode() == (
        "device,metric,ts,value\r\n"
        "dev-b,rssi,2023-11-14T22:13:25Z,-61.0\r\n"
        "dev-b,temp,2023-11-14T22:13:25Z,19.0\r\n"
    )


async def test_jsonl_bytes_in_both_layouts(fleet: Store) -> None:
    export = spec(devices=["dev-a"], metrics=["hum", "temp"], end_us=T0 + 15 * S)
    long = await collect_bytes(fleet, export, "jsonl", "long")
    assert [orjson.loads(line) for line in long.splitlines()] == [
        {"device": "dev-a", "metric": "hum", "ts": "2023-11-14T22:13:30Z", "value": 40.0},
        {"device": "dev-a", "metric": "temp", "ts": "2023-11-14T22:13:20Z", "value": 20.5},
        {"device": "dev-a", "metric": "temp", "ts": "2023-11-14T22:13:30Z", "value": 21.0},
    ]
    wide = await collect_bytes(fleet, export, "jsonl", "wide")
    assert wide == (
        b'{"device":"dev-a","ts":"2023-11-14T22:13:20Z","temp":20.5}\n'
        b'{"device":"dev-a","ts":"2023-11-14T22:13:30Z","hum":40.0,"temp":21.0}\n'
    )


@pytest.mark.parametrize(("fmt", "empty"), [("csv", b"device,ts\r\n"), ("jsonl", b"")])
async def test_an_empty_export_is_a_header_or_nothing(store: Store, fmt: str, empty: bytes) -> None:
    assert await collect_bytes(store, spec(), fmt, "wide") == empty


@pytest.mark.parametrize(("fmt", "layout"), [("csv", "wide"), ("csv", "long"), ("jsonl", "wide")])
async def test_small_chunks_concatenate_to_the_same_export(
    store: Store, fmt: str, layout: str
) -> None:
    rng = random.Random(5)
    await write(
        store,
        "dev-c",
        [
            (m, T0 + t * 1_000, rng.uniform(0, 1))
            for m in "xyz"
            for t in rng.sample(range(900), 300)
        ],
    )
    export = spec(page_size=50)
    whole = await collect_bytes(store, export, fmt, layout)
    assert await collect_bytes(store, export, fmt, layout, chunk_bytes=100) == whole
    assert whole.count(b"\n") > 300


def test_time_formatter_is_format_us() -> None:
    rng = random.Random(11)
    times = [0, 1, -1, T0, T0 + 1, T0 + 999_999, 253_402_300_799_999_999]
    times += [rng.randrange(-(10**16), 2 * 10**17) for _ in range(20_000)]
    times += sorted(rng.randrange(T0, T0 + 3 * 86400 * S) for _ in range(20_000))
    formatter = TimeFormatter()
    assert [formatter(ts) for ts in times] == [format_us(ts) for ts in times]
