"""The window loop in-process: real SQLite store, real event bus, the shipped model through ONNX
Runtime, the command service on a real Mosquitto, a manual clock.

Covers: the own trigger (first at once, then only when the window means move 1.5 baseline
deviations), shadow mode never moving the window, a manual command pausing automatic control
for its time, one decision at a time, a restart keeping the guard state and the last decision's
means, and activate / rollback changing what is served.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from fieldhub.broker import MosquittoProcess
from fieldhub.clock import US_PER_S, ManualClock
from fieldhub.commands.admission import NewCommand
from fieldhub.commands.service import CommandService
from fieldhub.errors import FieldhubError
from fieldhub.events.bus import EventBus
from fieldhub.ml.guards import GuardConfig
from fieldhub.ml.loop import DEDUPE_S, LoopConfig, WindowLoop
from fieldhub.ml.registry import Registry
from fieldhub.ml.trigger import TriggerParams
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.protocol.messages import Decoded, InferenceRequest, Reading
from fieldhub.store import Store, open_store
from fieldhub.store.types import MlDecisionRow, WriteBatch
from support.commands import TopicRecorder, recorder

S = US_PER_S
MIN = 60 * S
# Readings every 10 s for two hours before T0: a baseline with a known spread.
T0 = 1_800_000_000 * S
OPEN = GuardConfig(min_confidence=0.0, deadband=0, min_interval_s=0, max_step=100)


class Room:
    """A store, a bus, a clock and loops over them (a second loop is a restart)."""

    def __init__(
        self, store: Store, tmp_path: Path, bus: EventBus, commands: CommandService
    ) -> None:
        self.store = store
        self.clock = ManualClock(T0)
        self.bus = bus
        self.models = tmp_path / "models"
        self.commands = commands
        self.loops: list[WindowLoop] = []
        self.metrics = CollectorRegistry()

    async def loop(self, mode: str = "act") -> WindowLoop:
        self.metrics = CollectorRegistry()  # the latest loop's
        loop = WindowLoop(
            self.store,
            self.bus,
            self.commands,
            Registry(self.models),
            metrics=self.metrics,
            mode=mode,  # type: ignore[arg-type]
            clock=self.clock,
            tick_s=3600,
        )
        await loop.start()
        self.loops.append(loop)
        return loop

    async def stop(self, loop: WindowLoop) -> None:
        await loop.stop()
        self.loops.remove(loop)

    async def commit(self, device_id: str, rows: Sequence[tuple[str, int, float]]) -> None:
        batch = WriteBatch(
            decoded=[
                Decoded(
                    device_id=device_id,
                    profile="sensor",
                    channel="telemetry",
                    received_us=max(ts for _, ts, _ in rows),
                    readings=[Reading(m, ts, v) for m, ts, v in rows],
                    device_time=True,
                    command_format="sensor",
                    topic_id=device_id,
                )
            ]
        )
        result = await self.store.write_batch(batch)
        self.bus.on_commit(batch, result, self.clock.now_us())
        await asyncio.sleep(0.01)  # the loops' bus consumers

    async def history(self, device_id: str, temperature: float = 24.0) -> None:
        """Two hours of readings every 10 s up to now, each feature on an hourly swing (so its
        minute means have a spread: the baseline deviation is ~0.7 of the swing)."""
        start = self.clock.now_us() - 2 * 3600 * S
        rows: list[tuple[str, int, float]] = []
        for n in range(720):
            ts = start + n * 10 * S
            swing = math.sin(2 * math.pi * n / 360)
            rows += [
                ("temperature", ts, temperature + swing),
                ("humidity", ts, 55.0 + 2 * swing),
                ("sound_volume", ts, -45.0 + 3 * swing),
            ]
        await self.commit(device_id, rows)

    async def reading(self, device_id: str) -> None:
        """One reading of each feature now, near the history's level."""
        now = self.clock.now_us()
        await self.commit(
            device_id,
            [("temperature", now, 24.0), ("humidity", now, 55.0), ("sound_volume", now, -45.0)],
        )

    async def close(self) -> None:
        for loop in list(self.loops):
            await loop.stop()


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/fieldhub.db", stale_after_s={"sensor": 180})
    await opened.open()
    yield opened
    await opened.close()


