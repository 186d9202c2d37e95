"""The rule engine against real parts: a real SQLite store, the real event bus, the real
notification dispatcher and (for commands) a real command service on a real Mosquitto.

Readings are committed as ingest commits them: `store.write_batch` then the bus's commit
listener, so the engine sees exactly what it sees live. Time is a ManualClock; the engine's
timer is set far out and the tests call `engine.tick()` after moving the clock, so every tick
happens at a time the test chose.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from fieldhub.broker import MosquittoProcess
from fieldhub.clock import US_PER_S, ManualClock
from fieldhub.commands.service import CommandService
from fieldhub.config import Settings
from fieldhub.events.bus import AlarmChanged, EventBus, Subscription
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.net import free_port
from fieldhub.notify.email import EmailSender, SmtpSettings
from fieldhub.notify.message import Kind
from fieldhub.notify.queue import Dispatcher
from fieldhub.notify.retry import Sender
from fieldhub.notify.webhook import WebhookSender, verify_signature
from fieldhub.platform import Platform
from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.ids import canonical_device_id
from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.rules.engine import RuleEngine
from fieldhub.rules.model import Rule, load_rule, rule_data
from fieldhub.sim import mac_for_index
from fieldhub.sim.fastapi_node import FastApiNode
from fieldhub.store import Store, open_store
from fieldhub.store.types import AlarmRow, CommandRow, WriteBatch
from notify.conftest import HookServer, Mailbox
from support.secrets import remember

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

    def __init__(
        self,
        store: Store,
        clock: ManualClock,
        senders: dict[Kind, Sender],
        *,
        digest_window_s: float = 0.01,
    ) -> None:
        self.store = store
        self.digest_window_s = digest_window_s
        self.clock = clock
        self.registry = CollectorRegistry()
        self.bus = EventBus(self.registry)
        self.senders = senders
        self.watch: Subscription = self.bus.subscribe("test", maxlen=100_000)
        self.engines: list[RuleEngine] = []
        self.metrics = CollectorRegistry()  # the latest engine's
        self.dispatchers: list[Dispatcher] = []

    async def engine(self, **kwargs: object) -> RuleEngine:
        registry = CollectorRegistry()  # each engine (process) has its own metrics
        self.metrics = registry
        holder: list[RuleEngine] = []
        dispatcher = Dispatcher(
            self.senders,
            registry=registry,
            clock=self.clock,
            on_delivery=lambda delivery: holder[0].record_delivery(delivery),
            digest_window_s=self.digest_window_s,
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

    async def settle(self) -> None:
        """Wait until every notification is delivered and logged."""
        for dispatcher in self.dispatchers:
            await dispatcher.wait_idle()
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


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    server = HookServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hook_secret() -> str:
    secret = "whsec-" + secrets.token_hex(16)
    remember(secret)
    return secret


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


async def test_a_decisive_change_is_stored_at_once_and_progress_within_the_flush_interval(
    rig: Rig,
) -> None:
    """A pending `for`'s start is stored with its batch (a crash cannot lose it); a reading that
    only moves the state's newest time is stored by the timer within STATE_FLUSH_S."""
    from fieldhub.rules.engine import STATE_FLUSH_S

    engine = await rig.engine()
    await engine.apply(cold_room(), author="alice")

    async def stored() -> dict[str, object]:
        [row] = await rig.store.load_rule_states("cold-room-high")
        assert isinstance(row.state, dict)
        return row.state

    await rig.commit(FRIDGE, [("temperature", T0, 5.0)])
    await rig.commit(FRIDGE, [("temperature", T0 + S, 5.5)])
    await engine.tick()
    # Below the threshold nothing decisive happened: progress only, not stored yet.
    assert await rig.store.load_rule_states("cold-room-high") == []
    await rig.commit(FRIDGE, [("temperature", T0 + 2 * S, 9.0)])
    now = await stored()
    assert (now["pending_us"], now["last_us"]) == (T0 + 2 * S, T0 + 2 * S)  # decisive: at once
    await rig.commit(FRIDGE, [("temperature", T0 + 3 * S, 9.5)])
    await engine.tick()
    assert (await stored())["last_us"] == T0 + 2 * S
    rig.clock.advance(STATE_FLUSH_S)
    await engine.tick()
    assert (await stored())["last_us"] == T0 + 3 * S  # the timer stored the progress
    assert (await stored())["pending_us"] == T0 + 2 * S


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


