"""The event bus: fan-out to bounded queues, oldest dropped and counted, never a wait."""

from __future__ import annotations

import asyncio
import inspect

from prometheus_client import CollectorRegistry

from fieldhub.events import Committed, EventBus, Subscription
from fieldhub.store.types import DeadLetter, PresenceChange, WriteBatch, WriteResult
from support.store_rows import T0, msg


def event(n: int) -> Committed:
    """A distinct committed batch: `n` is its commit time offset and its device's name."""
    return Committed(
        committed_us=T0 + n,
        decoded=[msg(f"dev-{n}", T0 + n, [("temp", T0 + n, float(n))])],
        dead_letters=[],
        new_devices=[],
        presence_changes=[],
    )


def drain(subscription: Subscription) -> list[Committed]:
    out: list[Committed] = []
    while (item := subscription.get_nowait()) is not None:
        out.append(item)
    return out


def dropped_metric(registry: CollectorRegistry, subscriber: str) -> float | None:
    return registry.get_sample_value(
        "fieldhub_bus_dropped_events_total", {"subscriber": subscriber}
    )


def test_every_subscriber_gets_every_event_in_order(bus: EventBus) -> None:
    """Three subscribers each receive the same events, oldest first."""
    subs = [bus.subscribe(name) for name in ("live", "rules", "export")]
    events = [event(n) for n in range(5)]
    for e in events:
        bus.publish(e)
    for sub in subs:
        assert len(sub) == 5
        assert drain(sub) == events
        assert sub.dropped == 0
    assert bus.published == 5
    assert bus.dropped_events == 0


def test_a_subscriber_only_sees_events_published_after_it_subscribed(bus: EventBus) -> None:
    early = bus.subscribe("early")
    bus.publish(event(1))
    late = bus.subscribe("late")
    bus.publish(event(2))
    assert [e.committed_us for e in drain(early)] == [T0 + 1, T0 + 2]
    assert [e.committed_us for e in drain(late)] == [T0 + 2]


def test_full_queue_drops_the_oldest_and_counts_per_subscriber(
    bus: EventBus, registry: CollectorRegistry
) -> None:
    """maxlen 3, 10 events: the slow one keeps the newest 3 and counts 7 lost; a roomy one none."""
    slow = bus.subscribe("slow", maxlen=3)
    roomy = bus.subscribe("roomy", maxlen=100)
    for n in range(10):
        bus.publish(event(n))
    assert len(slow) == 3
    assert [e.committed_us for e in drain(slow)] == [T0 + 7, T0 + 8, T0 + 9]
    assert slow.dropped == 7
    assert roomy.dropped == 0
    assert len(drain(roomy)) == 10
    assert bus.dropped_events == 7
    assert dropped_metric(registry, "slow") == 7
    # A subscriber that never dropped has no (or a zero) sample.
    assert not dropped_metric(registry, "roomy")


def test_drops_accumulate_and_reading_makes_room_again(
    bus: EventBus, registry: CollectorRegistry
) -> None:
    sub = bus.subscribe("slow", maxlen=2)
    for n in range(3):
        bus.publish(event(n))
    assert sub.dropped == 1
    assert sub.get_nowait() == event(1)
    bus.publish(event(3))  # room for one: nothing dropped
    assert sub.dropped == 1
    bus.publish(event(4))
    assert sub.dropped == 2
    assert [e.committed_us for e in drain(sub)] == [T0 + 3, T0 + 4]
    assert dropped_metric(registry, "slow") == 2


def test_publish_is_synchronous_and_never_waits_for_a_stuck_subscriber(bus: EventBus) -> None:
    """publish() is a plain function; 100k events into a queue nobody reads return at once,
    holding only `maxlen` events."""
    assert not inspect.iscoroutinefunction(bus.publish)
    assert not inspect.iscoroutinefunction(bus.on_commit)
    stuck = bus.subscribe("stuck", maxlen=8)
    e = event(0)
    for _ in range(100_000):
        assert bus.publish(e) is None  # type: ignore[func-returns-value]
    assert len(stuck) == 8
    assert stuck.dropped == 100_000 - 8


async def test_publish_never_yields_to_the_event_loop(bus: EventBus) -> None:
    """Ingest calls on_commit on the loop thread: nothing else may run in between."""
    bus.subscribe("slow", maxlen=1)
    bus.subscribe("other")
    others_ran = False

    def other_task() -> None:
        nonlocal others_ran
        others_ran = True

    asyncio.get_running_loop().call_soon(other_task)
    for n in range(1_000):
        bus.publish(event(n))
        bus.on_commit(WriteBatch(decoded=[msg("a")]), WriteResult(), T0 + n)
    assert not others_ran
    await asyncio.sleep(0)  # now yield once: the loop was free all along
    assert others_ran


async def test_get_waits_for_the_next_event_and_returns_it(bus: EventBus) -> None:
    sub = bus.subscribe("waiter")
    getter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)  # let the getter start waiting on an empty queue
    assert not getter.done()
    bus.publish(event(1))
    got = await asyncio.wait_for(getter, timeout=5)
    assert got == event(1)
    assert len(sub) == 0
    # Queued events are returned without waiting, oldest first.
    bus.publish(event(2))
    bus.publish(event(3))
    assert await asyncio.wait_for(sub.get(), timeout=5) == event(2)
    assert await asyncio.wait_for(sub.get(), timeout=5) == event(3)


def test_on_commit_does_nothing_without_subscribers(bus: EventBus) -> None:
    bus.on_commit(WriteBatch(decoded=[msg("a")]), WriteResult(new_devices=["a"]), T0)
    assert bus.published == 0


def test_on_commit_publishes_what_the_batch_stored(bus: EventBus) -> None:
    """The Committed event carries the batch's data and the result's new devices and changes."""
    sub = bus.subscribe("live")
    decoded = msg("a", T0, [("temp", T0, 21.5)], presence="online")
    letter = DeadLetter("devices/b/telemetry", b"{", "malformed_json", "eof", T0, "b", "native")
    change = PresenceChange("a", "online", T0)
    bus.on_commit(
        WriteBatch(decoded=[decoded], dead_letters=[letter]),
        WriteResult(readings_written=1, new_devices=["a"], presence_changes=[change]),
        T0 + 5,
    )
    assert bus.published == 1
    got = sub.get_nowait()
    assert got == Committed(
        committed_us=T0 + 5,
        decoded=[decoded],
        dead_letters=[letter],
        new_devices=["a"],
        presence_changes=[change],
    )


def test_unsubscribe_and_close_stop_delivery(bus: EventBus, registry: CollectorRegistry) -> None:
    a = bus.subscribe("a")
    b = bus.subscribe("b")
    assert registry.get_sample_value("fieldhub_bus_subscribers") == 2
    bus.unsubscribe(a)
    bus.publish(event(1))
    assert len(a) == 0
    assert len(b) == 1
    b.close()
    assert registry.get_sample_value("fieldhub_bus_subscribers") == 0
    bus.publish(event(2))
    assert len(b) == 1  # nothing new after close
    # Unsubscribing twice is harmless; with nobody left, on_commit publishes nothing.
    bus.unsubscribe(a)
    b.close()
    published = bus.published
    bus.on_commit(WriteBatch(decoded=[msg("x")]), WriteResult(), T0)
    assert bus.published == published