@pytest_asyncio.fixture(loop_scope="function")
async def room(store: Store, tmp_path: Path, mosquitto: MosquittoProcess) -> AsyncIterator[Room]:
    """The loop and the command service on one bus, as the platform has them."""
    bus = EventBus(CollectorRegistry())
    commands = CommandService(
        store=store,
        bus=bus,
        endpoint=parse_mqtt_url(mosquitto.url),
        client_id=f"fh-ml-{uuid.uuid4().hex[:8]}",
        protocol=4,
        registry=CollectorRegistry(),
    )
    await commands.start()
    made = Room(store, tmp_path, bus, commands)
    yield made
    await asyncio.wait_for(made.close(), 5)
    await asyncio.wait_for(commands.stop(), 5)


@pytest.fixture
def wire(mosquitto: MosquittoProcess) -> Iterator[TopicRecorder]:
    with ExitStack() as closing:
        yield recorder(mosquitto.url, "window/+/control", closing)


async def eventually(condition: Callable[[], object], what: str, timeout_s: float = 10) -> None:
    """Wait for `condition` without blocking the event loop the loop's tasks run on."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def device() -> str:
    return f"esp32_{uuid.uuid4().hex[:6]}"


async def decisions(room: Room, node: str) -> list[MlDecisionRow]:
    """The device's decisions, oldest first, once the loop is done with what it was given."""
    for loop in room.loops:
        await loop.wait_idle()
    return list(reversed(await room.store.list_ml_decisions(device=node, limit=100)))


async def test_a_reading_runs_the_own_trigger_first_then_only_past_the_threshold(
    room: Room,
) -> None:
    loop = await room.loop("shadow")
    node = device()
    await room.history(node)  # committed: the device is new, its trigger is due
    [first] = await decisions(room, node)
    assert (first.trigger, first.reason, first.outcome) == ("own", "first_inference", "shadow")
    assert first.committed_us == room.clock.now_us()  # the reading's batch started it
    assert first.model_name == "window"
    assert first.position is not None
    assert 0 <= first.position <= 100
    assert first.command_id is None  # shadow: decided and recorded, never sent
    # A minute later, the same room: the trigger runs and decides nothing.
    room.clock.advance(60)
    await room.reading(node)
    assert len(await decisions(room, node)) == 1
    # Two minutes of a much warmer room: the 120 s mean moves far past 1.5 deviations.
    room.clock.advance(120)
    now = room.clock.now_us()
    await room.commit(node, [("temperature", now - k * 10 * S, 29.0) for k in range(12)])
    [_, second] = await decisions(room, node)
    assert second.reason == "temperature_zscore"
    assert second.zscores is not None
    z = second.zscores["temperature"]
    assert isinstance(z, float)
    assert z >= 1.5
    # Between readings the timer finds nothing due: the trigger already ran for this reading.
    await loop.tick()
    assert len(await decisions(room, node)) == 2


async def test_act_moves_the_window_with_a_tracked_command_in_the_stacks_format(
    room: Room, wire: TopicRecorder
) -> None:
    loop = await room.loop("act")
    node = device()
    await loop.configure(node, LoopConfig(guards=OPEN))
    await room.history(node)
    [decision] = await decisions(room, node)
    assert decision.outcome == "actuated"
    assert decision.command_id is not None
    assert decision.command_id.startswith("ml-")
    topic = f"window/{node}/control"
    await eventually(lambda: any(t == topic for t, _ in wire.messages()), "the control message")
    [payload] = [json.loads(p) for t, p in wire.messages() if t == topic]
    assert payload["position"] == decision.target_position
    assert payload["confidence"] == pytest.approx(decision.confidence, abs=1e-4)
    assert set(payload["features_used"]) == {"temperature", "humidity", "sound_volume"}
    state = loop.state_of(node)
    assert state is not None
    assert state.position == decision.target_position