# -- actions: webhooks, e-mail, repeats, escalation, the notification log -----------------------

SECRET_ENV = "FIELDHUB_TEST_RULE_HOOK_SECRET"


async def hook_rig(store: Store, secret: str) -> Rig:
    sender = WebhookSender(secrets={SECRET_ENV: secret}.get)
    return Rig(store, ManualClock(T0), {"webhook": sender}, digest_window_s=0.01)


async def test_a_fired_alarm_posts_a_signed_webhook_repeats_hourly_and_escalates(
    store: Store, hook_server: HookServer, hook_secret: str
) -> None:
    rig = await hook_rig(store, hook_secret)
    try:
        engine = await rig.engine()
        rule = cold_room(
            actions=[
                {"alarm": {}},
                {"webhook": {"url": hook_server.url("/ops"), "secret_env": SECRET_ENV}},
            ],
            repeat_every_s=3600,
            escalate={
                "after_s": 7200,
                "to": {"webhook": {"url": hook_server.url("/boss"), "secret_env": SECRET_ENV}},
            },
        )
        await engine.apply(rule, author="alice")
        await minutes_of(rig, FRIDGE, [9.0] * 11, T0)
        [raised] = rig.alarm_events()
        await hook_server.wait_requests(1)
        first = hook_server.requests[0]
        assert first.path == "/ops"
        assert verify_signature(
            hook_secret,
            first.headers["x-fieldhub-timestamp"],
            first.body,
            first.headers["x-fieldhub-signature"],
            tolerance_s=None,
        )
        body = json.loads(first.body)
        assert body["key"] == f"{raised.alarm_id}:fire"
        assert body["payload"]["alarm_id"] == raised.alarm_id
        assert body["payload"]["device_id"] == FRIDGE
        assert body["payload"]["event"] == "fire"
        assert body["payload"]["value"] == 9.0
        # A reading's edge says when fieldhub stored that reading; a timer's says nothing.
        assert isinstance(body["payload"]["stored_us"], int)

        # An hour after it was raised: a repeat; two hours: the second repeat and the escalation.
        await asyncio.sleep(0.05)  # the digest window of the first closes: each goes alone
        rig.clock.advance(3600)
        await engine.tick()
        await hook_server.wait_requests(2)
        await asyncio.sleep(0.05)
        rig.clock.advance(3600)
        await engine.tick()
        await hook_server.wait_requests(4)
        paths = sorted(request.path for request in hook_server.requests)
        assert paths == ["/boss", "/ops", "/ops", "/ops"]
        escalation = next(r for r in hook_server.requests if r.path == "/boss")
        assert json.loads(escalation.body)["payload"]["event"] == "escalate"
        assert json.loads(escalation.body)["payload"]["stored_us"] is None
        row = await store.get_alarm(raised.alarm_id)
        assert row is not None
        assert row.notifications == 4
        assert row.escalated_us == rig.clock.now_us()

        # Acknowledged: no more repeats.
        await engine.acknowledge(raised.alarm_id, actor="bob", comment=None)
        rig.clock.advance(3600)
        await engine.tick()
        await asyncio.sleep(0.1)
        assert len(hook_server.requests) == 4

        # Every delivery is in the notification log, with its rule and alarm.
        await rig.settle()
        logged = await store.list_notification_log(limit=20, rule_id=rule.id)
        delivered = [e for e in logged if e.outcome == "delivered"]
        assert len(delivered) == 4
        assert {e.alarm_id for e in delivered} == {raised.alarm_id}
        assert {e.kind for e in delivered} == {"webhook"}
    finally:
        await rig.close()


