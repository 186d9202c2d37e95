"""write_batch: devices, readings, duplicates, attributes, presence, digests, reopening."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from fieldhub.protocol.messages import Decoded
from fieldhub.store import ReadingRow, Store, WriteBatch, WriteResult
from fieldhub.store.types import PresenceChange
from support.store_rows import T0, S, msg

Reopen = Callable[[Store], Awaitable[Store]]


async def write(store: Store, *items: Decoded) -> WriteResult:
    return await store.write_batch(WriteBatch(decoded=list(items)))


async def all_readings(store: Store, device_id: str = "dev-1") -> list[ReadingRow]:
    return await store.query_readings(
        device_id,
        metrics=None,
        start_us=None,
        end_us=None,
        limit=10_000,
        after=None,
        descending=False,
    )


async def latest(store: Store, device_id: str = "dev-1") -> dict[str, tuple[int, float]]:
    return {m.name: (m.last_ts_us, m.last_value) for m in await store.device_metrics(device_id)}


# -- devices ----------------------------------------------------------------------------------


async def test_first_message_creates_device(store: Store) -> None:
    """The first Decoded of an unknown device registers it with its profile and receive time."""
    result = await write(store, msg("dev-1", T0 + 5, [("temp", T0, 21.5)], profile="readings"))

    assert result.new_devices == ["dev-1"]
    device = await store.get_device("dev-1", now_us=T0 + 10)
    assert device is not None
    assert device.device_id == "dev-1"
    assert device.profile == "readings"
    assert device.first_seen_us == T0 + 5
    assert device.last_seen_us == T0 + 5
    assert device.attributes == {}
    assert device.presence_changed_us is None


async def test_new_device_listed_once(store: Store) -> None:
    """A device with several messages in its first batch is new once, and never again."""
    first = await write(
        store,
        msg("dev-1", T0, [("temp", T0, 1.0)]),
        msg("dev-2", T0 + 1, [("temp", T0 + 1, 2.0)]),
        msg("dev-1", T0 + 2, [("temp", T0 + 2, 3.0)]),
        msg("dev-1", T0 + 3),
    )
    second = await write(store, msg("dev-1", T0 + 4), msg("dev-2", T0 + 4))

    assert first.new_devices == ["dev-1", "dev-2"]
    assert second.new_devices == []
    assert await store.count_devices(profile=None, presence=None, search=None, now_us=T0) == 2


async def test_first_seen_is_not_moved_by_later_messages(store: Store) -> None:
    """first_seen stays the receive time of the registering message."""
    await write(store, msg("dev-1", T0))
    await write(store, msg("dev-1", T0 + 60 * S))

    device = await store.get_device("dev-1", now_us=T0 + 60 * S)
    assert device is not None
    assert (device.first_seen_us, device.last_seen_us) == (T0, T0 + 60 * S)


async def test_last_seen_only_moves_forward(store: Store) -> None:
    """A message received earlier than one already stored does not move last_seen back."""
    await write(store, msg("dev-1", T0 + 10 * S), msg("dev-1", T0 + 5 * S))
    device = await store.get_device("dev-1", now_us=T0 + 10 * S)
    assert device is not None
    assert device.last_seen_us == T0 + 10 * S

    await write(store, msg("dev-1", T0 + 7 * S, [("temp", T0 + 7 * S, 1.0)]))
    device = await store.get_device("dev-1", now_us=T0 + 10 * S)
    assert device is not None
    assert device.last_seen_us == T0 + 10 * S

    await write(store, msg("dev-1", T0 + 11 * S))
    device = await store.get_device("dev-1", now_us=T0 + 11 * S)
    assert device is not None
    assert device.last_seen_us == T0 + 11 * S


# -- readings ---------------------------------------------------------------------------------


async def test_readings_are_stored_with_receive_time(store: Store) -> None:
    """Every reading comes back with its value, its time and the time its message arrived."""
    result = await write(
        store,
        msg("dev-1", T0 + 100, [("temp", T0, 21.5), ("hum", T0, 40.0), ("temp", T0 + S, 21.75)]),
    )

    assert (result.readings_written, result.readings_duplicate) == (3, 0)
    assert await all_readings(store) == [
        ReadingRow("hum", T0, 40.0, T0 + 100),
        ReadingRow("temp", T0, 21.5, T0 + 100),
        ReadingRow("temp", T0 + S, 21.75, T0 + 100),
    ]


async def test_duplicate_reading_keeps_first_value(store: Store) -> None:
    """The same (device, metric, ts) again is a duplicate; the stored value and latest stay."""
    await write(store, msg("dev-1", T0, [("temp", T0, 1.0)]))

    again = await write(store, msg("dev-1", T0 + S, [("temp", T0, 2.0), ("temp", T0 + 1, 3.0)]))

    assert (again.readings_written, again.readings_duplicate) == (1, 1)
    assert await all_readings(store) == [
        ReadingRow("temp", T0, 1.0, T0),
        ReadingRow("temp", T0 + 1, 3.0, T0 + S),
    ]
    # A redelivery with the same time must not change the latest value behind the stored one.
    await write(store, msg("dev-1", T0 + 2 * S, [("temp", T0 + 1, 9.0)]))
    assert await latest(store) == {"temp": (T0 + 1, 3.0)}


@pytest.mark.parametrize(("first", "second"), [(1.0, 2.0), (2.0, 1.0)])
async def test_duplicate_within_one_batch_keeps_first_value(
    store: Store, first: float, second: float
) -> None:
    """Two messages of one batch with the same reading store the first, whichever value is
    smaller; latest agrees."""
    result = await write(
        store,
        msg("dev-1", T0, [("temp", T0, first)]),
        msg("dev-1", T0 + 1, [("temp", T0, second)]),
    )

    assert (result.readings_written, result.readings_duplicate) == (1, 1)
    assert await all_readings(store) == [ReadingRow("temp", T0, first, T0)]
    assert await latest(store) == {"temp": (T0, first)}


async def test_a_large_batch_with_redeliveries_stores_each_reading_once(
    store: Store, backend_url: str
) -> None:
    """Batches of thousands of readings (PostgreSQL stages them by COPY from COPY_MIN_ROWS on)
    store what is new, count what is not, and feed the rollups only the new readings."""
    first = [
        msg(f"dev-{d}", T0, [("t", T0 + i * S, float(i)) for i in range(100)]) for d in range(30)
    ]
    again = [
        msg(f"dev-{d}", T0, [("t", T0 + i * S, -1.0) for i in range(50, 150)]) for d in range(30)
    ]
    assert (await write(store, *first)).readings_written == 3_000
    result = await write(store, *again)
    assert (result.readings_written, result.readings_duplicate) == (1_500, 1_500)
    rows = await all_readings(store, "dev-7")
    assert [r.value for r in rows] == [float(i) for i in range(100)] + [-1.0] * 50
    minutes = await store.query_series(
        "dev-7", "t", start_us=T0, end_us=T0 + 150 * S, interval_us=60 * S, agg="count"
    )
    assert sum(p.value for p in minutes) == 150
    if backend_url.startswith("postgres"):
        conn = await asyncpg.connect(backend_url)
        try:
            staged = await conn.fetchval(
                "SELECT count(*) FROM pg_class WHERE relname = 'staging_readings' "
                "AND relpersistence = 't'"
            )
        finally:
            await conn.close()
        assert staged >= 1, "the COPY path was not taken"


async def test_same_metric_of_other_device_is_not_a_duplicate(store: Store) -> None:
    """Identity is (device, metric, ts): the same metric and time on two devices is two rows."""
    result = await write(
        store, msg("dev-1", T0, [("temp", T0, 1.0)]), msg("dev-2", T0, [("temp", T0, 2.0)])
    )

    assert (result.readings_written, result.readings_duplicate) == (2, 0)
    assert [r.value for r in await all_readings(store, "dev-2")] == [2.0]


async def test_messages_with_different_receive_times_both_stored(store: Store) -> None:
    """Readings timed at receive (no device clock) from two messages are two readings."""
    await write(store, msg("dev-1", T0, [("temp", T0, 1.0)]))
    await write(store, msg("dev-1", T0 + 1, [("temp", T0 + 1, 1.0)]))

    assert [(r.ts_us, r.received_us) for r in await all_readings(store)] == [
        (T0, T0),
        (T0 + 1, T0 + 1),
    ]


async def test_latest_value_survives_backfill(store: Store) -> None:
    """An older reading that arrives later is stored but does not replace the latest value."""
    await write(store, msg("dev-1", T0 + 100 * S, [("temp", T0 + 100 * S, 30.0)]))
    await write(store, msg("dev-1", T0 + 101 * S, [("temp", T0, 10.0), ("hum", T0, 50.0)]))
    # Within one batch too: newest first, then an older buffer.
    await write(
        store,
        msg("dev-1", T0 + 102 * S, [("press", T0 + 50 * S, 1000.0)]),
        msg("dev-1", T0 + 103 * S, [("press", T0 + 40 * S, 990.0)]),
    )

    assert await latest(store) == {
        "temp": (T0 + 100 * S, 30.0),
        "hum": (T0, 50.0),
        "press": (T0 + 50 * S, 1000.0),
    }
    assert len(await all_readings(store)) == 5


async def test_device_metrics_of_unknown_device_is_empty(store: Store) -> None:
    """No metrics for a device the store has never seen."""
    assert await store.device_metrics("nobody") == []


# -- attributes -------------------------------------------------------------------------------


async def test_attributes_merge_across_batches(store: Store) -> None:
    """RFC 7396 merge: later values win, a null removes the key, other keys stay."""
    await write(
        store,
        msg("dev-1", T0, attributes={"fw": "1.0", "ip": "10.0.0.7", "rssi": -61, "ota": True}),
    )
    await write(store, msg("dev-1", T0 + 1, attributes={"fw": "1.1", "ip": None, "vbat": 3.71}))
    await write(store, msg("dev-1", T0 + 2, attributes={"missing": None}))

    device = await store.get_device("dev-1", now_us=T0)
    assert device is not None
    assert device.attributes == {"fw": "1.1", "rssi": -61, "ota": True, "vbat": 3.71}


async def test_attributes_merge_within_one_batch(store: Store) -> None:
    """Inside a batch, messages apply in order: a later null removes, a later value restores."""
    await write(
        store,
        msg("dev-1", T0, attributes={"a": 1, "b": "x"}),
        msg("dev-1", T0 + 1, attributes={"a": None, "c": False}),
        msg("dev-1", T0 + 2, attributes={"c": None}),
        msg("dev-1", T0 + 3, attributes={"c": True}),
        msg("dev-2", T0 + 3, attributes={"a": 2}),
    )

    one = await store.get_device("dev-1", now_us=T0)
    two = await store.get_device("dev-2", now_us=T0)
    assert one is not None
    assert two is not None
    assert one.attributes == {"b": "x", "c": True}
    assert two.attributes == {"a": 2}


# -- presence ---------------------------------------------------------------------------------


async def test_presence_change_recorded_once_per_change(store: Store) -> None:
    """Each change is one event; repeating the current state is none."""
    first = await write(
        store,
        msg("dev-1", T0, presence="online"),
        msg("dev-1", T0 + 1, presence="online"),
        msg("dev-1", T0 + 2),
    )
    repeat = await write(store, msg("dev-1", T0 + 3, presence="online"))
    flaps = await write(
        store,
        msg("dev-1", T0 + 4, presence="offline"),
        msg("dev-1", T0 + 5, presence="offline"),
        msg("dev-1", T0 + 6, presence="online"),
        msg("dev-2", T0 + 6, presence="offline"),
    )

    assert first.presence_changes == [PresenceChange("dev-1", "online", T0)]
    assert repeat.presence_changes == []
    assert flaps.presence_changes == [
        PresenceChange("dev-1", "offline", T0 + 4),
        PresenceChange("dev-1", "online", T0 + 6),
        PresenceChange("dev-2", "offline", T0 + 6),
    ]
    one = await store.get_device("dev-1", now_us=T0 + 6)
    two = await store.get_device("dev-2", now_us=T0 + 6)
    assert one is not None
    assert two is not None
    assert (one.presence, one.presence_changed_us) == ("online", T0 + 6)
    assert (two.presence, two.presence_changed_us) == ("offline", T0 + 6)


async def test_message_without_presence_keeps_presence(store: Store) -> None:
    """Telemetry alone neither reports nor changes presence."""
    await write(store, msg("dev-1", T0, presence="offline"))
    result = await write(store, msg("dev-1", T0 + S, [("temp", T0 + S, 1.0)]))

    assert result.presence_changes == []
    device = await store.get_device("dev-1", now_us=T0 + S)
    assert device is not None
    assert (device.presence, device.presence_changed_us) == ("offline", T0)


# -- retained digests -------------------------------------------------------------------------


async def test_retained_digests_persist_across_reopen(store: Store, reopen: Reopen) -> None:
    """Digests are upserted per topic and read back after the store is reopened."""
    assert await store.retained_digests() == {}
    await store.write_batch(
        WriteBatch(retained_digests={"devices/a/status": b"\x00" * 16, "/readings/gateway/b": b"1"})
    )
    await store.write_batch(WriteBatch(retained_digests={"devices/a/status": b"\xff\x01"}))

    expected = {"devices/a/status": b"\xff\x01", "/readings/gateway/b": b"1"}
    assert await store.retained_digests() == expected
    reopened = await reopen(store)
    assert await reopened.retained_digests() == expected


# -- reopening --------------------------------------------------------------------------------


async def test_device_and_metric_ids_survive_reopen(store: Store, reopen: Reopen) -> None:
    """After a reopen, known devices and metrics are reused and duplicates still detected."""
    await write(store, msg("dev-1", T0, [("temp", T0, 1.0)], presence="online"))

    reopened = await reopen(store)
    result = await write(
        reopened,
        msg("dev-1", T0 + S, [("temp", T0, 5.0), ("temp", T0 + S, 2.0), ("hum", T0 + S, 40.0)]),
        msg("dev-1", T0 + S, presence="online"),
        msg("dev-2", T0 + S, [("temp", T0 + S, 3.0)]),
    )

    assert result.new_devices == ["dev-2"]
    assert result.presence_changes == []
    assert (result.readings_written, result.readings_duplicate) == (3, 1)
    assert await reopened.count_devices(profile=None, presence=None, search=None, now_us=T0) == 2
    assert [(r.metric, r.ts_us, r.value) for r in await all_readings(reopened)] == [
        ("hum", T0 + S, 40.0),
        ("temp", T0, 1.0),
        ("temp", T0 + S, 2.0),
    ]
    assert await latest(reopened, "dev-2") == {"temp": (T0 + S, 3.0)}


async def test_messages_not_from_the_device_leave_last_seen_alone(store: Store) -> None:
    """An order published about a device is stored, but its time is not the device's."""
    await write(store, msg("dev-1", T0, [("t", T0, 1.0)]))
    order = msg("dev-1", T0 + 60 * S, [("window_position", T0 + 60 * S, 30.0)])
    order.from_device = False
    await write(store, order)
    device = await store.get_device("dev-1", now_us=T0 + 60 * S)
    assert device is not None
    assert device.last_seen_us == T0
    assert (await latest(store))["window_position"] == (T0 + 60 * S, 30.0)