async def test_a_manual_command_pauses_automatic_control_for_its_time(room: Room) -> None:
    loop = await room.loop("act")
    node = device()
    await loop.configure(
        node, LoopConfig(guards=OPEN.model_copy(update={"manual_override_s": 600}))
    )
    await room.history(node)
    found = await room.store.get_device(node, now_us=room.clock.now_us())
    assert found is not None
    await room.commands.submit(found, NewCommand(name="set_window", params={"position": 20}))
    await eventually(
        lambda: (s := loop.state_of(node)) is not None and s.manual_until_us is not None,
        what="the loop to see the manual command",
    )
    room.clock.advance(DEDUPE_S + 1)
    held = await loop.decide_now(node)
    assert held.outcome == "held"
    assert held.verdicts[1]["guard"] == "manual_override"
    assert held.verdicts[1]["ok"] is False
    # After the override's time the loop acts again.
    room.clock.advance(601)
    await room.reading(node)
    again = await loop.decide_now(node)
    assert again.outcome in ("actuated", "held")
    assert next(v for v in again.verdicts if v["guard"] == "manual_override")["ok"] is True


async def test_one_decision_per_device_at_a_time(room: Room) -> None:
    loop = await room.loop("act")
    node = device()
    await loop.configure(node, LoopConfig(guards=OPEN))
    await room.history(node)
    room.clock.advance(DEDUPE_S + 1)
    request = InferenceRequest(
        device_id=node,
        profile="sensor",
        received_us=room.clock.now_us(),
        at_us=room.clock.now_us(),
        features={"temperature": 27.0, "humidity": 60.0, "sound_volume": -40.0},
        raw={"device_id": node},
    )
    # A backbone's request and an operator's decision for the same moment.
    on_demand = asyncio.create_task(loop.decide_now(node))
    loop.on_requests([request], room.clock.now_us())
    await on_demand
    [_, one, other] = await decisions(room, node)
    outcomes = sorted((one.outcome == "refused", other.outcome == "refused"))
    assert outcomes == [False, True], (one, other)
    refused = one if one.outcome == "refused" else other
    assert refused.verdicts[0]["guard"] == "one_at_a_time"
    by_trigger = {row.reason: row.committed_us for row in (one, other)}
    assert by_trigger == {"request": room.clock.now_us(), "on_demand": None}
    # After DEDUPE_S the next one decides again.
    room.clock.advance(DEDUPE_S + 1)
    later = await loop.decide_now(node)
    assert later.outcome != "refused"


async def test_an_own_trigger_faster_than_one_at_a_time_waits_instead_of_being_refused(
    room: Room,
) -> None:
    """With `interval_s` below DEDUPE_S, a firing trigger right after a decision could only be
    refused: it is not checked until DEDUPE_S has passed, then it decides."""
    loop = await room.loop("shadow")
    node = device()
    await loop.configure(node, LoopConfig(trigger=TriggerParams(interval_s=1, z_threshold=0.5)))
    await room.history(node)
    [first] = await decisions(room, node)
    checks = room.metrics.get_sample_value("fieldhub_ml_trigger_checks_total")
    for _ in range(int(DEDUPE_S) - 1):
        room.clock.advance(1)
        now = room.clock.now_us()
        await room.commit(node, [("temperature", now, 29.0)])
    assert await decisions(room, node) == [first]  # nothing decided, nothing refused
    assert room.metrics.get_sample_value("fieldhub_ml_trigger_checks_total") == checks
    room.clock.advance(1.5)
    await room.commit(node, [("temperature", room.clock.now_us(), 29.0)])
    [_, second] = await decisions(room, node)
    assert second.outcome != "refused"  # a decision (the guards' default interval holds it)
    assert second.reason.startswith("temperature_zscore")


async def test_a_timer_check_of_an_empty_window_does_not_delay_the_reading_after_it(
    room: Room,
) -> None:
    """The timer may look just before a device's next reading and find its window empty; the
    reading that then arrives checks at once instead of waiting for the next interval."""
    loop = await room.loop("shadow")
    node = device()
    trigger = TriggerParams(interval_s=10, window_s=5)
    await loop.configure(node, LoopConfig(trigger=trigger))
    await room.history(node)  # its last reading 10 s ago: the 5 s window is empty
    assert await decisions(room, node) == []
    await room.reading(node)  # what the check lacked: checked again at once
    [first] = await decisions(room, node)
    room.clock.advance(10)
    await loop.tick()  # the window (5 s) holds no reading: nothing to decide
    assert await decisions(room, node) == [first]
    room.clock.advance(0.5)
    now = room.clock.now_us()
    await room.commit(
        node, [("temperature", now, 29.0), ("humidity", now, 55.0), ("sound_volume", now, -45.0)]
    )
    [_, second] = await decisions(room, node)
    assert second.reason == "temperature_zscore"
    assert second.committed_us == now


