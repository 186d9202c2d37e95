"""Pure tests of the FastAPI/RabbitMQ stack's node, against its firmware (`IoT_Platform_Node.ino`).

No broker: the dispatcher and smart mode are pure functions, and the node's publishes are
recorded by a subclass that stands in for the MQTT link.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace

import orjson
import pytest

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.sim import (
    Actuators,
    FastApiNode,
    FastApiState,
    PublishStatus,
    Readings,
    Restart,
    UpdateFirmware,
    apply_fastapi_command,
    fastapi_data_payload,
    fastapi_heartbeat_payload,
    fastapi_status_payload,
    handle_command,
    smart_automation,
)
from fieldhub.sim.fastapi_node import (
    Copied,
    after_update,
    arduinojson_document,
    as_bool,
    as_int,
    fastapi_ping_payload,
    light_should_be_on,
    signal_strength,
)

NOWHERE = MqttEndpoint(host="127.0.0.1", port=9)
MAC = "3C:E9:0E:10:00:01"
NODE_ID = "3CE90E100001"
COMMANDS = f"devices/{NODE_ID}/commands"
LAST = f"devices/{NODE_ID}/commands/last"
# 2025-12-05 05:31:20 UTC: 11:01:20 on the node's clock (UTC+5:30).
WALL_S = 1_764_912_680
WALL_LOCAL_DATE = "2025-12-05 11:01:20"
WALL_LOCAL_TIME = "11:01:20"
READINGS = Readings(temperature=24.3, humidity=51.0, gas_sensor=45, wifi_rssi=-61)
DATA_KEYS_V6 = [
    "timestamp",
    "temperature",
    "humidity",
    "humidity_mq",
    "humidity_mq_raw",
    "gas_sensor",
    "status",
    "node_id",
    "servo_angle",
    "light_state",
    "fan_state",
    "relay3_state",
    "relay4_state",
    "real_model_state",
]


def command(action: str, **fields: object) -> bytes:
    return orjson.dumps({"action": action, **fields})


def handle(state: FastApiState, payload: bytes, *, topic: str = COMMANDS, now_s: int = WALL_S):
    return handle_command(state, topic, payload, device_time_s=now_s)


# --- the messages, byte for byte ----------------------------------------------------------------


def test_data_message_is_the_sketchs_first_14_members_under_arduinojson_6() -> None:
    """readAndPublishSensors() sets 17 members in a StaticJsonDocument<250>: 14 fit."""
    payload = fastapi_data_payload(
        node_id=NODE_ID,
        clock=WALL_LOCAL_TIME,
        readings=READINGS,
        state=FastApiState(actuators=Actuators(servo_angle=120, light_state=True)),
        uptime_ms=61_234,
    )
    assert payload == (
        b'{"timestamp":"11:01:20","temperature":24.3,"humidity":51,"humidity_mq":0,'
        b'"humidity_mq_raw":0,"gas_sensor":45,"status":"online","node_id":"3CE90E100001",'
        b'"servo_angle":120,"light_state":true,"fan_state":false,"relay3_state":false,'
        b'"relay4_state":false,"real_model_state":false}'
    )
    assert list(orjson.loads(payload)) == DATA_KEYS_V6


def test_data_message_of_all_17_members_is_over_300_bytes_and_never_sent() -> None:
    """ArduinoJson 7 keeps every member; the sketch then refuses the payload (> 300 bytes)."""
    members_kept = arduinojson_document([("a", 1)] * 17, capacity=None)
    assert len(members_kept) == 17
    for clock in ("unknown", WALL_LOCAL_TIME):
        assert (
            fastapi_data_payload(
                node_id=NODE_ID,
                clock=clock,
                readings=Readings(temperature=15.0, humidity=30.0, gas_sensor=0, wifi_rssi=-1),
                state=FastApiState(),
                uptime_ms=0,
                arduinojson=7,
            )
            is None
        )


def test_arduinojson_6_pool_drops_members_that_find_no_slot() -> None:
    """16 bytes a member, copied strings + NUL from the other end, capacity rounded up to 4."""
    members = [(f"k{n}", n) for n in range(20)]
    assert len(arduinojson_document(members, capacity=250)) == 15  # 252 // 16
    with_copy = [("s", Copied("x" * 12)), *members]
    assert len(arduinojson_document(with_copy, capacity=250)) == 14  # 13 bytes + 14 slots
    assert arduinojson_document([("s", Copied("x" * 40))], capacity=50) == [("s", None)]


def test_heartbeat_status_and_ping_bytes() -> None:
    assert fastapi_heartbeat_payload(node_id=NODE_ID, uptime_ms=4_294_967_296 + 5) == (
        b'{"type":"heartbeat","status":"online","node_id":"3CE90E100001","uptime":5}'
    )
    assert fastapi_status_payload(
        node_id=NODE_ID,
        status="servo_updated_wifi",
        clock=WALL_LOCAL_DATE,
        uptime_ms=6_004,
        free_heap=201_344,
        wifi_rssi=-61,
        servo_angle=120,
        gas_sensor=45,
    ) == (
        b'{"timestamp":"2025-12-05 11:01:20","status":"servo_updated_wifi","uptime":6004,'
        b'"free_heap":201344,"wifi_rssi":-61,"node_id":"3CE90E100001","servo_angle":120,'
        b'"gas_sensor":45,"signal_strength":55}'
    )
    unknown = fastapi_status_payload(
        node_id=NODE_ID,
        status="online",
        clock="unknown",
        uptime_ms=0,
        free_heap=1,
        wifi_rssi=-100,
        servo_angle=90,
        gas_sensor=0,
    )
    assert unknown.startswith(b'{"timestamp":"unknown","status":"online","uptime":0,')
    assert unknown.endswith(b'"signal_strength":0}')
    assert fastapi_ping_payload(NODE_ID) == b'{"test":"ping","node_id":"3CE90E100001"}'


@pytest.mark.parametrize(
    ("rssi", "strength"), [(-100, 0), (-30, 100), (-61, 55), (-65, 50), (-20, 114), (-110, -14)]
)
def test_signal_strength_is_arduino_map_truncated_and_unclamped(rssi: int, strength: int) -> None:
    assert signal_strength(rssi) == strength


# --- the dispatcher: each action ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected", "effects"),
    [
        (command("SERVO_ANGLE", angle=120), Actuators(servo_angle=120), ("servo_updated_wifi",)),
        (command("SERVO_CONTROL", angle=45), Actuators(servo_angle=45), ("servo_updated_wifi",)),
        (command("SERVO_ANGLE", angle=250), Actuators(servo_angle=180), ("servo_updated_wifi",)),
        (command("SERVO_ANGLE", angle=-5), Actuators(servo_angle=0), ("servo_updated_wifi",)),
        (command("SERVO_ANGLE", angle=30.9), Actuators(servo_angle=30), ("servo_updated_wifi",)),
        (command("SERVO_ANGLE", angle="75"), Actuators(servo_angle=75), ("servo_updated_wifi",)),
        (command("SERVO_ANGLE"), Actuators(servo_angle=0), ("servo_updated_wifi",)),
        (command("LIGHT_CONTROL", state=True), Actuators(light_state=True), ("light_on",)),
        (command("LIGHT_CONTROL", state=1), Actuators(light_state=True), ("light_on",)),
        (command("LIGHT_CONTROL", state="off"), Actuators(light_state=True), ("light_on",)),
        (command("LIGHT_CONTROL"), Actuators(), ("light_off",)),
        (command("FAN_CONTROL", state=True), Actuators(fan_state=True), ("fan_on",)),
        (command("FAN_CONTROL", state=False), Actuators(), ("fan_off",)),
        (
            command("RELAY_CONTROL", relay=1, state=True),
            Actuators(light_state=True),
            ("relay1_on",),
        ),
        (command("RELAY_CONTROL", relay=2, state=True), Actuators(fan_state=True), ("relay2_on",)),
        (
            command("RELAY_CONTROL", relay=3, state=True),
            Actuators(relay3_state=True),
            ("relay3_on",),
        ),
        (
            command("RELAY_CONTROL", relay=4, state=True),
            Actuators(relay4_state=True),
            ("relay4_on",),
        ),
        (
            command("RELAY_CONTROL", relay=5, state=True),
            Actuators(real_model_state=True),
            ("relay5_on",),
        ),
        (command("RELAY_CONTROL", relay=3, state=False), Actuators(), ("relay3_off",)),
        (
            command("REAL_MODEL_CONTROL", state=True),
            Actuators(real_model_state=True),
            ("real_model_on",),
        ),
        (command("REAL_MODEL_CONTROL", state=False), Actuators(), ("real_model_off",)),
        (command("STATUS_REQUEST"), Actuators(), ("online",)),
    ],
)
def test_each_actuator_action_changes_the_state_and_publishes_its_status(
    payload: bytes, expected: Actuators, effects: tuple[str, ...]
) -> None:
    handled = handle(FastApiState(), payload)
    assert handled.ignored is None
    assert handled.state == FastApiState(actuators=expected)
    assert handled.effects == tuple(PublishStatus(status) for status in effects)


def test_smart_mode_and_light_schedule_change_settings_without_a_message() -> None:
    off = handle(FastApiState(), command("SMART_MODE", enabled=False))
    assert (off.state.smart_mode, off.effects, off.ignored) == (False, (), None)
    on = handle(off.state, command("SMART_MODE", enabled=True))
    assert on.state.smart_mode is True
    assert handle(on.state, command("SMART_MODE")).state.smart_mode is False  # missing: false
    schedule = handle(FastApiState(), command("SET_LIGHT_SCHEDULE", on_hour=7, off_hour=22))
    assert (schedule.state.light_on_hour, schedule.state.light_off_hour) == (7, 22)
    assert schedule.effects == ()
    # No check: whatever arrives is stored (a missing hour is 0).
    odd = handle(FastApiState(), command("SET_LIGHT_SCHEDULE", on_hour=30))
    assert (odd.state.light_on_hour, odd.state.light_off_hour) == (30, 0)


def test_reboot_status_request_and_firmware_update() -> None:
    reboot = handle(FastApiState(), command("REBOOT", message_id="m1"))
    assert reboot.effects == (PublishStatus("rebooting"), Restart(delay_s=2.0))
    update = handle(FastApiState(), command("FIRMWARE_UPDATE", url="http://h/fw.bin"))
    assert update.effects == (PublishStatus("updating"), UpdateFirmware("http://h/fw.bin"))
    assert after_update("failed") == (PublishStatus("update_failed"),)
    assert after_update("no_updates") == (PublishStatus("no_update_needed"),)
    # HTTPUpdate restarts on success before `update_success` could be published.
    assert after_update("ok") == (Restart(delay_s=0.0),)


def test_invalid_relay_number_is_ignored() -> None:
    for relay in (0, 6, "x"):
        handled = handle(FastApiState(), command("RELAY_CONTROL", relay=relay, state=True))
        assert (handled.state, handled.effects) == (FastApiState(), ())
        assert handled.ignored is not None
        assert "Invalid relay number" in handled.ignored


@pytest.mark.parametrize(
    "payload",
    [
        b'{"action":"LIGHT_ON"}',
        b'{"action":"light_control","state":true}',
        b'{"action":42}',
        b'{"angle":90}',
        b"[1, 2]",
        b"not json",
        b"\xff",
        command("STATUS_REQUEST", message_id="x" * 300),  # over StaticJsonDocument<256>
    ],
)
def test_unknown_actions_and_unparsable_commands_are_ignored(payload: bytes) -> None:
    state = FastApiState(actuators=Actuators(servo_angle=10))
    handled = handle(state, payload)
    assert handled.ignored is not None
    assert (handled.state, handled.effects) == (state, ())
    assert apply_fastapi_command(state.actuators, payload) is None


def test_a_stale_last_command_is_ignored_after_five_minutes() -> None:
    light_on = command("LIGHT_CONTROL", state=True, cmd_timestamp=WALL_S - 301)
    assert handle(FastApiState(), light_on, topic=LAST).ignored == "stale retained command"
    # Exactly 300 s old is still processed (the sketch compares with `>`).
    fresh = command("LIGHT_CONTROL", state=True, cmd_timestamp=WALL_S - 300)
    assert handle(FastApiState(), fresh, topic=LAST).state.actuators.light_state is True
    # The same old command on /commands is processed: the rule is only the fallback's.
    assert handle(FastApiState(), light_on).state.actuators.light_state is True
    # Before NTP `time()` counts seconds since boot: the age cannot be told, it runs.
    assert handle(FastApiState(), light_on, topic=LAST, now_s=7).ignored is None
    # Without a timestamp (or a zero one) it runs too.
    for body in (command("LIGHT_CONTROL", state=True), command("FAN_CONTROL", cmd_timestamp=0)):
        assert handle(FastApiState(), body, topic=LAST).ignored is None


def test_arduinojson_conversions() -> None:
    assert [as_int(v) for v in (None, True, 7, 7.9, -7.9, "12", "x", [1], 2**40)] == [
        0,
        1,
        7,
        7,
        -7,
        12,
        0,
        0,
        0,
    ]
    assert [as_bool(v) for v in (None, False, 0, 0.0, 2, "false", "", {})] == [
        False,
        False,
        False,
        False,
        True,
        True,
        True,
        True,
    ]


# --- smart mode ---------------------------------------------------------------------------------


def test_light_schedule_as_the_sketch_writes_it() -> None:
    """The branches are swapped: on_hour > off_hour (the default 18, 6) takes the `&&` branch,
    never true, so the light is always off; on_hour <= off_hour takes the `||` branch, always
    true, so it is always on. No schedule makes it follow the clock."""
    for on_hour in range(24):
        for off_hour in range(24):
            hours = {light_should_be_on(hour, on_hour, off_hour) for hour in range(24)}
            assert hours == {on_hour <= off_hour}


def test_smart_mode_switches_light_and_fan() -> None:
    lit = FastApiState(actuators=Actuators(light_state=True))
    handled = smart_automation(lit, local_hour=20, temperature=25.0, gas_sensor=40)
    assert handled.state.actuators == Actuators()
    assert handled.effects == (PublishStatus("light_off"),)
    hot = smart_automation(FastApiState(), local_hour=3, temperature=28.01, gas_sensor=40)
    assert hot.state.actuators.fan_state is True
    assert hot.effects == (PublishStatus("fan_on"),)
    # 28.0 itself is not above the threshold.
    fan_on = FastApiState(actuators=Actuators(fan_state=True))
    cool = smart_automation(fan_on, local_hour=3, temperature=28.0, gas_sensor=40)
    assert (cool.state.actuators.fan_state, cool.effects) == (False, (PublishStatus("fan_off"),))


def test_gas_above_100_turns_the_fan_off_and_on_again_every_pass() -> None:
    fan_on = FastApiState(actuators=Actuators(fan_state=True))
    handled = smart_automation(fan_on, local_hour=3, temperature=22.0, gas_sensor=101)
    assert handled.state.actuators.fan_state is True
    assert handled.effects == (PublishStatus("fan_off"), PublishStatus("fan_on"))
    calm = smart_automation(fan_on, local_hour=3, temperature=22.0, gas_sensor=100)
    assert calm.effects == (PublishStatus("fan_off"),)


def test_smart_mode_does_nothing_when_off_or_without_a_clock() -> None:
    lit = FastApiState(actuators=Actuators(light_state=True))
    assert (
        smart_automation(
            replace(lit, smart_mode=False), local_hour=3, temperature=30.0, gas_sensor=500
        ).effects
        == ()
    )
    assert smart_automation(lit, local_hour=None, temperature=30.0, gas_sensor=500).effects == ()


# --- the node, with its link recorded -----------------------------------------------------------


class RecordedNode(FastApiNode):
    """A FastApiNode whose publishes and restarts are recorded instead of sent."""

    def __init__(self, **kwargs: object) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []
        self.restarts: list[float] = []
        super().__init__(endpoint=NOWHERE, mac=MAC, **kwargs)  # type: ignore[arg-type]

    @property
    def connected(self) -> bool:
        return True

    def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False
    ) -> Future[None] | None:
        self.sent.append((topic, payload, qos, retain))
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def _restart_later(self, delay_s: float) -> None:
        self.restarts.append(delay_s)

    def drop_link(self) -> bool:
        return True

    def relink(self) -> bool:
        return True

    def bodies(self) -> list[dict[str, object]]:
        return [orjson.loads(payload) for _, payload, _, _ in self.sent]


def clocked(**kwargs: object) -> tuple[RecordedNode, list[int]]:
    now_ms = [1_000_000]
    clock: Callable[[], int] = lambda: now_ms[0]  # noqa: E731
    node = RecordedNode(clock_ms=clock, wall_clock_s=lambda: float(WALL_S), boot_s=0.0, **kwargs)
    return node, now_ms


def test_node_identity_session_will_and_periods() -> None:
    node = RecordedNode()
    assert (node.device_id, node.client_id, node.clean_session) == (
        NODE_ID,
        f"ESP32-{NODE_ID}",
        False,
    )
    assert (node.data_topic, node.status_topic, node.commands_topic, node.last_topic) == (
        f"devices/{NODE_ID}/data",
        f"devices/{NODE_ID}/status",
        COMMANDS,
        LAST,
    )
    assert node.will is not None
    assert (node.will.topic, node.will.payload, node.will.qos, node.will.retain) == (
        node.status_topic,
        b"offline",
        1,
        True,
    )
    assert node._subscriptions == [(COMMANDS, 1), (LAST, 1)]
    assert [(job.name, job.period_s, job.on_connect_too) for job in node.periodic()] == [
        ("data", 1.0, False),
        ("heartbeat", 3.0, False),
    ]


def test_connect_sends_status_data_and_once_per_boot_the_ping() -> None:
    node, now_ms = clocked()
    now_ms[0] += 5_000
    node.on_connected()
    assert [topic for topic, *_ in node.sent] == [node.data_topic] * 3
    assert {(qos, retain) for _, _, qos, retain in node.sent} == {(0, False)}
    status, data, ping = node.bodies()
    assert (status["status"], status["timestamp"], status["uptime"]) == (
        "online",
        WALL_LOCAL_DATE,
        5_000,
    )
    assert list(data) == DATA_KEYS_V6
    assert data["timestamp"] == WALL_LOCAL_TIME
    assert ping == {"test": "ping", "node_id": NODE_ID}
    node.sent.clear()
    node.on_connected()  # a reconnect: no ping
    assert [body.get("status") for body in node.bodies()] == ["online", "online"]


def test_node_clock_is_unknown_until_ntp_and_uptime_is_millis() -> None:
    node, now_ms = clocked()
    now_ms[0] += 1_500
    assert node.publish_data() is not None
    assert node.publish_heartbeat() is not None
    data, heartbeat = node.bodies()
    assert data["timestamp"] == "unknown"
    assert heartbeat == {
        "type": "heartbeat",
        "status": "online",
        "node_id": NODE_ID,
        "uptime": 1500,
    }
    assert node.local_hour() is None
    now_ms[0] += 1_000
    assert node.local_hour() == 11
    assert node.clock() == WALL_LOCAL_TIME


def test_commands_drive_the_node_and_its_status_messages() -> None:
    node, now_ms = clocked()
    now_ms[0] += 10_000
    node.on_message(COMMANDS, command("SMART_MODE", enabled=False))
    node.on_message(COMMANDS, command("SERVO_ANGLE", angle=135))
    node.on_message(COMMANDS, command("LIGHT_CONTROL", state=True))
    node.on_message(LAST, command("FAN_CONTROL", state=True, cmd_timestamp=WALL_S - 3_600))
    node.on_message(COMMANDS, b'{"action":"LIGHT_ON"}')
    node.on_message(node.data_topic, command("FAN_CONTROL", state=True))  # not subscribed
    assert node.actuators == Actuators(servo_angle=135, light_state=True)
    assert (node.commands_applied, node.commands_ignored) == (3, 2)
    assert [(b["status"], b["servo_angle"]) for b in node.bodies()] == [
        ("servo_updated_wifi", 135),
        ("light_on", 135),
    ]
    node.sent.clear()
    node.publish_data()
    [data] = node.bodies()
    assert (data["servo_angle"], data["light_state"], data["fan_state"]) == (135, True, False)


def test_smart_mode_runs_after_each_data_message() -> None:
    """On by default: the light a command switched on goes off after the next data message,
    which still reports it on (the echo comes first)."""
    node, now_ms = clocked()
    now_ms[0] += 10_000
    node.on_message(COMMANDS, command("LIGHT_CONTROL", state=True))
    node.sent.clear()
    node.publish_data()
    data, status = node.bodies()
    assert (data["light_state"], status["status"]) == (True, "light_off")
    assert node.actuators.light_state is False


def test_reboot_restarts_the_node_with_its_defaults() -> None:
    node, now_ms = clocked()
    now_ms[0] += 60_000
    node.on_message(COMMANDS, command("SMART_MODE", enabled=False))
    node.on_message(COMMANDS, command("SERVO_ANGLE", angle=10))
    node.sent.clear()
    node.on_message(COMMANDS, command("REBOOT"))
    assert [b["status"] for b in node.bodies()] == ["rebooting"]
    assert node.restarts == [2.0]
    node.restart()
    assert node.state == FastApiState()
    assert node.uptime_ms() == 0
    assert node.boots == 2
    node.sent.clear()
    node.on_connected()
    assert node.bodies()[-1] == {"test": "ping", "node_id": NODE_ID}


def test_firmware_update_outcomes() -> None:
    for outcome, statuses, restarts in (
        ("failed", ["updating", "update_failed"], []),
        ("no_updates", ["updating", "no_update_needed"], []),
        ("ok", ["updating"], [0.0]),
    ):
        node, _ = clocked(ota=lambda url, outcome=outcome: outcome)
        node.on_message(COMMANDS, command("FIRMWARE_UPDATE", url="http://h/fw.bin"))
        assert [b["status"] for b in node.bodies()] == statuses
        assert node.restarts == restarts


def test_arduinojson_7_node_sends_no_data_message() -> None:
    node, _ = clocked(arduinojson=7)
    assert node.publish_data() is None
    assert (node.sent, node.oversize_data) == ([], 1)


def test_the_sketchs_own_temperature_and_humidity_walks() -> None:
    """From 20.0 C / 50.0 %, +-0.25 C and +-1 % a message, within 15-35 C and 30-80 %."""
    node, _ = clocked(seed=5)
    temperatures, humidities = [], []
    for _ in range(2_000):
        data = orjson.loads(node.publish_data(automation=False) and node.sent[-1][1])
        temperatures.append(data["temperature"])
        humidities.append(data["humidity"])
        assert (data["humidity_mq"], data["humidity_mq_raw"]) == (0, 0)
    assert abs(temperatures[0] - 20.0) <= 0.25
    assert all(15.0 <= t <= 35.0 for t in temperatures)
    assert all(30.0 <= h <= 80.0 for h in humidities)
    steps = [abs(b - a) for a, b in itertools.pairwise(temperatures)]
    assert max(steps) <= 0.35  # 0.25 plus rounding to one decimal
    assert all(round(t, 1) == t for t in temperatures)
