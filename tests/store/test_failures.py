"""A write that fails leaves nothing behind, and the store keeps working."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

import pytest

from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.store import DeadLetter, Store, StoreError, WriteBatch

T0 = 1_700_000_000_000_000
S = 1_000_000

Reopen = Callable[[Store], Awaitable[Store]]


def good_batch() -> WriteBatch:
    """A batch touching every table: new device and metric, known device, presence, digests."""
    return WriteBatch(
        decoded=[
            Decoded(
                device_id="dev-new",
                profile="readings",
                channel="gateway",
                received_us=T0 + S,
                readings=[Reading("co2", T0 + S, 415.0)],
                attributes={"site": "barn"},
                presence="online",
            ),
            Decoded(
                device_id="dev-1",
                profile="native",
                channel="telemetry",
                received_us=T0 + S,
                readings=[Reading("temp", T0 + S, 22.0), Reading("temp", T0, 99.0)],
                attributes={"fw": "2.0", "ip": None},
                presence="offline",
            ),
        ],
        dead_letters=[
            DeadLetter("devices/x/telemetry", b"{", "malformed_json", "line 1", T0 + S, "x"),
        ],
        retained_digests={"devices/dev-1/status": b"new", "/readings/gateway/dev-new": b"n"},
    )


async def seed(store: Store) -> None:
    await store.write_batch(
        WriteBatch(
            decoded=[
                Decoded(
                    device_id="dev-1",
                    profile="native",
                    channel="telemetry",
                    received_us=T0,
                    readings=[Reading("temp", T0, 21.0)],
                    attributes={"fw": "1.0", "ip": "10.0.0.7"},
                    presence="online",
                )
            ],
            retained_digests={"devices/dev-1/status": b"old"},
        )
    )


async def assert_seed_state(store: Store) -> None:
    """Exactly what `seed` wrote, nothing of `good_batch`."""
    assert await store.get_device("dev-new", now_us=T0 + S) is None
    assert await store.count_devices(profile=None, presence=None, search=None, now_us=T0) == 1
    device = await store.get_device("dev-1", now_us=T0 + S)
    assert device is not None
    assert device.last_seen_us == T0
    assert device.attributes == {"fw": "1.0", "ip": "10.0.0.7"}
    assert (device.presence, device.presence_changed_us) == ("online", T0)
    readings = await store.query_readings(
        "dev-1", metrics=None, start_us=None, end_us=None, limit=100, after=None, descending=False
    )
    assert [(r.metric, r.ts_us, r.value) for r in readings] == [("temp", T0, 21.0)]
    assert [(m.name, m.last_value) for m in await store.device_metrics("dev-1")] == [("temp", 21.0)]
    assert (
        await store.list_dead_letters(limit=10, before_id=None, reason=None, device_id=None) == []
    )
    assert await store.retained_digests() == {"devices/dev-1/status": b"old"}


async def assert_good_batch_applied(store: Store) -> None:
    """The state after `seed` and then `good_batch`, written once."""
    result = await store.write_batch(good_batch())

    assert result.new_devices == ["dev-new"]
    # temp at T0 repeats the seed's reading: a duplicate, the seed's value stays.
    assert (result.readings_written, result.readings_duplicate, result.dead_letters) == (2, 1, 1)
    assert [(c.device_id, c.state) for c in result.presence_changes] == [
        ("dev-new", "online"),
        ("dev-1", "offline"),
    ]
    assert await store.count_devices(profile=None, presence=None, search=None, now_us=T0) == 2
    new = await store.get_device("dev-new", now_us=T0 + S)
    assert new is not None
    assert (new.profile, new.attributes) == ("readings", {"site": "barn"})
    old = await store.get_device("dev-1", now_us=T0 + S)
    assert old is not None
    assert old.attributes == {"fw": "2.0"}
    assert (old.last_seen_us, old.presence) == (T0 + S, "offline")
    readings = await store.query_readings(
        "dev-1", metrics=None, start_us=None, end_us=None, limit=100, after=None, descending=False
    )
    assert [(r.metric, r.ts_us, r.value) for r in readings] == [
        ("temp", T0, 21.0),
        ("temp", T0 + S, 22.0),
    ]
    letters = await store.list_dead_letters(limit=10, before_id=None, reason=None, device_id=None)
    assert [(d.topic, d.payload) for d in letters] == [("devices/x/telemetry", b"{")]
    assert [(m.name, m.last_value) for m in await store.device_metrics("dev-new")] == [
        ("co2", 415.0)
    ]
    assert await store.retained_digests() == {
        "devices/dev-1/status": b"new",
        "/readings/gateway/dev-new": b"n",
    }


async def test_failed_batch_leaves_no_trace(store: Store) -> None:
    """A batch failing on its last row rolls back all of it; the same batch then writes fully."""
    await seed(store)
    poisoned = good_batch()
    # A NULL reason violates NOT NULL in every engine, and dead letters are written last.
    poisoned.dead_letters.append(
        DeadLetter("devices/x/telemetry", b"x", cast(str, None), "", T0 + S)
    )

    with pytest.raises(StoreError):
        await store.write_batch(poisoned)

    await assert_seed_state(store)
    await assert_good_batch_applied(store)


async def test_write_after_close_raises_store_error(store: Store, reopen: Reopen) -> None:
    """A closed store refuses writes and reads with StoreError; reopened, it writes again."""
    await seed(store)
    await store.close()

    with pytest.raises(StoreError):
        await store.write_batch(good_batch())
    with pytest.raises(StoreError):
        await store.get_device("dev-1", now_us=T0)
    with pytest.raises(StoreError):
        await store.ping()

    reopened = await reopen(store)
    await assert_seed_state(reopened)
    await assert_good_batch_applied(reopened)


async def test_close_twice_is_harmless(store: Store) -> None:
    """Closing is idempotent, so shutdown paths may close without tracking state."""
    await store.ping()
    await store.close()
    await store.close()