async def test_a_restart_keeps_the_guard_state_and_the_last_decisions_means(room: Room) -> None:
    loop = await room.loop("act")
    node = device()
    await loop.configure(
        node, LoopConfig(guards=OPEN, trigger=TriggerParams(z_threshold=2.0, interval_s=30))
    )
    await room.history(node)
    [decision] = await decisions(room, node)
    assert decision.outcome == "actuated"
    before = loop.state_of(node)
    await room.stop(loop)

    again = await room.loop("act")
    assert again.state_of(node) == before
    assert again.is_configured(node)
    assert again.config_of(node).trigger.z_threshold == 2.0
    # Not a first decision after the restart: the last decision's means came back too.
    room.clock.advance(DEDUPE_S + 1)
    assert await again.check(node) is None


async def test_a_version_that_cannot_be_activated_leaves_the_served_one(room: Room) -> None:
    loop = await room.loop("shadow")
    assert loop.model is not None
    version = loop.model.manifest.version
    values = {"temperature": 27.0, "humidity": 60.0, "sound_volume": -40.0}
    before = loop.model.predict(values)
    with pytest.raises(FieldhubError):
        await loop.activate(version + 41, by="alice")  # no such version
    assert loop.model.manifest.version == version
    assert loop.model.predict(values) == before


async def test_inputs_that_are_stale_fall_back_and_are_counted(room: Room) -> None:
    loop = await room.loop("act")
    node = device()
    await loop.configure(
        node, LoopConfig(guards=OPEN.model_copy(update={"stale_after_s": 5, "fallback": 30}))
    )
    await room.history(node)  # its newest reading is 10 s old when the trigger runs: stale
    [decision] = await decisions(room, node)
    assert decision.outcome == "fallback"
    assert decision.target_position == 30
    assert "stale" in next(v for v in decision.verdicts if v["guard"] == "inputs")["detail"]
    counted = room.metrics.get_sample_value(
        "fieldhub_ml_refused_inputs_total", {"reason": "stale:temperature"}
    )
    assert counted == 1


async def test_a_device_that_never_sent_all_three_features_costs_no_check(room: Room) -> None:
    """Most devices send no sound level: their readings must not each run a window query."""
    await room.loop("act")
    node = device()
    start = room.clock.now_us() - 50 * S
    for k in range(50):
        ts = start + k * S
        await room.commit(node, [("temperature", ts, 22.0), ("humidity", ts, 50.0)])
    assert room.metrics.get_sample_value("fieldhub_ml_trigger_checks_total") == 0
    assert await decisions(room, node) == []
    # Its first sound level completes the set: the trigger runs, and decides.
    await room.commit(node, [("sound_volume", room.clock.now_us(), -45.0)])
    assert room.metrics.get_sample_value("fieldhub_ml_trigger_checks_total") == 1
    [first] = await decisions(room, node)
    assert first.reason == "first_inference"


async def test_a_flood_of_requests_is_bounded_and_counted(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More requests under way than MAX_PENDING: the rest are dropped and counted, not queued."""
    import fieldhub.ml.loop as loop_module

    monkeypatch.setattr(loop_module, "MAX_PENDING", 3)
    loop = await room.loop("shadow")
    node = device()
    request = InferenceRequest(
        device_id=node,
        profile="sensor",
        received_us=room.clock.now_us(),
        at_us=room.clock.now_us(),
        features={"temperature": 27.0, "humidity": 60.0, "sound_volume": -40.0},
        raw={"device_id": node},
    )
    loop.on_requests([request] * 10, room.clock.now_us())
    dropped = room.metrics.get_sample_value("fieldhub_ml_dropped_total", {"what": "request"})
    assert dropped == 7
    rows = await decisions(room, node)
    assert len(rows) == 3  # one decided, two refused (one at a time), none of the dropped
    assert sorted(r.outcome for r in rows).count("refused") == 2
