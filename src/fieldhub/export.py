"""Data export: readings (raw or aggregated) of many devices as rows, then as CSV or JSON lines.

Everything here is an async generator over the `Store` interface, so an export of any size holds
at most one store page per metric stream in memory (docs/export.md):

- raw readings come from `query_readings`, one metric at a time, paged with its (metric, ts)
  cursor;
- aggregates come from `query_series` alone (rollups outlive raw readings), in queries of at
  most about `SERIES_CHUNK_BUCKETS` points, found with counts over coarser buckets first when
  the range is longer, so long stretches without data cost nothing;
- the wide layout merges a device's per-metric streams by time (a k-way merge), so a device's
  history never has to fit in memory;
- all devices are read page by page through `list_devices`.
"""

from __future__ import annotations

import csv
import heapq
import io
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import orjson

from fieldhub.protocol.timestamps import US_PER_S
from fieldhub.store.base import Store
from fieldhub.store.rollups import ROLLUP_TABLES
from fieldhub.store.types import Aggregate

ExportFormat = Literal["csv", "jsonl"]
Layout = Literal["wide", "long"]

# Raw readings asked of the store per page, per metric stream.
DEFAULT_PAGE_SIZE = 10_000
# Aggregated buckets asked of the store per query, per metric stream.
SERIES_CHUNK_BUCKETS = 10_000
# Devices asked of the store per page when the export covers every device.
DEVICE_PAGE_SIZE = 1_000
# Encoded bytes gathered before they are handed on (one HTTP chunk).
CHUNK_BYTES = 64 * 1024
# Column names of the wide layout besides the metrics.
WIDE_KEY_COLUMNS = ("device", "ts")
# Which metrics the wide layout renames: a key column's name behind zero or more underscores
# (`ts`, `_ts`, `__device`). See `wide_column`.
_KEY_LIKE = re.compile("_*(?:" + "|".join(map(re.escape, WIDE_KEY_COLUMNS)) + ")")
MEDIA_TYPES: Mapping[ExportFormat, str] = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
DEFAULT_LAYOUT: Mapping[ExportFormat, Layout] = {"csv": "wide", "jsonl": "long"}


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """What to export. `devices`/`metrics` None means every device / each device's metrics."""

    devices: Sequence[str] | None
    metrics: Sequence[str] | None
    start_us: int
    end_us: int
    # None: raw readings; else buckets of this width aggregated with `agg`.
    interval_us: int | None = None
    agg: Aggregate = "avg"
    page_size: int = DEFAULT_PAGE_SIZE


@dataclass(frozen=True, slots=True)
class LongRow:
    """One reading (or one bucket's aggregate) of one metric of one device."""

    device: str
    metric: str
    ts_us: int
    value: float


@dataclass(frozen=True, slots=True)
class WideRow:
    """The values of one device's metrics at one time; metrics without a value are absent."""

    device: str
    ts_us: int
    values: dict[str, float]


Point = tuple[int, float]


async def all_device_ids(
    store: Store, *, now_us: int, page_size: int = DEVICE_PAGE_SIZE
) -> AsyncIterator[str]:
    """Every device id, in id order, one `list_devices` page at a time."""
    after: str | None = None
    while True:
        rows = await store.list_devices(
            profile=None, presence=None, search=None, limit=page_size, after=after, now_us=now_us
        )
        for row in rows:
            yield row.device_id
        if len(rows) < page_size:
            return
        after = rows[-1].device_id


async def device_ids(store: Store, spec: ExportSpec, *, now_us: int) -> AsyncIterator[str]:
    """The devices of the export: those listed, in their order, or every device by id."""
    if spec.devices is not None:
        for device in spec.devices:
            yield device
        return
    async for device in all_device_ids(store, now_us=now_us):
        yield device


async def raw_points(
    store: Store, device: str, metric: str, spec: ExportSpec
) -> AsyncGenerator[Point, None]:
    """One metric's readings in [start, end) by time, `spec.page_size` per store query."""
    after: tuple[str, int] | None = None
    while True:
        rows = await store.query_readings(
            device,
            metrics=[metric],
            start_us=spec.start_us,
            end_us=spec.end_us,
            limit=spec.page_size,
            after=after,
            descending=False,
        )
        for row in rows:
            yield row.ts_us, float(row.value)
        if len(rows) < spec.page_size:
            return
        after = (rows[-1].metric, rows[-1].ts_us)


