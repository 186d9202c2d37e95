"""The rule engine against real parts: a real SQLite store, the real event bus, the real
notification dispatcher and (for commands) a real command service on a real Mosquitto.

Readings are committed as ingest commits them: `store.write_batch` then the bus's commit
listener, so the engine sees exactly what it sees live. Time is a ManualClock; the engine's
timer is set far out and the tests call `engine.tick()` after moving the clock, so every tick
happens at a time the test chose.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from fieldhub.clock import US_PER_S, ManualClock
from fieldhub.events.bus import AlarmChanged, EventBus, Subscription
from fieldhub.notify.message import Kind
from fieldhub.notify.queue import Dispatcher
from fieldhub.notify.retry import Sender
from fieldhub.notify.webhook import WebhookSender
from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.rules.engine import RuleEngine
from fieldhub.rules.model import Rule
from fieldhub.store import Store, open_store
from fieldhub.store.types import AlarmRow, WriteBatch

T0 = 1_700_000_000 * US_PER_S
S = US_PER_S
MIN = 60 * S
FRIDGE = "3C:E9:0E:72:12:01"
COLD_FRIDGE = "3C:E9:0E:72:12:4C"

COLD_ROOM: dict[str, object] = {
    "id": "cold-room-high",
    "name": "Cold room above 8 °C for 10 minutes",
    "scope": {"profile": "readings"},
    "condition": {
        "threshold": {"metric": "temperature", "above": 8.0, "clear_below": 6.0, "for_s": 600}
    },
    "severity": "major",
    "actions": [{"alarm": {}}],
}


def cold_room(**changes: object) -> Rule:
    return Rule.model_validate({**COLD_ROOM, **changes})


class Rig:
    """The parts one test's engines share (the store, the bus, the clock), and engines over
    them: a second engine over the same store is a restart."""

    def __init__(self, store: Store, clock: ManualClock, senders: dict[Kind, Sender]) -> None:
        self.store = store
        self.clock = clock
        self.registry = CollectorRegistry()
        self.bus = EventBus(self.registry)
        self.senders = senders
        self.watch: Subscription = self.bus.subscribe("test", maxlen=100_000)
        self.engines: list[RuleEngine] = []
        self.dispatchers: list[Dispatcher] = []

    async def engine(self, **kwargs: object) -> RuleEngine:
        registry = CollectorRegistry()  # each engine (process) has its own metrics
        holder: list[RuleEngine] = []
        dispatcher = Dispatcher(
            self.senders,
            registry=registry,
            clock=self.clock,
            on_delivery=lambda delivery: holder[0].record_delivery(delivery),
        )
        engine = RuleEngine(
            self.store,
            self.bus,
            kwargs.pop("commands", None),  # type: ignore[arg-type]
            dispatcher,
            registry=registry,
            clock=self.clock,
            tick_s=3600.0,
            **kwargs,  # type: ignore[arg-type]
        )
        holder.append(engine)
        await engine.start()
        self.engines.append(engine)
        self.dispatchers.append(dispatcher)
        return engine

    async def stop(self, engine: RuleEngine) -> None:
        await engine.stop()
        self.engines.remove(engine)

    async def commit(
        self,
        device_id: str,
        readings: Sequence[tuple[str, int, float]],
        *,
        profile: str = "readings",
    ) -> None:
        """Store one message's readings (metric, ts_us, value) and publish the commit."""
        received = max((ts for _, ts, _ in readings), default=self.clock.now_us())
        batch = WriteBatch(
            decoded=[
                Decoded(
                    device_id=device_id,
                    profile=profile,
                    channel="telemetry",
                    received_us=received,
                    readings=[Reading(m, ts, v) for m, ts, v in readings],
                    device_time=True,
                )
            ]
        )
        result = await self.store.write_batch(batch)
        self.bus.on_commit(batch, result, self.clock.now_us())
        for engine in self.engines:
            await engine.wait_idle()

    def alarm_events(self) -> list[AlarmRow]:
        events = []
        while (event := self.watch.get_nowait()) is not None:
            if isinstance(event, AlarmChanged):
                events.append(event.alarm)
        return events

    async def close(self) -> None:
        for engine in list(self.engines):
            await engine.stop()
        for dispatcher in self.dispatchers:
            await dispatcher.close()


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/fieldhub.db", stale_after_s={"readings": 90})
    await opened.open()
    yield opened
    await opened.close()


