"""Devices, their readings and aggregated series."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import StringConstraints

from fieldhub.api.auth import VIEWER
from fieldhub.api.cursors import decode_cursor, encode_cursor
from fieldhub.api.deps import DeviceIdDep, NowDep, StoreDep
from fieldhub.api.errors import ERROR_RESPONSES
from fieldhub.api.params import (
    DEFAULT_SERIES_WINDOW_US,
    IntervalParam,
    TimeParam,
    parse_range,
    series_window,
)
from fieldhub.errors import Invalid, NotFound
from fieldhub.protocol.timestamps import US_PER_S, format_us
from fieldhub.schemas import (
    DeviceDetail,
    DevicePublic,
    DevicesPublic,
    MetricPublic,
    PresenceEventPublic,
    PresencePublic,
    ReadingPublic,
    ReadingsPublic,
    SeriesPointPublic,
    SeriesPublic,
)
from fieldhub.store.base import Store
from fieldhub.store.types import Aggregate, DeviceRow, PresenceState

router = APIRouter(
    prefix="/api/v1/devices", tags=["devices"], responses=ERROR_RESPONSES, dependencies=[VIEWER]
)

MetricName = Annotated[str, StringConstraints(min_length=1, max_length=128)]


async def device_or_404(store: Store, device_id: str, now: int) -> DeviceRow:
    row = await store.get_device(device_id, now_us=now)
    if row is None:
        raise NotFound(f"no device {device_id!r}")
    return row


@router.get("", response_model=DevicesPublic)
async def list_devices(
    store: StoreDep,
    now: NowDep,
    profile: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    presence: Literal["online", "offline", "stale"] | None = None,
    online: Annotated[
        bool | None, Query(description="true = online; false = offline or stale")
    ] = None,
    search: Annotated[
        str | None, Query(min_length=1, max_length=100, description="Substring of id or attributes")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
) -> DevicesPublic:
    """Devices ordered by id, filtered by profile, presence or a search string; paginated."""
    after = decode_cursor(cursor, str)[0] if cursor else None
    states: list[PresenceState | None]
    if online is None:
        states = [presence]
    else:
        # Both filters given: the devices that satisfy both.
        wanted: list[PresenceState] = ["online"] if online else ["offline", "stale"]
        states = [s for s in wanted if presence is None or s == presence]
    rows: list[DeviceRow] = []
    count = 0
    for state in states:
        rows += await store.list_devices(
            profile=profile, presence=state, search=search, limit=limit + 1, after=after, now_us=now
        )
        count += await store.count_devices(
            profile=profile, presence=state, search=search, now_us=now
        )
    rows.sort(key=lambda r: r.device_id)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].device_id) if len(rows) > limit else None
    return DevicesPublic(
        data=[DevicePublic.of(r) for r in page], count=count, next_cursor=next_cursor
    )


@router.get("/{device_id}", response_model=DeviceDetail)
async def get_device(store: StoreDep, device_id: DeviceIdDep, now: NowDep) -> DeviceDetail:
    """One device with presence, attributes and each metric's latest value."""
    row = await device_or_404(store, device_id, now)
    metrics = await store.device_metrics(device_id)
    return DeviceDetail(
        **DevicePublic.of(row).model_dump(), metrics=[MetricPublic.of(m) for m in metrics]
    )


@router.get("/{device_id}/presence", response_model=PresencePublic)
async def get_presence(
    store: StoreDep,
    device_id: DeviceIdDep,
    now: NowDep,
    start: TimeParam = None,
    end: TimeParam = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> PresencePublic:
    """The newest `limit` presence changes in [start, end) (default: the last 24 h), oldest
    first. Unless truncated by `limit`, the first item is the last change before `start` when
    there is one, so the window's opening state is known."""
    start_us, end_us = parse_range(start, end)
    end_us = end_us if end_us is not None else now + 1
    start_us = start_us if start_us is not None else end_us - DEFAULT_SERIES_WINDOW_US
    if start_us >= end_us:
        raise Invalid("start must be before end (end defaults to now)")
    await device_or_404(store, device_id, now)
    events = await store.presence_history(device_id, start_us=start_us, end_us=end_us, limit=limit)
    return PresencePublic(
        device_id=device_id,
        data=[PresenceEventPublic(ts=format_us(e.ts_us), state=e.state) for e in events],
    )


@router.get("/{device_id}/readings", response_model=ReadingsPublic)
async def get_readings(
    store: StoreDep,
    device_id: DeviceIdDep,
    now: NowDep,
    metric: Annotated[
        list[MetricName] | None, Query(max_length=50, description="Repeat for several")
    ] = None,
    start: TimeParam = None,
    end: TimeParam = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    cursor: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
    order: Literal["asc", "desc"] = "asc",
) -> ReadingsPublic:
    """Raw readings in [start, end), ordered by metric then time; follow next_cursor for more."""
    start_us, end_us = parse_range(start, end)
    await device_or_404(store, device_id, now)
    after: tuple[str, int] | None = None
    if cursor:
        name, ts = decode_cursor(cursor, str, int)
        after = (name, ts)
    rows = await store.query_readings(
        device_id,
        metrics=metric,
        start_us=start_us,
        end_us=end_us,
        limit=limit + 1,
        after=after,
        descending=order == "desc",
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].metric, page[-1].ts_us) if len(rows) > limit else None
    return ReadingsPublic(
        device_id=device_id, data=[ReadingPublic.of(r) for r in page], next_cursor=next_cursor
    )


@router.get("/{device_id}/series", response_model=SeriesPublic)
async def get_series(
    store: StoreDep,
    device_id: DeviceIdDep,
    now: NowDep,
    metric: Annotated[str, Query(min_length=1, max_length=128)],
    start: TimeParam = None,
    end: TimeParam = None,
    interval: IntervalParam = None,
    agg: Aggregate = "avg",
) -> SeriesPublic:
    """One metric aggregated over buckets aligned to multiples of the interval (UTC)."""
    start_us, end_us, interval_us = series_window(start, end, interval, now)
    await device_or_404(store, device_id, now)
    points = await store.query_series(
        device_id, metric, start_us=start_us, end_us=end_us, interval_us=interval_us, agg=agg
    )
    return SeriesPublic(
        device_id=device_id,
        metric=metric,
        agg=agg,
        interval_s=interval_us / US_PER_S,
        start=format_us(start_us),
        end=format_us(end_us),
        points=[
            SeriesPointPublic(ts=format_us(p.ts_us), value=p.value, count=p.count) for p in points
        ],
    )