async def test_a_clear_posts_the_webhook_again_and_mqtt_actions_publish(
    store: Store, hook_server: HookServer, hook_secret: str
) -> None:
    rig = await hook_rig(store, hook_secret)
    published: list[tuple[str, bytes, int, bool]] = []
    try:
        engine = await rig.engine(
            publish=lambda topic, payload, qos, retain: published.append(
                (topic, payload, qos, retain)
            )
        )
        rule = cold_room(
            condition={"threshold": {"metric": "temperature", "above": 8.0, "clear_below": 6.0}},
            actions=[
                {"alarm": {}},
                {"webhook": {"url": hook_server.url(), "secret_env": SECRET_ENV}},
                {
                    "mqtt": {
                        "topic": "alerts/$device_id/$rule_id",
                        "payload": '{"edge": "$edge", "value": $value}',
                        "when": "both",
                    }
                },
            ],
        )
        await engine.apply(rule, author="alice")
        await minutes_of(rig, FRIDGE, [9.5], T0)
        await asyncio.sleep(0.05)  # the digest window closes: the clear goes alone
        await minutes_of(rig, FRIDGE, [5.0], T0 + MIN)
        await hook_server.wait_requests(2)
        events = [json.loads(r.body)["payload"]["event"] for r in hook_server.requests]
        assert events == ["fire", "clear"]
        assert published == [
            (f"alerts/{FRIDGE}/cold-room-high", b'{"edge": "fire", "value": 9.5}', 1, False),
            (f"alerts/{FRIDGE}/cold-room-high", b'{"edge": "clear", "value": 5}', 1, False),
        ]
        await rig.settle()
        logged = await store.list_notification_log(limit=20)
        assert sorted(e.kind for e in logged if e.outcome in ("sent", "delivered")) == [
            "mqtt",
            "mqtt",
            "webhook",
            "webhook",
        ]
    finally:
        await rig.close()


async def test_an_alarm_e_mail_reaches_a_real_smtp_server(store: Store) -> None:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    sender = EmailSender(SmtpSettings(host="127.0.0.1", port=port, from_addr="fh@example.com"))
    rig = Rig(store, ManualClock(T0), {"email": sender}, digest_window_s=0.01)
    try:
        engine = await rig.engine()
        await engine.apply(
            cold_room(actions=[{"alarm": {}}, {"email": {"to": ["ops@example.com"]}}]),
            author="alice",
        )
        await minutes_of(rig, FRIDGE, [9.0] * 11, T0)
        [raised] = rig.alarm_events()
        assert await asyncio.to_thread(mailbox.received.wait, 10.0)
        [envelope] = mailbox.envelopes
        assert envelope.rcpt_tos == ["ops@example.com"]
        text = bytes(envelope.original_content or b"").decode()
        assert "Cold room above 8" in text
        assert FRIDGE in text
        assert raised.alarm_id in text
    finally:
        await rig.close()
        controller.stop()


# -- commands: the FastAPI stack's fan rule drives a simulated node ------------------------------

FAN_RULE = Path(__file__).parents[2] / "examples" / "rules" / "fastapi-fan-threshold.yaml"


async def wait_command(
    store: Store, node: FastApiNode, state: CommandState, timeout_s: float = 20.0
) -> CommandRow:
    """Wait for the node's command to reach `state`; the node reports (its data message) every
    0.2 s meanwhile, as its loop() does every second."""
    device_id = canonical_device_id(node.mac)
    async with asyncio.timeout(timeout_s):
        while True:
            rows = await store.list_commands(device_id, state=None, limit=10, before=None)
            for row in rows:
                if row.state is state:
                    return row
            await asyncio.to_thread(node.publish_data)
            await asyncio.sleep(0.2)


