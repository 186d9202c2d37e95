"""Per-minute and per-hour rollups: what they hold, how a batch updates them, how a series query
splits its range between them and the raw readings. Shared by every storage engine.

A rollup row holds, for one series (device, metric) and one bucket: count, sum, min, max, and
the first and last value with their times. Those combine exactly (counts and sums add, extremes
take the extreme, first/last take the earliest/latest), so a bucket updated by late or
backfilled data stays correct, and buckets of any multiple of the rollup's size are built from
rollup rows alone. Only readings a batch really inserted are added (duplicates are not), so a
redelivered message is not counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fieldhub.store.base import Aggregate, SeriesPoint

MINUTE_US = 60 * 1_000_000
HOUR_US = 60 * MINUTE_US
# Rollup tables by bucket size, largest first: a query uses the largest that divides its interval.
ROLLUP_TABLES: tuple[tuple[int, str], ...] = (
    (HOUR_US, "rollup_hour"),
    (MINUTE_US, "rollup_minute"),
)

# (device_id, metric_id, bucket, n, total, lo, hi, first_ts, first_value, last_ts, last_value)
RollupRow = tuple[int, int, int, int, float, float, float, int, float, int, float]


@dataclass(slots=True)
class Partial:
    """The aggregate state of one output bucket (or part of it)."""

    n: int
    total: float
    lo: float
    hi: float
    first_ts: int
    first: float
    last_ts: int
    last: float

    def merge(self, other: Partial) -> None:
        self.n += other.n
        self.total += other.total
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)
        if other.first_ts < self.first_ts:
            self.first_ts, self.first = other.first_ts, other.first
        if other.last_ts > self.last_ts:
            self.last_ts, self.last = other.last_ts, other.last

    def value(self, agg: Aggregate) -> float:
        if agg == "avg":
            return self.total / self.n
        if agg == "min":
            return self.lo
        if agg == "max":
            return self.hi
        if agg == "sum":
            return self.total
        if agg == "count":
            return float(self.n)
        return self.first if agg == "first" else self.last


def rollup_rows(inserted: Iterable[tuple[int, int, int, float]], size_us: int) -> list[RollupRow]:
    """Aggregate inserted readings (device_id, metric_id, ts, value) into buckets of `size_us`."""
    buckets: dict[tuple[int, int, int], Partial] = {}
    for device_pk, metric_pk, ts, value in inserted:
        key = (device_pk, metric_pk, ts - ts % size_us)
        part = buckets.get(key)
        if part is None:
            buckets[key] = Partial(1, value, value, value, ts, value, ts, value)
        else:
            part.merge(Partial(1, value, value, value, ts, value, ts, value))
    return [
        (d, m, b, p.n, p.total, p.lo, p.hi, p.first_ts, p.first, p.last_ts, p.last)
        for (d, m, b), p in sorted(buckets.items())
    ]


def upsert_sql(table: str, least: str, greatest: str) -> tuple[str, str]:
    """(head, tail) of the statement that adds rollup rows to `table`, around its VALUES or
    SELECT; `least`/`greatest` are the engine's two-argument min and max. The SET side reads
    the row as it was before the update (SQL's UPDATE semantics), so the order does not matter.
    """
    t = table
    head = (
        f"INSERT INTO {t} (device_id, metric_id, bucket, n, total, lo, hi, first_ts, "
        "first_value, last_ts, last_value) "
    )
    tail = (
        " ON CONFLICT (device_id, metric_id, bucket) DO UPDATE SET "
        f"n = {t}.n + excluded.n, total = {t}.total + excluded.total, "
        f"lo = {least}({t}.lo, excluded.lo), hi = {greatest}({t}.hi, excluded.hi), "
        f"first_value = CASE WHEN excluded.first_ts < {t}.first_ts "
        f"THEN excluded.first_value ELSE {t}.first_value END, "
        f"first_ts = {least}({t}.first_ts, excluded.first_ts), "
        f"last_value = CASE WHEN excluded.last_ts > {t}.last_ts "
        f"THEN excluded.last_value ELSE {t}.last_value END, "
        f"last_ts = {greatest}({t}.last_ts, excluded.last_ts)"
    )
    return head, tail


def partials_sql(
    part_table: str | None,
    ph: Callable[[str], str],
    in_devices: Callable[[str], str],
    *,
    first_last: bool,
    collate: str = "",
) -> str:
    """The query of one part's (bucket, n, total, lo, hi, first_ts, first, last_ts, last) rows
    for a metric over a set of devices (one device for a device's own series).

    `ph(name)` writes the engine's placeholder for metric, start, end, iv and (rollup tables
    with `first_last` only) size; `in_devices(column)` writes the engine's predicate keeping
    `column` to the device set (its parameters are the engine's business). The first and last
    values are read only with `first_last` (NULL otherwise): they cost a lookup per output
    bucket and device of the set, which a fleet-wide average should not pay.
    """
    metric = f"(SELECT id FROM metrics WHERE name = {ph('metric')})"
    if part_table is None:
        inner = (
            f"SELECT r.ts - (r.ts % {ph('iv')}) AS b, count(*) AS n, sum(r.value) AS total, "
            "min(r.value) AS lo, max(r.value) AS hi, min(r.ts) AS first_ts, max(r.ts) AS last_ts "
            f"FROM readings r WHERE {in_devices('r.device_id')} AND r.metric_id = {metric} "
            f"AND r.ts >= {ph('start')} AND r.ts < {ph('end')} GROUP BY b"
        )
    else:
        inner = (
            f"SELECT r.bucket - (r.bucket % {ph('iv')}) AS b, sum(r.n) AS n, "
            "sum(r.total) AS total, min(r.lo) AS lo, max(r.hi) AS hi, "
            "min(r.first_ts) AS first_ts, max(r.last_ts) AS last_ts "
            f"FROM {part_table} r WHERE {in_devices('r.device_id')} AND r.metric_id = {metric} "
            f"AND r.bucket >= {ph('start')} AND r.bucket < {ph('end')} GROUP BY b"
        )
    if first_last:
        first, last = (
            _edge_value_sql(part_table, end, metric, ph, in_devices, collate)
            for end in ("first", "last")
        )
    else:
        first = last = "NULL"
    return (
        f"SELECT q.b, q.n, q.total, q.lo, q.hi, q.first_ts, {first}, q.last_ts, {last} "
        f"FROM ({inner}) q ORDER BY q.b"
    )


def _edge_value_sql(
    part_table: str | None,
    end: str,
    metric: str,
    ph: Callable[[str], str],
    in_devices: Callable[[str], str],
    collate: str,
) -> str:
    """The value of the reading at `q.first_ts` (end "first") or `q.last_ts` ("last").

    Across devices, several may have a reading at that very time: the device whose id sorts
    first gives it (bytewise; `collate` makes PostgreSQL sort as SQLite does). A bucket's parts
    cover disjoint times, so such ties are settled here, never in `Partial.merge`.
    """
    ts = f"q.{end}_ts"
    if part_table is None:
        table, column, at = "readings", "x.value", f"x.ts = {ts}"
    else:
        # The rollup row holding the earliest (latest) reading is the one whose bucket holds it.
        table, column = part_table, f"x.{end}_value"
        at = f"x.bucket = {ts} - {ts} % {ph('size')} AND x.{end}_ts = {ts}"
    return (
        f"(SELECT {column} FROM {table} x JOIN devices dd ON dd.id = x.device_id "
        f"WHERE {in_devices('x.device_id')} AND x.metric_id = {metric} AND {at} "
        f"ORDER BY dd.uid{collate} LIMIT 1)"
    )


def partial_rows(rows: Iterable[Sequence[Any]]) -> list[tuple[int, Partial]]:
    """(bucket, Partial) from rows of `partials_sql`. First and last values not read (NULL)
    become NaN: `Partial.value` never returns them for the aggregates they were skipped for."""
    return [
        (
            r[0],
            Partial(
                int(r[1]),
                float(r[2]),
                r[3],
                r[4],
                r[5],
                math.nan if r[6] is None else r[6],
                r[7],
                math.nan if r[8] is None else r[8],
            ),
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class Part:
    """A piece of a series query: [start, end) read from `table` (None: raw readings)."""

    table: str | None
    size_us: int
    start_us: int
    end_us: int


def plan_series(start_us: int, end_us: int, interval_us: int) -> list[Part]:
    """Split [start, end) into pieces read from the largest rollup whose size divides the
    interval, the unaligned edges from the next smaller one, and at last from raw readings."""
    sizes = [(size, table) for size, table in ROLLUP_TABLES if interval_us % size == 0]

    def split(start: int, end: int, level: int) -> list[Part]:
        if start >= end:
            return []
        if level >= len(sizes):
            return [Part(None, 0, start, end)]
        size, table = sizes[level]
        inner_start = -(-start // size) * size
        inner_end = end - end % size
        if inner_start >= inner_end:
            return split(start, end, level + 1)
        return [
            *split(start, inner_start, level + 1),
            Part(table, size, inner_start, inner_end),
            *split(inner_end, end, level + 1),
        ]

    return split(start_us, end_us, 0)


def combine(parts: Sequence[Sequence[tuple[int, Partial]]], agg: Aggregate) -> list[SeriesPoint]:
    """Series points from each part's (bucket, partial) rows, buckets merged across parts."""
    merged: dict[int, Partial] = {}
    for rows in parts:
        for bucket, partial in rows:
            held = merged.get(bucket)
            if held is None:
                merged[bucket] = partial
            else:
                held.merge(partial)
    return [
        SeriesPoint(bucket, float(merged[bucket].value(agg)), merged[bucket].n)
        for bucket in sorted(merged)
    ]