@pytest_asyncio.fixture(loop_scope="function")
async def rig(store: Store) -> AsyncIterator[Rig]:
    sender = WebhookSender()
    made = Rig(store, ManualClock(T0), {"webhook": sender})
    yield made
    await made.close()
    await sender.aclose()


async def minutes_of(rig: Rig, device_id: str, values: Sequence[float], start_us: int) -> int:
    """One temperature reading a minute from `start_us`, each committed (and a tick) at its
    time; returns the time of the last."""
    ts = start_us
    for n, value in enumerate(values):
        ts = start_us + n * MIN
        if ts > rig.clock.now_us():
            rig.clock.advance((ts - rig.clock.now_us()) / S)
        await rig.commit(device_id, [("temperature", ts, value)])
        for engine in rig.engines:
            await engine.tick()
    return ts


# -- the core: firing, clearing, state ----------------------------------------------------------


async def test_cold_room_fires_once_after_ten_minutes_of_reading_time_and_clears_below_six(
    rig: Rig,
) -> None:
    engine = await rig.engine()
    await engine.apply(cold_room(), author="alice")

    # 8.5 °C for 15 minutes: the alarm is raised once, at the 10th minute of reading time.
    await minutes_of(rig, FRIDGE, [8.5] * 16, T0)
    [raised] = rig.alarm_events()
    assert raised.state == "active"
    assert raised.raised_us == T0 + 10 * MIN
    assert raised.severity == "major"

    # 7 °C is inside the hysteresis band: still active; 5.5 °C clears, at that reading's time.
    await minutes_of(rig, FRIDGE, [7.0, 7.5, 8.2, 7.0], T0 + 16 * MIN)
    assert rig.alarm_events() == []
    end = await minutes_of(rig, FRIDGE, [5.5], T0 + 20 * MIN)
    [cleared] = rig.alarm_events()
    assert cleared.alarm_id == raised.alarm_id
    assert cleared.state == "cleared"
    assert cleared.cleared_us == end
    assert cleared.cleared_by == "rule:cold-room-high"

    stored = await rig.store.list_alarms(rule_id="cold-room-high", limit=10)
    assert [(a.state, a.raised_us) for a in stored] == [("cleared", T0 + 10 * MIN)]


async def test_an_override_gives_one_fridge_its_own_levels(rig: Rig) -> None:
    engine = await rig.engine()
    await engine.apply(
        cold_room(overrides={COLD_FRIDGE: {"above": 6.0, "clear_below": 4.0}}), author="alice"
    )
    await minutes_of(rig, FRIDGE, [7.0] * 12, T0)
    await minutes_of(rig, COLD_FRIDGE, [7.0] * 12, T0)
    [raised] = rig.alarm_events()
    assert raised.device_id == COLD_FRIDGE


async def test_a_device_outside_the_scope_is_not_evaluated(rig: Rig) -> None:
    engine = await rig.engine()
    await engine.apply(cold_room(), author="alice")
    await minutes_of(rig, FRIDGE, [20.0] * 12, T0)
    await rig.commit("node-1", [("temperature", T0 + 11 * MIN, 20.0)], profile="native")
    assert [a.device_id for a in rig.alarm_events()] == [FRIDGE]
    assert engine.state_of("cold-room-high", "node-1") is None


async def test_no_data_fires_with_no_traffic_at_all(rig: Rig) -> None:
    await rig.commit(FRIDGE, [("temperature", T0 - 5 * MIN, 4.0)])  # known before the rule
    engine = await rig.engine()
    rule = Rule.model_validate(
        {
            "id": "gateway-silent",
            "name": "No data for 5 minutes",
            "scope": {"all": True},
            "condition": {"no_data": {"for_s": 300}},
            "severity": "critical",
            "actions": [{"alarm": {}}],
        }
    )
    await engine.apply(rule, author="alice")
    watching_from = rig.clock.now_us()
    rig.clock.advance(299)
    await engine.tick()
    assert rig.alarm_events() == []
    rig.clock.advance(2)
    await engine.tick()
    [raised] = rig.alarm_events()
    assert (raised.device_id, raised.state) == (FRIDGE, "active")
    assert raised.raised_us == watching_from + 300 * S
    # Ticks on: the same silence raises nothing more.
    rig.clock.advance(600)
    await engine.tick()
    assert rig.alarm_events() == []
    # The next reading clears it, at its own time.
    await rig.commit(FRIDGE, [("temperature", rig.clock.now_us(), 4.0)])
    [cleared] = rig.alarm_events()
    assert cleared.state == "cleared"
    assert cleared.cleared_us == rig.clock.now_us()