async def test_the_fan_rule_sends_fan_control_to_a_fastapi_node_and_it_succeeds(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    """The platform's own engine over real ingest (its subscriber, decoder and writer) and the
    real command service, a simulated FastAPI node on a real Mosquitto; the node's temperature
    is far below 30 °C, so its override fires the example rule at its first reading."""
    settings = Settings(
        data_dir=tmp_path / "fh",
        mqtt_url=mosquitto.url,
        auth=False,
        mqtt_client_id=f"fh-rules-{uuid.uuid4().hex[:8]}",
        rules_tick_s=0.5,
    )
    platform = Platform(settings)
    await platform.start()
    engine = platform.rules
    node = FastApiNode(
        endpoint=parse_mqtt_url(mosquitto.url),
        mac=mac_for_index(random.randrange(0x200000, 0xFFFFFF)),
        boot_s=0.5,
    )
    device_id = canonical_device_id(node.mac)
    try:
        rule = load_rule(FAN_RULE.read_text(), format="yaml")
        rule = Rule.model_validate(
            {
                **rule_data(rule),
                "scope": {"device": device_id},
                "overrides": {device_id: {"above": 0.0, "clear_below": -50.0, "for_s": 0}},
            }
        )
        await engine.apply(rule, author="alice")
        node.start()
        assert await asyncio.to_thread(node.wait_subscribed, 10.0)
        done = await wait_command(platform.store, node, CommandState.SUCCEEDED)
        assert (done.name, done.params) == ("FAN_CONTROL", {"state": True})
        assert node.actuators.fan_state is True
        await engine.wait_idle()
        logged = await platform.store.list_notification_log(limit=10, rule_id=rule.id)
        [sent] = [e for e in logged if e.kind == "command"]
        assert sent.outcome == "sent"
        assert sent.detail["command_id"] == done.command_id
        audit = await platform.store.list_audit(limit=20)
        assert any(
            a.actor == f"rule:{rule.id}" and a.action == "command.send" and a.outcome == "ok"
            for a in audit
        )
    finally:
        await asyncio.to_thread(node.stop)
        await platform.stop()


# -- preview: the stored readings through the same code give the same spans -------------------


async def test_a_preview_over_the_stored_readings_equals_what_the_engine_did(rig: Rig) -> None:
    engine = await rig.engine()
    rule = cold_room()
    await engine.apply(rule, author="alice")
    # Two alarms, a run too short to fire between them, and a noisy band that does not chatter.
    values = [9.0] * 12 + [7.0, 8.5, 7.9, 8.1, 7.0] + [5.0] + [9.0] * 5 + [7.0] + [9.0] * 12 + [5.5]
    end = await minutes_of(rig, FRIDGE, values, T0)
    await minutes_of(rig, COLD_FRIDGE, [4.0] * 5, T0)  # in scope, never beyond
    live = sorted(
        (a.raised_us, a.cleared_us) for a in await engine.alarms(device=FRIDGE, limit=100)
    )
    assert len(live) == 2

    previews = await engine.preview(rule, devices=None, start_us=T0, end_us=end, tick_s=60)
    assert sorted(previews) == sorted([FRIDGE, COLD_FRIDGE])
    assert [(s.fired_us, s.cleared_us) for s in previews[FRIDGE].spans] == live
    assert previews[COLD_FRIDGE].spans == ()
    planned = [(a.reason, a.kind) for a in previews[FRIDGE].actions]
    assert planned == [("fire", "alarm"), ("clear", "alarm")] * 2

    # One device asked for by id; a window ending mid-alarm leaves that span open.
    [only] = (
        await engine.preview(rule, devices=[FRIDGE], start_us=T0, end_us=T0 + 11 * MIN, tick_s=60)
    ).values()
    assert [(s.fired_us, s.cleared_us) for s in only.spans] == [(T0 + 10 * MIN, None)]


# -- wiring: settings and the platform ----------------------------------------------------------


def smtp_settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(
        data_dir=tmp_path,
        mqtt_port=free_port(),
        smtp_host="127.0.0.1",
        smtp_username="fieldhub",
        **changes,  # type: ignore[arg-type]
    )


def test_a_placeholder_smtp_password_is_refused_outside_demo_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="smtp_password is a well-known placeholder"):
        Platform(smtp_settings(tmp_path, smtp_password="changeme"))
    # Demo mode (loopback only, no credential anywhere) lets a local test server's do.
    demo = Platform(smtp_settings(tmp_path, smtp_password="changeme", auth=False))
    assert demo.settings.smtp_password is not None
    assert "changeme" not in repr(demo.settings)


def test_an_smtp_login_needs_both_halves(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="smtp_username and smtp_password together"):
        Settings(data_dir=tmp_path, smtp_host="127.0.0.1", smtp_username="fieldhub")


