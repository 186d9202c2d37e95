"""query_readings: filters, [start, end) bounds, cursor paging in both directions."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import pytest_asyncio

from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.store import ReadingRow, Store, WriteBatch

T0 = 1_700_000_000_000_000
S = 1_000_000
METRICS = ("temp", "hum", "press")
N = 20  # readings per metric, one per second from T0


@pytest_asyncio.fixture(loop_scope="function")
async def filled(store: Store) -> Store:
    """dev-1 and dev-2 with N readings of each metric, one message per second."""
    decoded = [
        Decoded(
            device_id=device_id,
            profile="native",
            channel="telemetry",
            received_us=T0 + i * S + 500,
            readings=[
                Reading(metric, T0 + i * S, offset + m * 100 + i)
                for m, metric in enumerate(METRICS)
            ],
        )
        for device_id, offset in (("dev-1", 0.0), ("dev-2", 10_000.0))
        for i in range(N)
    ]
    await store.write_batch(WriteBatch(decoded=decoded))
    return store


def expected(
    metrics: Sequence[str] = METRICS,
    start: int | None = None,
    end: int | None = None,
    *,
    descending: bool = False,
) -> list[tuple[str, int, float]]:
    """What dev-1 holds, ordered by metric name then time."""
    rows = [
        (metric, T0 + i * S, float(METRICS.index(metric) * 100 + i))
        for metric in sorted(metrics)
        for i in range(N)
        if (start is None or T0 + i * S >= start) and (end is None or T0 + i * S < end)
    ]
    if descending:
        rows.sort(key=lambda r: (r[0], -r[1]))
    return rows


async def query(
    store: Store,
    *,
    metrics: Sequence[str] | None = None,
    start_us: int | None = None,
    end_us: int | None = None,
    limit: int = 10_000,
    after: tuple[str, int] | None = None,
    descending: bool = False,
    device_id: str = "dev-1",
) -> list[ReadingRow]:
    return await store.query_readings(
        device_id,
        metrics=metrics,
        start_us=start_us,
        end_us=end_us,
        limit=limit,
        after=after,
        descending=descending,
    )


def triples(rows: list[ReadingRow]) -> list[tuple[str, int, float]]:
    return [(r.metric, r.ts_us, r.value) for r in rows]


async def test_all_readings_ordered_by_metric_then_time(filled: Store) -> None:
    """No filters: everything of that device, none of the other, with its receive time."""
    rows = await query(filled)

    assert triples(rows) == expected()
    assert all(r.received_us == r.ts_us + 500 for r in rows)


async def test_metric_filter(filled: Store) -> None:
    """One metric, several, and a name the device never reported."""
    assert triples(await query(filled, metrics=["hum"])) == expected(["hum"])
    assert triples(await query(filled, metrics=["temp", "hum"])) == expected(["temp", "hum"])
    assert triples(await query(filled, metrics=["temp", "nope"])) == expected(["temp"])
    assert await query(filled, metrics=["nope"]) == []


async def test_time_bounds_are_half_open(filled: Store) -> None:
    """start is included, end is excluded; either may be left open."""
    start, end = T0 + 5 * S, T0 + 9 * S

    rows = triples(await query(filled, metrics=["temp"], start_us=start, end_us=end))
    assert [ts for _, ts, _ in rows] == [T0 + i * S for i in range(5, 9)]
    assert triples(await query(filled, start_us=start, end_us=end)) == expected(
        start=start, end=end
    )
    assert triples(await query(filled, start_us=start)) == expected(start=start)
    assert triples(await query(filled, end_us=end)) == expected(end=end)
    assert await query(filled, start_us=start, end_us=start) == []
    assert triples(await query(filled, start_us=start, end_us=start + 1)) == expected(
        start=start, end=start + 1
    )


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("page_size", [1, 7, 20, 60])
async def test_cursor_pages_are_complete(filled: Store, descending: bool, page_size: int) -> None:
    """Paging with the (metric, ts) of the last row returns every reading once, in order."""
    start, end = T0 + 2 * S, T0 + 17 * S
    got: list[tuple[str, int, float]] = []
    after: tuple[str, int] | None = None
    for _ in range(len(expected()) + 2):  # bounded: a repeating cursor must fail, not hang
        page = await query(
            filled, start_us=start, end_us=end, limit=page_size, after=after, descending=descending
        )
        assert len(page) <= page_size
        got.extend(triples(page))
        if len(page) < page_size:
            break
        after = (page[-1].metric, page[-1].ts_us)

    assert got == expected(start=start, end=end, descending=descending)


async def test_descending_is_newest_first_within_each_metric(filled: Store) -> None:
    """Descending keeps metrics in name order and reverses time inside each."""
    rows = triples(await query(filled, metrics=["temp", "hum"], descending=True, limit=3))
    assert rows == [
        ("hum", T0 + 19 * S, 119.0),
        ("hum", T0 + 18 * S, 118.0),
        ("hum", T0 + 17 * S, 117.0),
    ]


async def test_unknown_device_has_no_readings(filled: Store) -> None:
    """An id the store never saw gives an empty list."""
    assert await query(filled, device_id="nobody") == []
    assert (
        await query(filled, device_id="nobody", metrics=["temp"], start_us=T0, end_us=T0 + S) == []
    )