async def series_points(
    store: Store,
    device: str,
    metric: str,
    spec: ExportSpec,
    *,
    chunk_buckets: int = SERIES_CHUNK_BUCKETS,
) -> AsyncGenerator[Point, None]:
    """One metric's buckets in [start, end) by time: the series endpoint's points, with no store
    query returning more than about `chunk_buckets` of them.

    Only `query_series` is read (never raw readings to find where data is: retention deletes raw
    readings long before the rollups the series are read from).
    """
    if spec.interval_us is None:
        raise ValueError("series_points needs spec.interval_us")
    async for point in _series_range(
        store, device, metric, spec, spec.start_us, spec.end_us, chunk_buckets
    ):
        yield point


def _rollup_sizes(interval_us: int) -> frozenset[int]:
    return frozenset(size for size, _ in ROLLUP_TABLES if interval_us % size == 0)


def _coarse_interval(interval_us: int, buckets: int, chunk_buckets: int) -> int:
    """A multiple of the interval giving at most about `chunk_buckets` buckets over `buckets`
    fine ones, read from the same rollup tier as the interval (so a coarse count is non-zero
    exactly where the fine buckets have data, whatever retention kept of each tier)."""
    factor = -(-buckets // chunk_buckets)
    tier = _rollup_sizes(interval_us)
    while _rollup_sizes(factor * interval_us) != tier:
        factor += 1
    return factor * interval_us


async def _series_range(
    store: Store,
    device: str,
    metric: str,
    spec: ExportSpec,
    start_us: int,
    end_us: int,
    chunk_buckets: int,
) -> AsyncIterator[Point]:
    """The points of [start, end); `start` is the export's start or a bucket boundary.

    A range of at most `chunk_buckets` buckets is one query. A longer one is first counted over
    coarse buckets (each a whole number of fine ones, at most about `chunk_buckets` of them):
    runs of non-empty coarse buckets that cannot hold more than `chunk_buckets` points together
    are read with one query each, empty stretches cost nothing, and a coarse bucket that could
    hold more is split the same way. Every fine bucket lies in exactly one query, with the same
    value as in one query over the whole range.
    """
    assert spec.interval_us is not None
    interval = spec.interval_us
    buckets = -(-(end_us - (start_us - start_us % interval)) // interval)
    if buckets <= chunk_buckets:
        async for point in _query_points(store, device, metric, spec, start_us, end_us):
            yield point
        return
    coarse = _coarse_interval(interval, buckets, chunk_buckets)
    counts = await store.query_series(
        device, metric, start_us=start_us, end_us=end_us, interval_us=coarse, agg="count"
    )
    window: list[int] | None = None  # [start, end) of the coarse buckets read together
    bound = 0  # the most points the window can hold
    for count in counts:
        lo, hi = max(start_us, count.ts_us), min(end_us, count.ts_us + coarse)
        most = min(count.count, coarse // interval)
        if window is not None and bound + most <= chunk_buckets:
            window[1] = hi
            bound += most
            continue
        if window is not None:
            async for point in _query_points(store, device, metric, spec, *window):
                yield point
            window = None
        if most <= chunk_buckets:
            window, bound = [lo, hi], most
        else:
            async for point in _series_range(store, device, metric, spec, lo, hi, chunk_buckets):
                yield point
    if window is not None:
        async for point in _query_points(store, device, metric, spec, *window):
            yield point


async def _query_points(
    store: Store, device: str, metric: str, spec: ExportSpec, start_us: int, end_us: int
) -> AsyncIterator[Point]:
    """One `query_series` of the export's interval and aggregate over [start, end)."""
    assert spec.interval_us is not None
    points = await store.query_series(
        device, metric, start_us=start_us, end_us=end_us, interval_us=spec.interval_us, agg=spec.agg
    )
    for point in points:
        yield point.ts_us, float(point.value)


def metric_points(
    store: Store, device: str, metric: str, spec: ExportSpec
) -> AsyncGenerator[Point, None]:
    """One metric of one device by time: raw readings, or buckets when the spec has an interval."""
    if spec.interval_us is None:
        return raw_points(store, device, metric, spec)
    return series_points(store, device, metric, spec)


async def device_metric_names(store: Store, device: str) -> list[str]:
    """The metrics a device has reported, sorted by name."""
    return sorted(m.name for m in await store.device_metrics(device))


async def merge_by_time(
    streams: Mapping[str, AsyncGenerator[Point, None]],
) -> AsyncIterator[tuple[int, dict[str, float]]]:
    """(ts, {metric: value}) for every time at which any stream has a point, in time order.

    Each stream must yield strictly increasing times (one metric's readings are unique per time).
    Holds one point per stream besides what the streams themselves buffer. Closes the streams.
    """
    heap: list[tuple[int, int, str, float]] = []
    try:
        for order, (name, stream) in enumerate(streams.items()):
            head = await anext(stream, None)
            if head is not None:
                heap.append((head[0], order, name, head[1]))
        heapq.heapify(heap)
        while heap:
            ts = heap[0][0]
            values: dict[str, float] = {}
            while heap and heap[0][0] == ts:
                _, order, name, value = heapq.heappop(heap)
                values[name] = value
                head = await anext(streams[name], None)
                if head is not None:
                    heapq.heappush(heap, (head[0], order, name, head[1]))
            yield ts, values
    finally:
        for stream in streams.values():
            await stream.aclose()


async def long_rows(store: Store, spec: ExportSpec, *, now_us: int) -> AsyncIterator[LongRow]:
    """One row per reading (or bucket): by device, then metric (listed order, else by name),
    then time."""
    async for device in device_ids(store, spec, now_us=now_us):
        names = (
            list(spec.metrics)
            if spec.metrics is not None
            else await device_metric_names(store, device)
        )
        for metric in names:
            async for ts_us, value in metric_points(store, device, metric, spec):
                yield LongRow(device, metric, ts_us, value)


def wide_column(metric: str) -> str:
    """The wide layout's column name for `metric`: the metric's own name, except that a key
    column's name behind zero or more underscores takes one more (`ts` -> `_ts`, `_ts` -> `__ts`,
    `device` -> `_device`).

    A device may name a metric anything (`{"ts": true}` stores a metric `ts`), and one such
    metric must not make the wide layout impossible for everyone. The rule depends on the name
    alone, so a column keeps its name from one export to the next; it is one-to-one, and no
    column is a key column: the renamed columns are exactly the key-like names with at least
    one underscore, names no metric keeps as its own column. docs/export.md states it.
    """
    return "_" + metric if _KEY_LIKE.fullmatch(metric) else metric


async def wide_columns(store: Store, spec: ExportSpec, *, now_us: int) -> list[str]:
    """The metrics of the wide layout's columns: those listed, in their order, or the union of
    the exported devices' metrics, sorted (each column's name is `wide_column(metric)`)."""
    if spec.metrics is not None:
        return list(spec.metrics)
    union: set[str] = set()
    async for device in device_ids(store, spec, now_us=now_us):
        union.update(await device_metric_names(store, device))
    return sorted(union)


async def wide_rows(
    store: Store, spec: ExportSpec, columns: Sequence[str], *, now_us: int
) -> AsyncIterator[WideRow]:
    """One row per (device, time) at which any of `columns` has a value: by device, then time.

    Each device's metric streams are merged by time, so memory holds one store page per metric
    stream, whatever the length of the device's history.
    """
    async for device in device_ids(store, spec, now_us=now_us):
        have = {m.name for m in await store.device_metrics(device)}
        streams = {
            metric: metric_points(store, device, metric, spec)
            for metric in columns
            if metric in have
        }
        if not streams:
            continue
        async for ts_us, values in merge_by_time(streams):
            yield WideRow(device, ts_us, values)


class TimeFormatter:
    """`format_us` (the API's ISO 8601 UTC times) at a third of its cost for runs of times on
    the same day, as an export's are: the date is formatted once per day, the rest with
    integer arithmetic."""

    def __init__(self) -> None:
        self.day: int | None = None
        self.date = ""

    def __call__(self, ts_us: int) -> str:
        seconds, micros = divmod(ts_us, US_PER_S)
        day, second = divmod(seconds, 86400)
        if day != self.day:
            self.date = datetime.fromtimestamp(day * 86400, tz=UTC).date().isoformat()
            self.day = day
        hours, rest = divmod(second, 3600)
        minutes, secs = divmod(rest, 60)
        if micros:
            return f"{self.date}T{hours:02d}:{minutes:02d}:{secs:02d}.{micros:06d}Z"
        return f"{self.date}T{hours:02d}:{minutes:02d}:{secs:02d}Z"


def format_value(value: float) -> str:
    """A value as CSV text: Python's shortest round-tripping repr (`21.5`, `1e-07`)."""
    return repr(float(value))


class _CsvBuffer:
    """csv.writer into a reusable text buffer, drained as UTF-8 bytes."""

    def __init__(self) -> None:
        self.text = io.StringIO()
        self.writer = csv.writer(self.text, lineterminator="\r\n")

    def row(self, cells: Sequence[str]) -> None:
        self.writer.writerow(cells)

    def size(self) -> int:
        return self.text.tell()

    def drain(self) -> bytes:
        data = self.text.getvalue().encode()
        self.text.seek(0)
        self.text.truncate()
        return data


async def export_bytes(
    store: Store,
    spec: ExportSpec,
    *,
    fmt: ExportFormat,
    layout: Layout,
    now_us: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> AsyncIterator[bytes]:
    """The whole export as chunks of about `chunk_bytes`; always at least one chunk (the CSV
    header, or b"" for an empty JSON lines export).

    CSV (RFC 4180, CRLF line ends): long `device,metric,ts,value`; wide
    `device,ts,<metric>...` with an empty cell where a metric has no value at that time.
    JSON lines: long `{"device","metric","ts","value"}`; wide `{"device","ts","<metric>":...}`
    holding only the metrics with a value at that time. Wide columns are named by `wide_column`
    (a metric named `ts` is the column `_ts`). Times are ISO 8601 UTC like the API's.
    """
    pending: list[bytes] = []
    size = 0
    format_us = TimeFormatter()
    if fmt == "csv":
        out = _CsvBuffer()
        if layout == "long":
            out.row(["device", "metric", "ts", "value"])
            async for lrow in long_rows(store, spec, now_us=now_us):
                out.row([lrow.device, lrow.metric, format_us(lrow.ts_us), format_value(lrow.value)])
                if out.size() >= chunk_bytes:
                    yield out.drain()
        else:
            columns = await wide_columns(store, spec, now_us=now_us)
            out.row([*WIDE_KEY_COLUMNS, *map(wide_column, columns)])
            async for wrow in wide_rows(store, spec, columns, now_us=now_us):
                cells = [wrow.device, format_us(wrow.ts_us)]
                cells += [format_value(wrow.values[c]) if c in wrow.values else "" for c in columns]
                out.row(cells)
                if out.size() >= chunk_bytes:
                    yield out.drain()
        yield out.drain()
        return
    if layout == "long":
        async for lrow in long_rows(store, spec, now_us=now_us):
            line = orjson.dumps(
                {
                    "device": lrow.device,
                    "metric": lrow.metric,
                    "ts": format_us(lrow.ts_us),
                    "value": lrow.value,
                },
                option=orjson.OPT_APPEND_NEWLINE,
            )
            pending.append(line)
            size += len(line)
            if size >= chunk_bytes:
                yield b"".join(pending)
                pending.clear()
                size = 0
    else:
        columns = await wide_columns(store, spec, now_us=now_us)
        named = [(metric, wide_column(metric)) for metric in columns]
        async for wrow in wide_rows(store, spec, columns, now_us=now_us):
            record: dict[str, object] = {"device": wrow.device, "ts": format_us(wrow.ts_us)}
            for metric, column in named:
                if metric in wrow.values:
                    record[column] = wrow.values[metric]
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
            pending.append(line)
            size += len(line)
            if size >= chunk_bytes:
                yield b"".join(pending)
                pending.clear()
                size = 0
    yield b"".join(pending)
