"""`GET /api/v1/series`: one metric aggregated across many devices (the whole fleet by default)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fieldhub.api.auth import VIEWER
from fieldhub.api.deps import NowDep, StoreDep
from fieldhub.api.errors import ERROR_RESPONSES
from fieldhub.api.params import (
    IntervalParam,
    TimeParam,
    series_window,
)

# The device list's parsing (comma-separated, any MAC spelling, repeats dropped, 422 naming the
# bad id) and the bounds are the export's: one syntax for `devices=` across the API.
from fieldhub.api.routes.export import MAX_LIST_CHARS
from fieldhub.api.routes.export import _device_ids as parse_device_ids
from fieldhub.errors import NotFound
from fieldhub.protocol.timestamps import US_PER_S, format_us
from fieldhub.schemas import SeriesPointPublic, Time
from fieldhub.store.types import Aggregate

router = APIRouter(
    prefix="/api/v1/series", tags=["series"], responses=ERROR_RESPONSES, dependencies=[VIEWER]
)


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
    interval: IntervalParam = None,
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
