"""`GET /api/v1/series`: one metric aggregated across many devices (the whole fleet by default)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fieldhub.api.deps import NowDep, StoreDep
from fieldhub.api.errors import ERROR_RESPONSES, InvalidParameter, NotFound
from fieldhub.api.models import SeriesPointPublic, Time
from fieldhub.api.params import (
    DEFAULT_SERIES_WINDOW_US,
    MAX_SERIES_BUCKETS,
    auto_interval,
    parse_interval,
    parse_range,
)

# The device list's parsing (comma-separated, any MAC spelling, repeats dropped, 422 naming the
# bad id) and the bounds are the export's: one syntax for `devices=` across the API.
from fieldhub.api.routes.export import MAX_INTERVAL_US, MAX_LIST_CHARS
from fieldhub.api.routes.export import _device_ids as parse_device_ids
from fieldhub.protocol.timestamps import US_PER_S, format_us
from fieldhub.store.base import Aggregate

router = APIRouter(prefix="/api/v1/series", tags=["series"], responses=ERROR_RESPONSES)

TimeParam = Annotated[
    str | None, Query(min_length=1, max_length=64, description="ISO 8601 or epoch s/ms/us")
]


class FleetSeriesPublic(BaseModel):
    """One metric aggregated over time buckets across devices."""

    # The devices asked for, canonical ids; null: every device that reported the metric.
    devices: list[str] | None
    metric: str
    agg: str
    interval_s: float
    start: Time
    end: Time
    points: list[SeriesPointPublic]


def series_window(
    start: str | None, end: str | None, interval: str | None, now_us: int
) -> tuple[int, int, int]:
    """(start, end, interval) in microseconds as a series request means them: end defaults to
    now, start to a day before end, the interval to ~300 buckets; 422 with a message when the
    range is empty, would need more than MAX_SERIES_BUCKETS buckets or an interval is too long
    for the stores. The rules of `GET /api/v1/devices/{id}/series`, plus that last bound."""
    start_us, end_us = parse_range(start, end)
    end_us = end_us if end_us is not None else now_us + 1
    start_us = start_us if start_us is not None else end_us - DEFAULT_SERIES_WINDOW_US
    if start_us >= end_us:
        raise InvalidParameter("start must be before end (end defaults to now)")
    if interval:
        interval_us = parse_interval(interval)
        # Beyond it the bucket arithmetic leaves the stores' 64-bit integers (a 500 otherwise).
        if interval_us > MAX_INTERVAL_US:
            raise InvalidParameter(f"interval {interval!r} is over the 3660-day maximum")
    else:
        interval_us = auto_interval(end_us - start_us)
    buckets = (end_us - start_us) // interval_us
    if buckets > MAX_SERIES_BUCKETS:
        raise InvalidParameter(
            f"{buckets} buckets requested; at most {MAX_SERIES_BUCKETS}: widen the interval or "
            "narrow the range"
        )
    return start_us, end_us, interval_us


@router.get("", response_model=FleetSeriesPublic)
async def get_fleet_series(
    store: StoreDep,
    now: NowDep,
    metric: Annotated[str, Query(min_length=1, max_length=128)],
    devices: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_LIST_CHARS,
            description="Comma-separated device ids (any MAC spelling); default: every device "
            "that reported the metric",
        ),
    ] = None,
    start: TimeParam = None,
    end: TimeParam = None,
    interval: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=32,
            description="Bucket width: 30s, 5m, 1h, 1d; default ~300 buckets",
        ),
    ] = None,
    agg: Aggregate = "avg",
) -> FleetSeriesPublic:
    """One metric aggregated per bucket (aligned to multiples of the interval, UTC) across the
    devices' readings pooled together: avg is their sum over their count, min/max/sum/count are
    over every reading, first (last) is the earliest (latest) reading's value, a tie in time
    going to the device whose id sorts first. `count` of each point is the readings it covers."""
    start_us, end_us, interval_us = series_window(start, end, interval, now)
    device_list = parse_device_ids(devices)
    for device in device_list or []:
        # As the per-device series: an id that names no device is a mistake worth a 404, not
        # a silently emptier average.
        if await store.get_device(device, now_us=now) is None:
            raise NotFound(f"no device {device!r}")
    points = await store.query_fleet_series(
        metric,
        device_ids=device_list,
        start_us=start_us,
        end_us=end_us,
        interval_us=interval_us,
        agg=agg,
    )
    return FleetSeriesPublic(
        devices=device_list,
        metric=metric,
        agg=agg,
        interval_s=interval_us / US_PER_S,
        start=format_us(start_us),
        end=format_us(end_us),
        points=[
            SeriesPointPublic(ts=format_us(p.ts_us), value=p.value, count=p.count) for p in points
        ],
    )
