"""Reads behind the dashboard: latest values of many devices, presence history, dead letters
by time, and each device's stale threshold."""

from __future__ import annotations

import pytest

from fieldhub.protocol.messages import Presence
from fieldhub.store import DeadLetter, Store, WriteBatch
from fieldhub.store.types import MetricSummary, PresenceEvent
from support.store_rows import T0, S, msg

# The silences the `store` fixture (tests/store/conftest.py) configures per profile.
STALE_AFTER_S = {"native": 120, "readings": 90}

# -- latest_values --------------------------------------------------------------------------------


async def test_latest_values_of_several_devices(store: Store) -> None:
    """Newest reading by device time per metric, metrics by name; every asked id is a key."""
    await store.write_batch(
        WriteBatch(
            decoded=[
                msg("dev-1", T0, [("temp", T0, 20.0), ("hum", T0, 40.0)]),
                msg("dev-1", T0 + S, [("temp", T0 + S, 21.0)]),
                msg("dev-2", T0, [("temp", T0 + 5, -3.5)]),
                msg("dev-3", T0, presence="online"),  # no readings at all
            ]
        )
    )
    # A backfilled (older) reading arriving later does not become the latest.
    await store.write_batch(WriteBatch(decoded=[msg("dev-1", T0 + 2 * S, [("temp", T0 - S, 5.0)])]))
    asked = ["dev-2", "nobody", "dev-1", "dev-3"]
    latest = await store.latest_values(asked)
    assert set(latest) == set(asked)
    assert latest["dev-1"] == [MetricSummary("hum", T0, 40.0), MetricSummary("temp", T0 + S, 21.0)]
    assert latest["dev-2"] == [MetricSummary("temp", T0 + 5, -3.5)]
    assert latest["dev-3"] == []
    assert latest["nobody"] == []
    # The same answer as asking device by device.
    for device_id in asked:
        assert latest[device_id] == await store.device_metrics(device_id)


async def test_latest_values_of_no_devices_and_of_unknown_ones(store: Store) -> None:
    assert await store.latest_values([]) == {}
    assert await store.latest_values(["ghost"]) == {"ghost": []}
    await store.write_batch(WriteBatch(decoded=[msg("dev-1", T0, [("temp", T0, 1.0)])]))
    assert await store.latest_values(["ghost"]) == {"ghost": []}


async def test_latest_values_for_a_long_list_of_ids(store: Store) -> None:
    """More ids than a fleet page shows (200) and than a subscription lists (1,000)."""
    names = [f"esp-{n:04d}" for n in range(1_500)]
    await store.write_batch(
        WriteBatch(decoded=[msg(n, T0, [("temp", T0, float(i))]) for i, n in enumerate(names[:50])])
    )
    latest = await store.latest_values(names)
    assert len(latest) == 1_500
    assert latest["esp-0049"] == [MetricSummary("temp", T0, 49.0)]
    assert latest["esp-1499"] == []


# -- presence_history -----------------------------------------------------------------------------

CHANGES: list[tuple[int, Presence]] = [
    (T0, "online"),
    (T0 + 10 * S, "offline"),
    (T0 + 20 * S, "online"),
    (T0 + 30 * S, "offline"),
]


async def seed_presence(store: Store) -> None:
    """dev-1 flaps four times, one batch per change; dev-2 has a change of its own."""
    for at, state in CHANGES:
        await store.write_batch(WriteBatch(decoded=[msg("dev-1", at, presence=state)]))
    await store.write_batch(WriteBatch(decoded=[msg("dev-2", T0 + 15 * S, presence="offline")]))


def events(*indexes: int) -> list[PresenceEvent]:
    return [PresenceEvent(*CHANGES[i]) for i in indexes]


async def history(store: Store, start: int, end: int, limit: int = 100) -> list[PresenceEvent]:
    return await store.presence_history("dev-1", start_us=start, end_us=end, limit=limit)


async def test_presence_history_opens_with_the_state_before_the_window(store: Store) -> None:
    await seed_presence(store)
    assert await history(store, T0 + 15 * S, T0 + 35 * S) == events(1, 2, 3)


async def test_presence_history_window_is_start_inclusive_end_exclusive(store: Store) -> None:
    await seed_presence(store)
    # A change exactly at `start` is inside; the state before it is the one before.
    assert await history(store, T0 + 10 * S, T0 + 25 * S) == events(0, 1, 2)
    # A change exactly at `end` is outside.
    assert await history(store, T0 + 15 * S, T0 + 30 * S) == events(1, 2)
    assert await history(store, T0 + 15 * S, T0 + 30 * S + 1) == events(1, 2, 3)


