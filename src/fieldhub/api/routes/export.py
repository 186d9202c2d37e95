"""`GET /api/v1/export`: readings of many devices as one streamed CSV or JSON lines file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from fieldhub.api.auth import VIEWER
from fieldhub.api.deps import NowDep, StoreDep
from fieldhub.api.errors import ERROR_RESPONSES
from fieldhub.api.params import (
    DEFAULT_SERIES_WINDOW_US,
    TimeParam,
    parse_interval,
    parse_range,
)
from fieldhub.errors import Invalid, NotFound
from fieldhub.export import (
    DEFAULT_LAYOUT,
    MEDIA_TYPES,
    ExportSpec,
    Layout,
    export_bytes,
)
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.protocol.timestamps import US_PER_S
from fieldhub.store.types import Aggregate

router = APIRouter(prefix="/api/v1/export", tags=["export"], dependencies=[VIEWER])

# Longest bucket an export may ask for: beyond it the bucket arithmetic leaves the stores' range.
MAX_METRIC_CHARS = 128
# Each list may be this long: URL-encoded (up to 12 bytes a character) both still fit, with the
# other parameters, in the 64 KiB request line the HTTP server accepts.
MAX_LIST_CHARS = 2000


_OK_RESPONSE = {
    "description": "The export, streamed (chunked): CSV or JSON lines",
    "content": {
        MEDIA_TYPES["csv"]: {"schema": {"type": "string"}},
        MEDIA_TYPES["jsonl"]: {"schema": {"type": "string"}},
    },
}


def _split(name: str, value: str | None) -> list[str] | None:
    """A comma-separated list, without repeats, in the given order; None when not given."""
    if value is None:
        return None
    parts = [part.strip() for part in value.split(",")]
    if any(not part for part in parts):
        raise Invalid(f"{name}: empty name in the comma-separated list {value!r}")
    return list(dict.fromkeys(parts))


def _device_ids(value: str | None) -> list[str] | None:
    raw = _split("devices", value)
    if raw is None:
        return None
    try:
        return list(dict.fromkeys(canonical_device_id(part) for part in raw))
    except InvalidDeviceId as exc:
        raise Invalid(f"devices: {exc}") from None


def _filename_time(ts_us: int, name: str) -> str:
    """`20260123T140000Z`: a time fit for a file name (and a check that it is a real date)."""
    try:
        moment = datetime.fromtimestamp(ts_us // US_PER_S, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise Invalid(f"{name} is out of the supported time range") from None
    return moment.strftime("%Y%m%dT%H%M%SZ")


async def _nonempty(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        if chunk:
            yield chunk


@router.get(
    "",
    response_class=StreamingResponse,
    responses={200: _OK_RESPONSE, **ERROR_RESPONSES},
)
async def export(
    store: StoreDep,
    now: NowDep,
    devices: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_LIST_CHARS,
            description="Comma-separated device ids (any MAC spelling); default: every device",
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_LIST_CHARS,
            description="Comma-separated metric names; default: each device's metrics",
        ),
    ] = None,
    start: TimeParam = None,
    end: TimeParam = None,
    interval: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=32,
            description="Bucket width (30s, 5m, 1h, 1d) to aggregate with `agg`; "
            "default: raw readings",
        ),
    ] = None,
    agg: Annotated[
        Aggregate | None, Query(description="Aggregate of each bucket (needs interval); avg")
    ] = None,
    fmt: Annotated[
        Literal["csv", "jsonl"], Query(alias="format", description="csv or jsonl (JSON lines)")
    ] = "csv",
    layout: Annotated[
        Literal["wide", "long"] | None,
        Query(
            description="wide: a row per device and time, a column per metric (default for "
            "csv); long: a row per reading (default for jsonl)"
        ),
    ] = None,
) -> StreamingResponse:
    """Readings of many devices in [start, end) (default: the last 24 h) as one file, raw or
    aggregated per `interval`, streamed as it is read from the store (docs/export.md)."""
    start_us, end_us = parse_range(start, end)
    end_us = end_us if end_us is not None else now + 1
    start_us = start_us if start_us is not None else end_us - DEFAULT_SERIES_WINDOW_US
    if start_us >= end_us:
        raise Invalid("start must be before end (end defaults to now)")
    filename = (
        f"fieldhub-export-{_filename_time(start_us, 'start')}-{_filename_time(end_us, 'end')}"
    )
    interval_us: int | None = None
    if interval is not None:
        interval_us = parse_interval(interval)
    elif agg is not None:
        raise Invalid("agg needs an interval (without one the export is raw readings)")
    device_list = _device_ids(devices)
    metric_list = _split("metrics", metrics)
    if metric_list is not None:
        long_names = [m for m in metric_list if len(m) > MAX_METRIC_CHARS]
        if long_names:
            raise Invalid(
                f"metrics: {long_names[0][:40]!r}... is over {MAX_METRIC_CHARS} characters"
            )
    for device in device_list or []:
        if await store.get_device(device, now_us=now) is None:
            raise NotFound(f"no device {device!r}")
    chosen: Layout = layout or DEFAULT_LAYOUT[fmt]
    spec = ExportSpec(
        devices=device_list,
        metrics=metric_list,
        start_us=start_us,
        end_us=end_us,
        interval_us=interval_us,
        agg=agg or "avg",
    )
    chunks = export_bytes(store, spec, fmt=fmt, layout=chosen, now_us=now)
    # The first chunk is read before answering: a store failure found while starting still gets
    # a proper status; later failures can only cut the stream short.
    first = await anext(chunks)
    return StreamingResponse(
        _nonempty(first, chunks),
        media_type=MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{filename}.{fmt}"',
            "Cache-Control": "no-store",
        },
    )
