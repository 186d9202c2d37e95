"""`query_time_rows`: readings as one row per message, the read behind the Flask-compatible API."""

from __future__ import annotations

from fieldhub.store import Store, WriteBatch
from fieldhub.store.types import TimeRow
from support.store_rows import T0, S, msg


async def _fill(store: Store) -> None:
    await store.write_batch(
        WriteBatch(
            decoded=[
                msg(
                    "AA:00:00:00:00:01",
                    T0 + i * S,
                    [
                        ("rssi_percent", T0 + i * S, 60.0 + i),
                        ("uptime_ms", T0 + i * S, 1000.0 * i),
                    ],
                    profile="readings",
                )
                for i in range(5)
            ]
            + [
                # A reading of another metric at a time the primary metric has none: no row.
                msg("AA:00:00:00:00:01", T0 + 10 * S, [("uptime_ms", T0 + 10 * S, 9.0)]),
                # A message that carried a date: the rssi reading alone, at the device's time.
                msg("AA:00:00:00:00:01", T0 + 20 * S, [("rssi_percent", T0 + 7 * S, 50.0)]),
                # Another device's readings never leak in.
                msg("AA:00:00:00:00:02", T0, [("rssi_percent", T0 + 2 * S, 1.0)]),
            ]
        )
    )


async def test_rows_newest_first_with_companions_at_the_same_time(store: Store) -> None:
    """One row per primary reading, newest first; a companion appears only at the same time."""
    await _fill(store)
    rows = await store.query_time_rows(
        "AA:00:00:00:00:01",
        "rssi_percent",
        with_metrics=["uptime_ms"],
        start_us=None,
        end_us=None,
        limit=100,
        before_us=None,
    )
    assert [r.ts_us for r in rows] == [T0 + 7 * S, T0 + 4 * S, T0 + 3 * S, T0 + 2 * S, T0 + S, T0]
    assert rows[0] == TimeRow(T0 + 7 * S, T0 + 20 * S, {"rssi_percent": 50.0})
    assert rows[1] == TimeRow(T0 + 4 * S, T0 + 4 * S, {"rssi_percent": 64.0, "uptime_ms": 4000.0})


async def test_range_is_start_inclusive_end_exclusive(store: Store) -> None:
    """[start, end) like every other store read."""
    await _fill(store)
    rows = await store.query_time_rows(
        "AA:00:00:00:00:01",
        "rssi_percent",
        with_metrics=[],
        start_us=T0 + S,
        end_us=T0 + 3 * S,
        limit=100,
        before_us=None,
    )
    assert [r.ts_us for r in rows] == [T0 + 2 * S, T0 + S]
    assert rows[0].values == {"rssi_percent": 62.0}


async def test_pages_follow_the_before_cursor_without_gaps_or_repeats(store: Store) -> None:
    """Walking with `before_us` = last row's time visits every row exactly once."""
    await _fill(store)
    seen: list[int] = []
    before: int | None = None
    while True:
        page = await store.query_time_rows(
            "AA:00:00:00:00:01",
            "rssi_percent",
            with_metrics=["uptime_ms"],
            start_us=T0,
            end_us=None,
            limit=2,
            before_us=before,
        )
        if not page:
            break
        seen += [r.ts_us for r in page]
        before = page[-1].ts_us
    assert seen == [T0 + 7 * S, T0 + 4 * S, T0 + 3 * S, T0 + 2 * S, T0 + S, T0]


async def test_unknown_device_or_metric_gives_no_rows(store: Store) -> None:
    """Nothing stored under that name is an empty answer, not an error."""
    await _fill(store)
    for device, metric in (("nobody", "rssi_percent"), ("AA:00:00:00:00:01", "temperature")):
        assert (
            await store.query_time_rows(
                device,
                metric,
                with_metrics=["uptime_ms"],
                start_us=None,
                end_us=None,
                limit=10,
                before_us=None,
            )
            == []
        )
