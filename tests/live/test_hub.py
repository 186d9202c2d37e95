"""LiveHub: committed batches -> filtered, coalesced, encoded frames in viewers' outboxes.

`dispatch` takes the clock as an argument, so these tests drive it with explicit times; one test
runs the hub's task on a real bus to cover the tick (held updates, stats).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from fieldhub import __version__
from fieldhub.events import Committed, EventBus
from fieldhub.events.bus import AlarmChanged
from fieldhub.live.hub import (
    DEAD_LETTER_WINDOW_US,
    DEAD_LETTERS_PER_FRAME,
    OUTBOX_FRAMES,
    UPDATES_PER_FRAME,
    LiveHub,
    LiveMetrics,
    Viewer,
)
from fieldhub.live.subscriptions import Subscribe
from fieldhub.protocol.messages import Decoded, Presence
from fieldhub.protocol.payload import payload_preview
from fieldhub.protocol.timestamps import format_us
from fieldhub.store import open_store
from fieldhub.store.types import (
    AlarmRow,
    DeadLetter,
    PresenceChange,
    WriteBatch,
    WriteResult,
)
from support.store_rows import T0, msg

MAC = "A4:CF:12:B3:C4:D5"
NOW = T0 + 10_000_000  # the hub's clock in these tests (epoch us)
WINDOW = 250_000  # default min_interval_ms in us


def committed(
    decoded: Sequence[Decoded] = (),
    *,
    dead_letters: Sequence[DeadLetter] = (),
    new_devices: Sequence[str] = (),
    presence: Sequence[PresenceChange] = (),
    at: int = NOW,
) -> Committed:
    return Committed(
        committed_us=at,
        decoded=list(decoded),
        dead_letters=list(dead_letters),
        new_devices=list(new_devices),
        presence_changes=list(presence),
    )


def letter(n: int, device: str | None = "node-1", payload: bytes = b'{"t": 1') -> DeadLetter:
    return DeadLetter(
        topic=f"devices/{device or 'x y'}/telemetry",
        payload=payload,
        reason="malformed_json",
        detail=f"problem {n}",
        received_us=T0 + n,
        device_id=device,
        profile="native" if device else None,
    )


@pytest.fixture
def hub(bus: EventBus, registry: CollectorRegistry) -> LiveHub:
    return LiveHub(bus, registry)


def subscribe(hub: LiveHub, viewer: Viewer | None = None, **fields: Any) -> Viewer:
    """Attach `viewer` (a new one by default) as the WebSocket route does for a subscribe frame."""
    viewer = viewer or hub.new_viewer()
    hub.attach(viewer, Subscribe.model_validate({"op": "subscribe", **fields}).key())
    return viewer


async def raw_frames(viewer: Viewer) -> list[str]:
    """Everything queued for `viewer`, as the sender task would send it (lagged frames too)."""
    out: list[str] = []
    while viewer.queued:
        out.append(await asyncio.wait_for(viewer.next_frame(), timeout=5))
    return out


async def frames(viewer: Viewer) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in await raw_frames(viewer)]


def of_type(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in items if f["type"] == kind]


def sample(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


# -- readings: filtering and coalescing -----------------------------------------------------------


async def test_readings_are_filtered_by_devices_and_metrics(hub: LiveHub) -> None:
    only_a_temp = subscribe(hub, devices=["a4cf12b3c4d5"], metrics=["temp"])
    everything = subscribe(hub)
    only_b = subscribe(hub, devices=["node-b"])
    humidity = subscribe(hub, metrics=["hum"])
    no_readings = subscribe(hub, events=["presence"])
    hub.dispatch(
        committed(
            [
                msg(MAC, T0, [("temp", T0, 21.5), ("hum", T0, 40.0)]),
                msg("node-b", T0, [("temp", T0 + 1, 19.0)]),
                msg("node-c", T0, [("hum", T0 + 2, 55.5)]),
            ]
        ),
        NOW,
    )
    assert await frames(only_a_temp) == [{"type": "readings", "data": [[MAC, "temp", T0, 21.5]]}]
    assert await frames(everything) == [
        {
            "type": "readings",
            "data": [
                [MAC, "temp", T0, 21.5],
                [MAC, "hum", T0, 40.0],
                ["node-b", "temp", T0 + 1, 19.0],
                ["node-c", "hum", T0 + 2, 55.5],
            ],
        }
    ]
    assert await frames(only_b) == [
        {"type": "readings", "data": [["node-b", "temp", T0 + 1, 19.0]]}
    ]
    assert await frames(humidity) == [
        {"type": "readings", "data": [[MAC, "hum", T0, 40.0], ["node-c", "hum", T0 + 2, 55.5]]}
    ]
    assert await frames(no_readings) == []


async def test_a_batch_with_nothing_for_a_viewer_sends_it_nothing(hub: LiveHub) -> None:
    viewer = subscribe(hub, devices=["node-z"], events=["readings", "presence", "dead_letters"])
    hub.dispatch(
        committed(
            [msg("node-a", T0, [("temp", T0, 1.0)])],
            dead_letters=[letter(1, "node-a")],
            presence=[PresenceChange("node-a", "online", T0)],
        ),
        NOW,
    )
    assert viewer.queued == 0


async def test_readings_are_coalesced_per_series_and_group(hub: LiveHub) -> None:
    """Within a window only the first reading goes out at once; the rest wait for the tick."""
    viewer = subscribe(hub, devices=["node-1"])
    for n in range(10):
        hub.dispatch(committed([msg("node-1", T0, [("temp", T0 + n, float(n))])]), NOW + n)
    assert await frames(viewer) == [{"type": "readings", "data": [["node-1", "temp", T0, 0.0]]}]
    group = viewer.group
    assert group is not None
    # What the hub's tick does when the window has ended: the newest held reading goes out.
    assert group.coalescer.due(NOW + WINDOW) == [["node-1", "temp", T0 + 9, 9.0]]


async def test_a_large_batch_is_split_into_frames_of_bounded_size(hub: LiveHub) -> None:
    """One update per series still makes a huge frame after a stall: split, order kept."""
    viewer = subscribe(hub)
    devices = UPDATES_PER_FRAME * 2 + 500
    hub.dispatch(
        committed([msg(f"n-{i:05d}", T0, [("temp", T0, float(i))]) for i in range(devices)]), NOW
    )
    sent = await frames(viewer)
    assert [len(f["data"]) for f in sent] == [UPDATES_PER_FRAME, UPDATES_PER_FRAME, 500]
    assert [u[3] for f in sent for u in f["data"]] == [float(i) for i in range(devices)]


# -- groups ---------------------------------------------------------------------------------------


async def test_equal_subscriptions_share_one_group_and_one_encoded_frame(
    hub: LiveHub, registry: CollectorRegistry
) -> None:
    a = subscribe(hub, devices=["a4cf12b3c4d5", "node-1"], events=["readings", "presence"])
    b = subscribe(hub, devices=["node-1", "A4-CF-12-B3-C4-D5"], events=["presence", "readings"])
    other = subscribe(hub, devices=["node-1"])
    assert a.group is b.group
    assert other.group is not a.group
    assert sample(registry, "fieldhub_live_groups") == 2
    assert sample(registry, "fieldhub_live_viewers") == 3
    hub.dispatch(committed([msg("node-1", T0, [("temp", T0, 20.0)])]), NOW)
    [frame_a] = await raw_frames(a)
    [frame_b] = await raw_frames(b)
    assert frame_a is frame_b  # encoded once for the group, the same text pushed to both
    [frame_other] = await raw_frames(other)
    assert frame_other == frame_a
    assert frame_other is not frame_a


async def test_detach_removes_empty_groups_and_resubscribe_moves_the_viewer(
    hub: LiveHub, registry: CollectorRegistry
) -> None:
    a = subscribe(hub, devices=["node-1"])
    b = subscribe(hub, devices=["node-1"])
    group = a.group
    hub.detach(a)
    assert a.group is None
    assert b.group is group
    assert sample(registry, "fieldhub_live_groups") == 1
    assert sample(registry, "fieldhub_live_viewers") == 1
    assert hub.viewers == 1
    # A new subscribe replaces the previous one; the emptied group goes away.
    subscribe(hub, b, devices=["node-2"])
    assert b.group is not group
    assert sample(registry, "fieldhub_live_groups") == 1
    hub.dispatch(committed([msg("node-1", T0, [("temp", T0, 1.0)])]), NOW)
    assert b.queued == 0
    assert a.queued == 0  # detached: gets nothing
    hub.dispatch(committed([msg("node-2", T0, [("temp", T0, 2.0)])]), NOW)
    assert len(await frames(b)) == 1
    hub.detach(b)
    assert sample(registry, "fieldhub_live_groups") == 0
    assert sample(registry, "fieldhub_live_viewers") == 0
    assert hub.viewers == 0
    # Nobody left: dispatching is harmless.
    hub.dispatch(committed([msg("node-2", T0, [("temp", T0 + 1, 2.0)])]), NOW)


async def test_a_viewer_that_never_subscribed_can_detach(
    hub: LiveHub, registry: CollectorRegistry
) -> None:
    viewer = hub.new_viewer()
    assert sample(registry, "fieldhub_live_viewers") == 1
    hub.detach(viewer)
    assert sample(registry, "fieldhub_live_viewers") == 0
    assert sample(registry, "fieldhub_live_groups") == 0


# -- devices, attributes, presence ----------------------------------------------------------------


async def test_device_events_reach_groups_whatever_their_device_list(hub: LiveHub) -> None:
    listing_other = subscribe(hub, devices=["node-1"], events=["devices"])
    everything = subscribe(hub)
    not_devices = subscribe(hub, events=["readings", "presence"])
    decoded = msg("node-new", T0 + 5, [("temp", T0 + 5, 1.0)], profile="readings")
    hub.dispatch(committed([decoded], new_devices=["node-new"]), NOW)
    expected = {
        "type": "device",
        "device": {
            "id": "node-new",
            "profile": "readings",
            "first_seen": T0 + 5,
            "values": [["temp", T0 + 5, 1.0]],
        },
    }
    assert await frames(listing_other) == [expected]
    assert of_type(await frames(everything), "device") == [expected]
    assert of_type(await frames(not_devices), "device") == []


async def test_new_device_values_are_the_newest_reading_per_metric_of_its_first_batch(
    hub: LiveHub,
) -> None:
    """Newest by device time (not arrival); other devices' readings are not mixed in; a device
    whose first message has no readings comes with no values."""
    viewer = subscribe(hub, devices=["node-1"], events=["devices"])
    hub.dispatch(
        committed(
            [
                msg("new-a", T0, [("temp", T0 + 20, 2.0), ("hum", T0, 40.0)]),
                msg("known", T0, [("temp", T0 + 99, 99.0)]),
                msg("new-a", T0 + 1, [("temp", T0 + 10, 1.0), ("hum", T0 + 30, 41.0)]),
                msg("new-b", T0 + 2, presence="online"),
            ],
            new_devices=["new-a", "new-b"],
        ),
        NOW,
    )
    sent = {f["device"]["id"]: f["device"] for f in await frames(viewer)}
    assert set(sent) == {"new-a", "new-b"}
    assert sorted(sent["new-a"]["values"]) == [["hum", T0 + 30, 41.0], ["temp", T0 + 20, 2.0]]
    assert sent["new-a"]["first_seen"] == T0
    assert sent["new-b"]["values"] == []
    assert sent["new-b"]["first_seen"] == T0 + 2


async def test_new_device_frame_agrees_with_the_store_when_its_first_batch_has_two_messages(
    hub: LiveHub, tmp_path: Path
) -> None:
    """A native node's retained `online` and its first telemetry usually share a batch. The store
    registers the device with the first message's time and profile; the live `device` frame must
    say the same, and its values must be the latest values a reload reads (docs/live.md)."""
    store = open_store(f"sqlite:///{tmp_path}/t.db", stale_after_s={"native": 120})
    await store.open()
    try:
        batch = WriteBatch(
            decoded=[
                msg("node-new", T0, presence="online"),
                msg("node-new", T0 + 3_000, [("temp", T0 + 3_000, 21.0), ("hum", T0, 40.0)]),
                msg("node-new", T0 + 4_000, [("temp", T0 + 2_000, 20.0)]),  # late, older
            ]
        )
        result = await store.write_batch(batch)
        row = await store.get_device("node-new", now_us=NOW)
        latest = await store.device_metrics("node-new")
    finally:
        await store.close()
    assert row is not None
    assert result.new_devices == ["node-new"]
    viewer = subscribe(hub, events=["devices"])
    hub.dispatch(committed(batch.decoded, new_devices=result.new_devices), NOW)
    [frame] = await frames(viewer)
    device = frame["device"]
    assert (device["id"], device["profile"], device["first_seen"]) == (
        "node-new",
        row.profile,
        row.first_seen_us,
    )
    assert sorted(device["values"]) == sorted([m.name, m.last_ts_us, m.last_value] for m in latest)


async def test_attributes_go_to_groups_following_the_device_with_device_events(
    hub: LiveHub,
) -> None:
    following = subscribe(hub, devices=["node-1"], events=["devices"])
    other = subscribe(hub, devices=["node-2"], events=["devices"])
    readings_only = subscribe(hub, devices=["node-1"], events=["readings"])
    hub.dispatch(committed([msg("node-1", T0, attributes={"fw": "2.1", "ip": None})]), NOW)
    assert await frames(following) == [
        {"type": "attributes", "device": "node-1", "attributes": {"fw": "2.1", "ip": None}}
    ]
    assert other.queued == 0
    assert readings_only.queued == 0


async def test_presence_changes_reach_presence_subscribers_of_the_device(hub: LiveHub) -> None:
    following = subscribe(hub, devices=["a4cf12b3c4d5"], events=["presence"])
    everyone = subscribe(hub, events=["presence"])
    other = subscribe(hub, devices=["node-2"], events=["presence"])
    no_presence = subscribe(hub, events=["readings"])
    hub.dispatch(
        committed(
            presence=[
                PresenceChange(MAC, "offline", T0 + 1),
                PresenceChange("node-3", "online", T0 + 2),
            ]
        ),
        NOW,
    )
    offline = {"type": "presence", "device": MAC, "state": "offline", "since": T0 + 1}
    online = {"type": "presence", "device": "node-3", "state": "online", "since": T0 + 2}
    assert await frames(following) == [offline]
    assert await frames(everyone) == [offline, online]
    assert other.queued == 0
    assert no_presence.queued == 0


# -- dead letters ---------------------------------------------------------------------------------


async def test_dead_letter_items_carry_what_the_page_shows(hub: LiveHub) -> None:
    viewer = subscribe(hub, events=["dead_letters"])
    binary = b"\x00\x9f\x92\x96" * 100
    hub.dispatch(committed(dead_letters=[letter(1, "node-1", binary)]), NOW)
    assert await frames(viewer) == [
        {
            "type": "dead_letters",
            "items": [
                {
                    "received": T0 + 1,
                    "topic": "devices/node-1/telemetry",
                    "reason": "malformed_json",
                    "detail": "problem 1",
                    "device": "node-1",
                    "profile": "native",
                    "size": 400,
                    "preview": payload_preview(binary),
                }
            ],
            "suppressed": 0,
        }
    ]
    assert payload_preview(binary).startswith("hex: 00 9f 92 96")


async def test_dead_letters_are_filtered_by_device(hub: LiveHub) -> None:
    """A letter without a device reaches only subscriptions to every device."""
    everyone = subscribe(hub, events=["dead_letters"])
    node_1 = subscribe(hub, devices=["node-1"], events=["dead_letters"])
    not_wanted = subscribe(hub, devices=["node-1"], events=["readings"])
    hub.dispatch(committed(dead_letters=[letter(1, None), letter(2, "node-1")]), NOW)
    [all_frame] = await frames(everyone)
    assert [i["detail"] for i in all_frame["items"]] == ["problem 1", "problem 2"]
    [node_frame] = await frames(node_1)
    assert [i["detail"] for i in node_frame["items"]] == ["problem 2"]
    assert not_wanted.queued == 0


async def test_at_most_20_dead_letters_per_window_the_rest_counted_as_suppressed(
    hub: LiveHub,
) -> None:
    viewer = subscribe(hub, events=["dead_letters"])
    hub.dispatch(committed(dead_letters=[letter(n) for n in range(25)]), NOW)
    [first] = await frames(viewer)
    assert len(first["items"]) == DEAD_LETTERS_PER_FRAME == 20
    assert [i["detail"] for i in first["items"]] == [f"problem {n}" for n in range(20)]
    assert first["suppressed"] == 5
    # Same window: nothing more is sent until the window ends.
    hub.dispatch(committed(dead_letters=[letter(n) for n in range(25, 28)]), NOW + 1)
    assert viewer.queued == 0
    # Next window: a new letter goes out at once; those of the last window that did not fit are
    # in the same frame or counted in its `suppressed`, never lost silently.
    hub.dispatch(committed(dead_letters=[letter(28)]), NOW + DEAD_LETTER_WINDOW_US)
    [second] = await frames(viewer)
    details = [i["detail"] for i in second["items"]]
    assert "problem 28" in details
    assert set(details) <= {f"problem {n}" for n in range(25, 29)}
    assert len(details) + second["suppressed"] == 4


async def test_dead_letter_frames_are_limited_to_four_a_second(hub: LiveHub) -> None:
    """docs/live.md: "Dead letters are limited to 20 items per frame and 4 frames a second per
    subscription". One dead letter per batch (a misconfigured node, ingest committing every
    5 ms) must not become one frame per batch."""
    viewer = subscribe(hub, events=["dead_letters"])
    for n in range(10):
        hub.dispatch(committed(dead_letters=[letter(n)]), NOW + n * 5_000)  # 10 batches, 50 ms
    hub.dispatch(committed(dead_letters=[letter(10)]), NOW + DEAD_LETTER_WINDOW_US)
    sent = await frames(viewer)
    # Every letter is either shown or counted, and two windows carry at most two frames.
    shown = sum(len(f["items"]) for f in sent)
    assert shown + sum(f["suppressed"] for f in sent) == 11
    assert len(sent) <= 2, f"{len(sent)} dead_letters frames within two 250 ms windows"


# -- slow viewers ---------------------------------------------------------------------------------


async def test_viewer_outbox_drops_oldest_and_reports_lagged_first(
    registry: CollectorRegistry,
) -> None:
    viewer = Viewer(LiveMetrics(registry), maxlen=4)
    for n in range(7):
        viewer.push(f"frame-{n}")
    assert viewer.queued == 4
    assert viewer.dropped == 3
    assert sample(registry, "fieldhub_live_dropped_frames_total") == 3
    assert sample(registry, "fieldhub_live_frames_total") == 7
    sent = await raw_frames(viewer)
    assert [orjson.loads(sent[0])] == [{"type": "lagged", "dropped": 3}]
    assert sent[1:] == ["frame-3", "frame-4", "frame-5", "frame-6"]
    # Reported once; new drops are reported again with their own count.
    viewer.push("frame-7")
    assert await raw_frames(viewer) == ["frame-7"]
    for n in range(8, 14):
        viewer.push(f"frame-{n}")
    sent = await raw_frames(viewer)
    assert orjson.loads(sent[0]) == {"type": "lagged", "dropped": 2}
    assert sent[1:] == [f"frame-{n}" for n in range(10, 14)]
    assert viewer.dropped == 5


async def test_next_frame_waits_for_a_push(registry: CollectorRegistry) -> None:
    viewer = Viewer(LiveMetrics(registry))
    waiting = asyncio.create_task(viewer.next_frame())
    await asyncio.sleep(0)  # the sender is now parked on an empty outbox
    assert not waiting.done()
    viewer.push("hello")
    assert await asyncio.wait_for(waiting, timeout=5) == "hello"


async def test_a_slow_viewer_loses_only_its_own_frames(
    hub: LiveHub, registry: CollectorRegistry
) -> None:
    """Two viewers in one group: the one that never reads overflows; the other gets everything."""
    slow = subscribe(hub, events=["presence"])
    fast = subscribe(hub, events=["presence"])
    total = OUTBOX_FRAMES + 44
    received: list[dict[str, Any]] = []
    for n in range(total):
        state: Presence = "online" if n % 2 == 0 else "offline"
        hub.dispatch(committed(presence=[PresenceChange("node-1", state, T0 + n)]), NOW + n)
        received += await frames(fast)
    assert [f["since"] for f in received] == [T0 + n for n in range(total)]
    assert fast.dropped == 0
    assert slow.queued == OUTBOX_FRAMES
    assert slow.dropped == 44
    sent = await frames(slow)
    assert sent[0] == {"type": "lagged", "dropped": 44}
    assert [f["since"] for f in sent[1:]] == [T0 + n for n in range(44, total)]
    assert sample(registry, "fieldhub_live_dropped_frames_total") == 44


# -- the hub's task -------------------------------------------------------------------------------


async def test_hub_task_releases_held_readings_and_pushes_stats(
    bus: EventBus, registry: CollectorRegistry
) -> None:
    """On the real bus and clock: the first reading at once, the newest held one after the
    window (the tick), and a stats frame only to stats subscribers."""
    stats_calls = 0

    async def stats() -> dict[str, Any]:
        nonlocal stats_calls
        stats_calls += 1
        return {"fleet": {"devices": 1}}

    hub = LiveHub(bus, registry, stats=stats)
    readings = subscribe(hub, devices=["node-1"], events=["readings"], min_interval_ms=100)
    stats_viewer = subscribe(hub, devices=[], events=["stats"])
    task = asyncio.create_task(hub.run())
    try:
        now = time.time_ns() // 1_000
        for n in range(5):
            bus.on_commit(
                WriteBatch(decoded=[msg("node-1", now, [("temp", now + n, float(n))])]),
                WriteResult(),
                now,
            )
        first = orjson.loads(await asyncio.wait_for(readings.next_frame(), timeout=5))
        assert first == {"type": "readings", "data": [["node-1", "temp", now, 0.0]]}
        held = orjson.loads(await asyncio.wait_for(readings.next_frame(), timeout=5))
        assert held == {"type": "readings", "data": [["node-1", "temp", now + 4, 4.0]]}
        got = orjson.loads(await asyncio.wait_for(stats_viewer.next_frame(), timeout=5))
        assert got == {"type": "stats", "data": {"fleet": {"devices": 1}}}
        assert stats_calls >= 1
        assert readings.queued == 0  # no stats for a viewer that did not ask
        assert hub.bus_backlog == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sample(registry, "fieldhub_bus_subscribers") == 0  # the task closed its subscription


async def test_alarm_changes_reach_alarm_subscribers_of_the_device_one_frame_each(
    bus: EventBus, registry: CollectorRegistry
) -> None:
    """On the real bus: every move of an alarm (raised, acknowledged) is one `alarm` frame with
    the alarm as the REST API shows it, to viewers that asked for alarms of its device only."""
    hub = LiveHub(bus, registry)
    following = subscribe(hub, devices=["a4cf12b3c4d5"], events=["alarms"])
    everyone = subscribe(hub, events=["alarms", "readings"])
    other = subscribe(hub, devices=["node-2"], events=["alarms"])
    no_alarms = subscribe(hub, devices=["a4cf12b3c4d5"], events=["commands"])
    raised = AlarmRow(
        alarm_id="a-1",
        rule_id="cold-room-high",
        device_id=MAC,
        severity="major",
        state="active",
        raised_us=T0,
    )
    acked = dataclasses.replace(
        raised,
        state="acknowledged",
        acked_us=T0 + 1_000_000,
        acked_by="ops",
        ack_comment="door shut",
    )
    task = asyncio.create_task(hub.run())
    try:
        bus.publish(AlarmChanged(raised))
        bus.publish(AlarmChanged(acked))
        got = [
            orjson.loads(await asyncio.wait_for(following.next_frame(), timeout=5))
            for _ in range(2)
        ]
        assert [f["type"] for f in got] == ["alarm", "alarm"]
        assert [f["alarm"]["state"] for f in got] == ["active", "acknowledged"]
        assert got[1]["alarm"] == {
            "id": "a-1",
            "rule": "cold-room-high",
            "device": MAC,
            "severity": "major",
            "state": "acknowledged",
            "raised": format_us(T0),
            "acknowledged": format_us(T0 + 1_000_000),
            "acknowledged_by": "ops",
            "ack_comment": "door shut",
            "cleared": None,
            "cleared_by": None,
            "last_notified": None,
            "notifications": 0,
            "escalated": None,
        }
        for _ in range(2):
            frame = orjson.loads(await asyncio.wait_for(everyone.next_frame(), timeout=5))
            assert frame["type"] == "alarm"
        assert other.queued == 0
        assert no_alarms.queued == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_hello_frame_names_the_version_and_server_time(hub: LiveHub) -> None:
    before = time.time_ns() // 1_000
    hello = orjson.loads(hub.hello())
    after = time.time_ns() // 1_000
    assert hello["type"] == "hello"
    assert hello["version"] == __version__
    assert before <= hello["server_time"] <= after