async def test_a_restart_in_the_middle_of_a_for_window_fires_on_time_once(rig: Rig) -> None:
    first = await rig.engine()
    await first.apply(cold_room(), author="alice")
    await minutes_of(rig, FRIDGE, [9.0] * 6, T0)  # 5 minutes beyond 8 °C
    await rig.stop(first)
    assert rig.alarm_events() == []

    second = await rig.engine()
    assert second.loaded_rules() == ["cold-room-high"]
    state = second.state_of("cold-room-high", FRIDGE)
    assert state is not None
    assert state.pending_us == T0
    await minutes_of(rig, FRIDGE, [9.0] * 6, T0 + 6 * MIN)  # minutes 6..11
    [raised] = rig.alarm_events()
    assert raised.raised_us == T0 + 10 * MIN

    # Another restart while the alarm is active: no second alarm, no second notification.
    await rig.stop(second)
    third = await rig.engine()
    await minutes_of(rig, FRIDGE, [9.0] * 3, T0 + 12 * MIN)
    assert rig.alarm_events() == []
    assert len(await rig.store.list_alarms(limit=10)) == 1
    await minutes_of(rig, FRIDGE, [5.0], T0 + 15 * MIN)
    [cleared] = rig.alarm_events()
    assert cleared.state == "cleared"
    assert third.state_of("cold-room-high", FRIDGE) is not None


async def test_operators_acknowledge_and_clear_and_bad_moves_are_refused(rig: Rig) -> None:
    from fieldhub.errors import Conflict, NotFound

    engine = await rig.engine()
    await engine.apply(cold_room(), author="alice")
    await minutes_of(rig, FRIDGE, [9.0] * 11, T0)
    [raised] = rig.alarm_events()
    acked = await engine.acknowledge(raised.alarm_id, actor="bob", comment="on it")
    assert (acked.state, acked.acked_by, acked.ack_comment) == ("acknowledged", "bob", "on it")
    with pytest.raises(Conflict):
        await engine.acknowledge(raised.alarm_id, actor="bob", comment=None)
    with pytest.raises(NotFound):
        await engine.clear("no-such-alarm", actor="bob", comment=None)
    cleared = await engine.clear(raised.alarm_id, actor="carol", comment="door fixed")
    assert cleared.state == "cleared"
    assert [a.state for a in rig.alarm_events()] == ["acknowledged", "cleared"]
    assert [a.state for a in await engine.alarms(state="cleared")] == ["cleared"]


async def test_rule_versions_enable_disable_and_delete(rig: Rig) -> None:
    from fieldhub.errors import NotFound

    engine = await rig.engine()
    first = await engine.apply(cold_room(), author="alice")
    assert first.version == 1
    assert first.author == "alice"
    second = await engine.set_enabled("cold-room-high", False, author="bob")
    assert (second.version, second.enabled) == (2, False)
    assert engine.loaded_rules() == []
    await minutes_of(rig, FRIDGE, [20.0] * 12, T0)
    assert rig.alarm_events() == []
    third = await engine.set_enabled("cold-room-high", True, author="bob")
    assert third.enabled
    assert engine.loaded_rules() == ["cold-room-high"]
    assert [r.version for r in await engine.history("cold-room-high")] == [1, 2, 3]
    assert (await engine.get_rule("cold-room-high", 1)).author == "alice"
    await engine.delete("cold-room-high", actor="bob")
    assert engine.loaded_rules() == []
    with pytest.raises(NotFound):
        await engine.get_rule("cold-room-high")
    with pytest.raises(NotFound):
        await engine.delete("cold-room-high", actor="bob")