async def test_batches_the_bus_dropped_are_read_back_from_the_store(rig: Rig) -> None:
    engine = await rig.engine(bus_queue_events=2)
    await engine.apply(cold_room(), author="alice")
    await minutes_of(rig, FRIDGE, [9.0], T0)  # the engine holds a state for the fridge
    # Eleven more batches committed while the engine does not run: its queue keeps two.
    batches = []
    for minute in range(1, 12):
        ts = T0 + minute * MIN
        batch = WriteBatch(
            decoded=[
                Decoded(
                    device_id=FRIDGE,
                    profile="readings",
                    channel="telemetry",
                    received_us=ts,
                    readings=[Reading("temperature", ts, 9.0)],
                    device_time=True,
                )
            ]
        )
        batches.append((batch, await rig.store.write_batch(batch)))
    rig.clock.advance(11 * 60)
    for batch, result in batches:
        rig.bus.on_commit(batch, result, rig.clock.now_us())
    await engine.wait_idle()
    [raised] = rig.alarm_events()
    assert raised.raised_us == T0 + 10 * MIN
    assert rig.metrics.get_sample_value("fieldhub_rules_bus_dropped_total") == 9
    state = engine.state_of("cold-room-high", FRIDGE)
    assert state is not None
    assert state.last_us == T0 + 11 * MIN


async def test_hysteresis_sends_one_notification_for_a_noisy_sensor_around_the_level(
    store: Store, hook_server: HookServer, hook_secret: str
) -> None:
    rig = await hook_rig(store, hook_secret)
    try:
        engine = await rig.engine()
        rule = cold_room(
            condition={"threshold": {"metric": "temperature", "above": 8.0, "clear_below": 6.0}},
            actions=[
                {"alarm": {}},
                {"webhook": {"url": hook_server.url(), "secret_env": SECRET_ENV}},
            ],
        )
        await engine.apply(rule, author="alice")
        noise = random.Random(16)
        values = [8.0 + noise.uniform(-1.5, 1.5) for _ in range(120)]  # 6.5 .. 9.5 °C
        await minutes_of(rig, FRIDGE, values, T0)
        await rig.settle()
        await asyncio.sleep(0.05)
        assert [a.state for a in rig.alarm_events()] == ["active"]
        assert len(hook_server.requests) == 1
        assert rig.metrics.get_sample_value("fieldhub_rules_edges_total", {"edge": "fire"}) == 1
    finally:
        await rig.close()


async def test_a_changed_condition_starts_over_and_clears_the_open_alarm(rig: Rig) -> None:
    engine = await rig.engine()
    await engine.apply(cold_room(), author="alice")
    await minutes_of(rig, FRIDGE, [9.0] * 11, T0)
    [raised] = rig.alarm_events()
    # The name only: the alarm and the state stay.
    await engine.apply(cold_room(name="Cold room, renamed"), author="alice")
    assert rig.alarm_events() == []
    assert engine.state_of("cold-room-high", FRIDGE) is not None
    # Another level: a new state, and the open alarm is cleared by the editor.
    changed = cold_room(
        condition={"threshold": {"metric": "temperature", "above": 10.0, "for_s": 600}}
    )
    await engine.apply(changed, author="bob")
    [cleared] = rig.alarm_events()
    assert (cleared.alarm_id, cleared.state, cleared.cleared_by) == (
        raised.alarm_id,
        "cleared",
        "bob",
    )
    assert [e.comment for e in await rig.store.alarm_events(raised.alarm_id)][-1] == (
        "rule changed"
    )


async def test_a_command_the_device_cannot_take_is_logged_and_audited_as_failed(
    rig: Rig, mosquitto: MosquittoProcess
) -> None:
    commands = CommandService(
        store=rig.store,
        bus=rig.bus,
        endpoint=parse_mqtt_url(mosquitto.url),
        client_id=f"fh-rules-{uuid.uuid4().hex[:8]}",
        protocol=4,
        registry=CollectorRegistry(),
        clock=rig.clock,
    )  # never started: nothing is published
    engine = await rig.engine(commands=commands)
    rule = cold_room(
        condition={"threshold": {"metric": "temperature", "above": 8.0}},
        actions=[{"command": {"name": "FAN_CONTROL", "params": {"state": True}}}],
    )
    await engine.apply(rule, author="alice")
    await minutes_of(rig, FRIDGE, [9.0], T0)  # a Flask gateway's reading: it takes no commands
    await rig.settle()
    [entry] = await rig.store.list_notification_log(limit=10)
    assert (entry.kind, entry.outcome, entry.target) == ("command", "failed", f"device:{FRIDGE}")
    assert entry.detail["code"]
    [audited] = [a for a in await rig.store.list_audit(limit=10) if a.action == "command.send"]
    assert (audited.actor, audited.outcome) == ("rule:cold-room-high", "failed")
