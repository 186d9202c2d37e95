"""Ingest's side of live updates: the adaptive linger and the commit listeners.

Messages go through the real decoder into a real SQLite store. The rate window is measured on
`time.monotonic`; the linger tests replace the pipeline's clock with a manual one so that "6,000
messages in one second" is exact instead of depending on how fast this machine writes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from fieldhub.events import EventBus
from fieldhub.ingest import pipeline
from fieldhub.ingest.metrics import IngestMetrics
from fieldhub.ingest.pipeline import (
    FLUSH_LINGER_LOW_RATE_MS,
    FLUSH_LINGER_MS,
    LINGER_RATE_THRESHOLD,
    RATE_WINDOW_S,
    AckToken,
    Ingest,
)
from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.messages import InboundMessage
from fieldhub.protocol.profiles import select_profiles
from fieldhub.store import Store, open_store
from fieldhub.store.types import PresenceChange, WriteBatch, WriteResult
from support.mqtt import count_rows

LOW = FLUSH_LINGER_LOW_RATE_MS / 1000
LONG = FLUSH_LINGER_MS / 1000


class ManualClock:
    """Stands in for the `time` module inside fieldhub.ingest.pipeline: `monotonic` moves only
    on `advance`; the other functions the pipeline uses are the real ones."""

    perf_counter = staticmethod(time.perf_counter)
    time_ns = staticmethod(time.time_ns)

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    manual = ManualClock()
    monkeypatch.setattr(pipeline, "time", manual)
    return manual


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/fieldhub.db", stale_after_s={"native": 120})
    await opened.open()
    yield opened
    await opened.close()


async def new_ingest(store: Store, **kwargs: Any) -> Ingest:
    ingest = Ingest(
        store=store,
        decoder=MessageDecoder(select_profiles(["native"])),
        metrics=IngestMetrics(CollectorRegistry()),
        **kwargs,
    )
    await ingest.load_state()
    return ingest


def feed(ingest: Ingest, count: int, *, start: int = 0, devices: int = 50) -> None:
    """`count` telemetry messages, as the MQTT network thread hands them over."""
    now_us = time.time_ns() // 1_000
    for n in range(start, start + count):
        payload = orjson.dumps({"temperature": n % 40, "seq": n})
        ingest.on_message(
            InboundMessage(f"devices/lg-{n % devices}/telemetry", payload, now_us + n), None
        )


def stored_readings(tmp_path: Path) -> int:
    return count_rows(tmp_path / "fieldhub.db", "SELECT count(*) FROM readings")


async def test_linger_is_short_at_low_rates_and_long_above_the_threshold(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    ingest = await new_ingest(store)
    assert ingest.current_linger_s() == LOW  # nothing measured yet

    # T + 1,000 messages within one rate window: above the threshold once the window closes.
    high = LINGER_RATE_THRESHOLD + 1_000
    feed(ingest, LINGER_RATE_THRESHOLD)
    await ingest.drain()
    assert ingest.current_linger_s() == LOW  # the window has not closed yet
    clock.advance(RATE_WINDOW_S)
    feed(ingest, 1_000, start=LINGER_RATE_THRESHOLD)
    await ingest.drain()
    assert ingest.rate == pytest.approx(high / RATE_WINDOW_S)
    assert ingest.current_linger_s() == LONG
    assert stored_readings(tmp_path) == 2 * high  # temperature and seq of every message

    # The next second carries T - 1,000: below the threshold, back to the short linger.
    low = LINGER_RATE_THRESHOLD - 1_000
    feed(ingest, low - 1, start=high)
    await ingest.drain()
    assert ingest.current_linger_s() == LONG  # still the last measured window
    clock.advance(RATE_WINDOW_S)
    feed(ingest, 1, start=high + low - 1)
    await ingest.drain()
    assert ingest.rate == pytest.approx(low / RATE_WINDOW_S)
    assert ingest.current_linger_s() == LOW


async def test_a_rate_exactly_at_the_threshold_counts_as_high(
    store: Store, clock: ManualClock
) -> None:
    ingest = await new_ingest(store)
    feed(ingest, LINGER_RATE_THRESHOLD - 1)
    await ingest.drain()
    clock.advance(RATE_WINDOW_S)
    feed(ingest, 1, start=LINGER_RATE_THRESHOLD)
    await ingest.drain()
    assert ingest.rate == LINGER_RATE_THRESHOLD
    assert ingest.current_linger_s() == LONG


async def test_after_an_idle_spell_the_old_high_rate_is_forgotten(
    store: Store, clock: ManualClock
) -> None:
    """A burst measured above the threshold, then silence: after three windows the linger is
    short again, so the first message after a pause is not held 100 ms."""
    ingest = await new_ingest(store)
    burst = LINGER_RATE_THRESHOLD + 3_000
    feed(ingest, burst - 1)
    await ingest.drain()
    clock.advance(RATE_WINDOW_S)
    feed(ingest, 1, start=burst - 1)
    await ingest.drain()
    assert ingest.current_linger_s() == LONG
    clock.advance(3 * RATE_WINDOW_S)
    assert ingest.current_linger_s() == LONG  # exactly three windows: not yet
    clock.advance(0.001)
    assert ingest.current_linger_s() == LOW
    assert ingest.rate == 0.0


async def test_configured_lingers_and_the_low_one_never_exceeds_the_long_one(
    store: Store, clock: ManualClock
) -> None:
    ingest = await new_ingest(store, linger_ms=20, low_rate_linger_ms=50)
    assert ingest.current_linger_s() == 0.020
    ingest = await new_ingest(store, linger_ms=80, low_rate_linger_ms=2)
    assert ingest.current_linger_s() == 0.002


async def test_commit_listeners_get_the_batch_its_result_and_the_commit_time(
    store: Store, tmp_path: Path
) -> None:
    """Every listener is called once per commit, after the commit and after the broker ack,
    with what was stored: decoded messages, dead letters, new devices, presence changes."""
    ingest = await new_ingest(store)
    calls: list[tuple[str, Any]] = []

    def acker(tokens: Sequence[AckToken]) -> None:
        calls.append(("ack", list(tokens)))

    def listener(batch: WriteBatch, result: WriteResult, committed_us: int) -> None:
        # Only committed data is published: another connection already reads it.
        calls.append(("listener", (batch, result, committed_us, stored_readings(tmp_path))))

    second: list[int] = []
    ingest.acker = acker
    ingest.listeners.append(listener)
    ingest.listeners.append(lambda batch, result, committed_us: second.append(committed_us))

    received = time.time_ns() // 1_000
    messages = [
        InboundMessage("devices/lst-1/status", b"online", received),
        InboundMessage("devices/lst-1/telemetry", b'{"temperature": 21.5}', received + 1),
        InboundMessage("devices/lst-2/telemetry", b'{"temperature": 21.5,', received + 2),
    ]
    for n, message in enumerate(messages):
        ingest.on_message(message, (1, n))
    before = time.time_ns() // 1_000
    await ingest.drain()
    after = time.time_ns() // 1_000

    assert [kind for kind, _ in calls] == ["ack", "listener"]
    assert calls[0][1] == [(1, 0), (1, 1), (1, 2)]
    batch, result, committed_us, readings_visible = calls[1][1]
    assert readings_visible == 1
    assert before <= committed_us <= after
    assert second == [committed_us]

    assert [(d.device_id, d.channel) for d in batch.decoded] == [
        ("lst-1", "status"),
        ("lst-1", "telemetry"),
    ]
    assert [(r.metric, r.value) for r in batch.decoded[1].readings] == [("temperature", 21.5)]
    [dead] = batch.dead_letters
    assert (dead.topic, dead.reason, dead.device_id) == (
        "devices/lst-2/telemetry",
        "malformed_json",
        "lst-2",
    )
    assert result.readings_written == 1
    assert result.dead_letters == 1
    assert result.new_devices == ["lst-1"]
    assert result.presence_changes == [PresenceChange("lst-1", "online", received)]

    # A later batch: a listener sees only that batch; a known device is no longer new.
    ingest.on_message(
        InboundMessage("devices/lst-1/telemetry", b'{"temperature": 22}', received + 3), (1, 3)
    )
    await ingest.drain()
    batch, result, _, _ = calls[-1][1]
    assert len(batch) == 1
    assert result.new_devices == []
    assert result.presence_changes == []
    assert len(second) == 2


async def test_the_event_bus_as_listener_publishes_each_committed_batch(store: Store) -> None:
    """The wiring of app.Platform: ingest.listeners -> bus.on_commit -> every subscriber."""
    ingest = await new_ingest(store)
    bus = EventBus(CollectorRegistry())
    ingest.listeners.append(bus.on_commit)
    subscription = bus.subscribe("test")
    received = time.time_ns() // 1_000
    ingest.on_message(InboundMessage("devices/bus-1/status", b"offline", received), None)
    ingest.on_message(
        InboundMessage("devices/bus-1/telemetry", b'{"rssi": -60}', received + 1), None
    )
    await ingest.drain()
    event = subscription.get_nowait()
    assert event is not None
    assert subscription.get_nowait() is None
    assert event.new_devices == ["bus-1"]
    assert event.presence_changes == [PresenceChange("bus-1", "offline", received)]
    assert [r.metric for d in event.decoded for r in d.readings] == ["rssi"]
    assert event.dead_letters == []
    assert event.committed_us >= received