async def test_presence_history_outside_the_changes(store: Store) -> None:
    await seed_presence(store)
    # Before the first change: nothing, not even an opening state.
    assert await history(store, T0 - 100 * S, T0 - S) == []
    assert await history(store, T0 - 100 * S, T0) == []
    # After the last change: only the state the device is in.
    assert await history(store, T0 + 40 * S, T0 + 50 * S) == events(3)
    # A window covering everything: every change, oldest first.
    assert await history(store, T0 - S, T0 + 100 * S) == events(0, 1, 2, 3)


async def test_presence_history_limit_keeps_the_newest_changes_in_the_window(
    store: Store,
) -> None:
    """`limit` keeps the newest changes (a timeline ends at now); when it truncates, the state
    before the window is left out, because it is not the state before the oldest change shown."""
    await seed_presence(store)
    assert await history(store, T0 - S, T0 + 100 * S, limit=2) == events(2, 3)
    assert await history(store, T0 + 5 * S, T0 + 100 * S, limit=2) == events(2, 3)
    assert await history(store, T0 + 5 * S, T0 + 100 * S, limit=1) == events(3)
    # Not truncated: the opening state comes in addition to `limit` changes.
    assert await history(store, T0 + 5 * S, T0 + 100 * S, limit=4) == events(0, 1, 2, 3)


async def test_presence_history_is_per_device(store: Store) -> None:
    await seed_presence(store)
    dev2 = await store.presence_history("dev-2", start_us=T0, end_us=T0 + 100 * S, limit=10)
    assert dev2 == [PresenceEvent(T0 + 15 * S, "offline")]
    assert await store.presence_history("ghost", start_us=T0, end_us=T0 + S, limit=10) == []


async def test_repeated_states_are_not_changes(store: Store) -> None:
    """Heartbeats repeating `online` add no history rows."""
    for n in range(5):
        await store.write_batch(WriteBatch(decoded=[msg("dev-1", T0 + n * S, presence="online")]))
    assert await history(store, T0 - S, T0 + 10 * S) == [PresenceEvent(T0, "online")]


# -- count_dead_letters ---------------------------------------------------------------------------


async def test_count_dead_letters_since(store: Store) -> None:
    assert await store.count_dead_letters(since_us=0) == 0
    await store.write_batch(
        WriteBatch(
            dead_letters=[
                DeadLetter(f"devices/d{n}/telemetry", b"{", "malformed_json", "x", T0 + n * S)
                for n in range(10)
            ]
        )
    )
    assert await store.count_dead_letters(since_us=0) == 10
    assert await store.count_dead_letters(since_us=T0) == 10
    assert await store.count_dead_letters(since_us=T0 + 5 * S) == 5  # inclusive
    assert await store.count_dead_letters(since_us=T0 + 5 * S + 1) == 4
    assert await store.count_dead_letters(since_us=T0 + 9 * S) == 1
    assert await store.count_dead_letters(since_us=T0 + 10 * S) == 0


# -- DeviceRow.stale_after_s ----------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(STALE_AFTER_S))
async def test_device_row_carries_its_profiles_stale_threshold(store: Store, profile: str) -> None:
    await store.write_batch(WriteBatch(decoded=[msg("dev-1", T0, profile=profile)]))
    row = await store.get_device("dev-1", now_us=T0)
    assert row is not None
    assert row.stale_after_s == STALE_AFTER_S[profile]
    [listed] = await store.list_devices(
        profile=None, presence=None, search=None, limit=10, after=None, now_us=T0
    )
    assert listed.stale_after_s == STALE_AFTER_S[profile]


@pytest.mark.parametrize("profile", sorted(STALE_AFTER_S))
async def test_stale_after_s_is_the_threshold_presence_uses(store: Store, profile: str) -> None:
    """Online up to exactly stale_after_s of silence, stale one microsecond later."""
    await store.write_batch(WriteBatch(decoded=[msg("dev-1", T0, profile=profile)]))
    row = await store.get_device("dev-1", now_us=T0)
    assert row is not None
    limit = T0 + row.stale_after_s * S
    at_limit = await store.get_device("dev-1", now_us=limit)
    past = await store.get_device("dev-1", now_us=limit + 1)
    assert at_limit is not None
    assert past is not None
    assert at_limit.presence == "online"
    assert past.presence == "stale"
    stale = await store.count_devices(profile=None, presence="stale", search=None, now_us=limit + 1)
    assert stale == 1


async def test_each_device_goes_stale_after_its_own_profiles_silence(store: Store) -> None:
    """Two devices silent for 100 s: the readings gateway (90 s) is stale, the native node
    (120 s) is not; each row says which threshold applies."""
    await store.write_batch(
        WriteBatch(decoded=[msg("gw", T0, profile="readings"), msg("node", T0, profile="native")])
    )
    rows = await store.list_devices(
        profile=None, presence=None, search=None, limit=10, after=None, now_us=T0 + 100 * S
    )
    assert [(r.device_id, r.stale_after_s, r.presence) for r in rows] == [
        ("gw", 90, "stale"),
        ("node", 120, "online"),
    ]
