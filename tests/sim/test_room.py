"""The simulated room (`fieldhub sim --profile room`): its physics on simulated time, and its
node obeying the window-control stack's control message over a real Mosquitto."""

from __future__ import annotations

import base64
import threading
import uuid
from contextlib import ExitStack

import orjson
import pytest
from typer.testing import CliRunner

from fieldhub.broker import MosquittoProcess
from fieldhub.cli import app
from fieldhub.ml import policy
from fieldhub.mqtt.endpoint import MqttEndpoint, parse_mqtt_url
from fieldhub.protocol.audio import measure_wav
from fieldhub.sim import room as room_module
from fieldhub.sim.room import (
    HOUR_S,
    Person,
    PersonParams,
    Room,
    RoomNode,
    RoomState,
    band_excess,
    in_band_fraction,
    run_rooms,
)
from support.mqtt import connected_publisher, publish_all
from support.waiting import wait_until

NOWHERE = MqttEndpoint(host="127.0.0.1", port=1)
MINUTE_S = 60.0


def run(room: Room, hours: float, window_pct: float) -> list[RoomState]:
    """A room's states minute by minute with the window held at `window_pct`."""
    return [room.step(MINUTE_S, window_pct) for _ in range(round(hours * 60))]


def test_on_a_mild_afternoon_a_closed_room_overheats_and_an_open_one_cools() -> None:
    """Outside near 21 °C: closed, people and sun push the room above the band; open, it
    follows the air down into it."""
    closed = Room(seed=1, start_s=13 * HOUR_S, temperature=24.0)
    opened = Room(seed=1, start_s=13 * HOUR_S, temperature=24.0)
    closed_after = run(closed, 1, 0.0)[-1]
    open_after = run(opened, 1, 100.0)[-1]
    assert 20.0 < open_after.outside.temperature < 22.0
    assert closed_after.temperature > 25.0
    assert open_after.temperature < 22.5


def test_the_policy_keeps_a_whole_day_inside_the_band_where_a_closed_window_does_not() -> None:
    """The claim the loop's integration test rests on, on the physics alone: a window set by the
    policy every 10 minutes (the firmware's 10 s cycles, the loop's least time between a
    device's decisions) keeps the room in the comfort band around the clock; its closed twin
    spends the afternoon well above it."""
    held = Room(seed=6, start_s=0.0)
    closed = Room(seed=6, start_s=0.0)
    window = 0.0
    held_temps: list[float] = []
    closed_temps: list[float] = []
    for minute in range(24 * 60):
        state = held.step(MINUTE_S, window)
        held_temps.append(state.temperature)
        closed_temps.append(closed.step(MINUTE_S, 0.0).temperature)
        if minute % 10 == 0:
            window = policy.comfort_position(
                round(state.temperature, 1), state.humidity, state.sound_dbfs
            )
    assert in_band_fraction(held_temps) == 1.0, (min(held_temps), max(held_temps))
    assert max(held_temps) < policy.COMFORT_HIGH_C - 0.3
    assert in_band_fraction(closed_temps) < 0.7
    assert max(closed_temps) > 27.0


def test_in_a_cool_evening_an_open_window_cools_an_overheated_room() -> None:
    closed = Room(seed=2, start_s=19 * HOUR_S, temperature=28.0)
    opened = Room(seed=2, start_s=19 * HOUR_S, temperature=28.0)
    closed_temps = [s.temperature for s in run(closed, 3, 0.0)]
    open_temps = [s.temperature for s in run(opened, 3, 100.0)]
    assert open_temps[-1] < closed_temps[-1] - 3
    assert band_excess(open_temps) < band_excess(closed_temps)


def test_a_closed_room_drifts_to_its_heated_level_and_humidity_follows_the_opening() -> None:
    """From 02:00 to 05:00 outside is 12-13 °C and damp: closed, the heating holds the room
    near 20 °C and people keep it at ~55 %; open, it takes the outside's cold, damp air."""
    closed = run(Room(seed=3, start_s=2 * HOUR_S, temperature=23.0, humidity=50.0), 3, 0.0)
    opened = run(Room(seed=3, start_s=2 * HOUR_S, temperature=23.0, humidity=50.0), 3, 100.0)
    assert 19.5 <= closed[-1].temperature <= 22.5
    assert 53 <= closed[-1].humidity <= 57
    assert opened[-1].temperature < closed[-1].temperature - 3
    assert opened[-1].humidity > closed[-1].humidity + 15
    assert abs(opened[-1].humidity - opened[-1].outside.humidity) < 5


def test_outside_follows_the_daily_cycle() -> None:
    room = Room(seed=0)
    temps = {hour: room.outside_at(hour * HOUR_S).temperature for hour in range(24)}
    assert temps[15] == pytest.approx(room_module.OUTSIDE_MAX_C)
    assert temps[3] == pytest.approx(room_module.OUTSIDE_MIN_C)
    hum = {hour: room.outside_at(hour * HOUR_S).humidity for hour in range(24)}
    assert hum[3] == pytest.approx(room_module.OUTSIDE_HUMIDITY_MAX_PCT)
    assert hum[15] == pytest.approx(room_module.OUTSIDE_HUMIDITY_MIN_PCT)


def test_sound_is_louder_with_the_window_open_and_never_below_the_floor() -> None:
    closed = run(Room(seed=4, start_s=10 * HOUR_S), 1, 0.0)
    opened = run(Room(seed=4, start_s=10 * HOUR_S), 1, 100.0)
    # Same seed, same street: the difference is the window's ~20 dB.
    for shut, wide in zip(closed, opened, strict=True):
        assert wide.sound_dbfs - shut.sound_dbfs == pytest.approx(20.0)
    silent = RoomState(0.0, 21.0, 50.0, 0.0, room_module.Outside(21.0, 50.0, -200.0))
    assert silent.sound_dbfs == -120.0


def test_the_same_seed_gives_the_same_room_and_another_seed_another_street() -> None:
    def day(seed: int) -> list[tuple[float, float, float]]:
        room = Room(seed=seed, start_s=6 * HOUR_S)
        return [
            (s.temperature, s.humidity, s.sound_dbfs)
            for s in (room.step(600.0, (n * 7) % 101) for n in range(144))
        ]

    assert day(7) == day(7)
    assert day(7) != day(8)


def test_any_step_length_is_stable() -> None:
    """The relaxation is solved exactly: a day in one step stays within the physical range."""
    state = Room(seed=5, start_s=0.0, temperature=40.0).step(3 * 86_400.0, 100.0)
    assert room_module.OUTSIDE_MIN_C - 1 <= state.temperature <= 40.0
    with pytest.raises(ValueError, match="finite"):
        Room().step(-1.0, 0.0)


def test_the_rooms_comfort_band_is_the_policys() -> None:
    assert (room_module.COMFORT_LOW_C, room_module.COMFORT_HIGH_C) == (
        policy.COMFORT_LOW_C,
        policy.COMFORT_HIGH_C,
    )
    assert in_band_fraction([19.9, 20.0, 22.0, 24.0, 24.1]) == pytest.approx(0.6)
    assert band_excess([18.0, 22.0, 26.0]) == pytest.approx(4 / 3)


def test_a_person_opens_a_hot_room_and_closes_a_loud_one_deterministically() -> None:
    always = PersonParams(mean_interval_s=1e-9)
    hot = RoomState(0.0, 29.0, 50.0, 0.0, room_module.Outside(30.0, 40.0, -35.0))
    loud = RoomState(0.0, 23.0, 50.0, 80.0, room_module.Outside(30.0, 40.0, -12.0))
    assert Person(params=always).decide(hot, 60.0) == 100
    assert Person(params=always).decide(loud, 60.0) == 0
    comfy = RoomState(0.0, 22.0, 50.0, 0.0, room_module.Outside(22.0, 50.0, -40.0))
    assert Person(params=always).decide(comfy, 60.0) is None

    def choices(seed: int) -> list[int | None]:
        person = Person(seed=seed)
        return [person.decide(hot, 600.0) for _ in range(200)]

    assert choices(1) == choices(1)
    assert 0 < sum(c is not None for c in choices(1)) < 200


def test_the_node_publishes_the_rooms_readings_and_moves_it_on_simulated_time() -> None:
    """The node steps its room by wall time x speedup, with the window where its motor is; the
    clip it publishes measures back as the room's sound level."""
    now = [100.0]
    node = RoomNode(
        endpoint=NOWHERE,
        device_id="room-01",
        seed=3,
        clock_s=lambda: now[0],
        speedup=600.0,
        start_s=18 * HOUR_S,
        room=Room(seed=3, start_s=18 * HOUR_S, temperature=27.0),
    )
    first = dict(node.next_messages())
    assert first["sensor/room-01/temperature"] == b"27.0"
    now[0] += 6.0  # an hour of the room
    node.on_message("window/room-01/control", orjson.dumps({"position": 100}))
    now[0] += 10.0  # the motor's full stroke: open
    assert node.window_position() == 100.0
    messages = dict(node.next_messages())
    state = node.room.state
    assert state.t_s == pytest.approx(18 * HOUR_S + 16 * 600.0)
    assert state.window_pct == 100.0
    assert messages["sensor/room-01/temperature"] == f"{state.temperature:.1f}".encode()
    clip = orjson.loads(messages["sensor/room-01/audio"])
    level = measure_wav(base64.b64decode(clip["data"])).dbfs
    assert level == pytest.approx(state.sound_dbfs, abs=1.0)


def test_without_the_api_a_person_moves_the_motor_by_hand() -> None:
    now = [0.0]
    node = RoomNode(
        endpoint=NOWHERE,
        device_id="room-02",
        clock_s=lambda: now[0],
        speedup=3600.0,
        room=Room(seed=1, start_s=14 * HOUR_S, temperature=30.0),
        person=Person(params=PersonParams(mean_interval_s=1.0)),
    )
    node.advance()
    now[0] += 1.0
    node.advance()
    assert node.overrides == 1
    assert node.window_target == 100.0


def test_with_the_api_a_person_sends_a_manual_set_window_instead() -> None:
    sent: list[tuple[str, int]] = []
    now = [0.0]
    node = RoomNode(
        endpoint=NOWHERE,
        device_id="room-03",
        clock_s=lambda: now[0],
        speedup=3600.0,
        room=Room(seed=1, start_s=14 * HOUR_S, temperature=30.0),
        person=Person(params=PersonParams(mean_interval_s=1.0)),
        override=lambda device, position: sent.append((device, position)),
    )
    node.advance()
    now[0] += 1.0
    node.advance()
    assert sent == [("room-03", 100)]
    assert node.window_target == 0.0  # the command, not the hand, moves it


def test_the_node_obeys_a_control_message_over_mosquitto(mosquitto: MosquittoProcess) -> None:
    """`window/{id}/control` from the broker moves the room's window; the room then hears the
    street through it."""
    device_id = f"room-{uuid.uuid4().hex[:8]}"
    now = [0.0]
    node = RoomNode(
        endpoint=parse_mqtt_url(mosquitto.url),
        device_id=device_id,
        seed=9,
        clock_s=lambda: now[0],
        speedup=60.0,
        start_s=10 * HOUR_S,
    )
    with ExitStack() as closing:
        node.start()
        closing.callback(node.close)
        assert node.wait_subscribed(10.0)
        closed_level = node.advance().sound_dbfs
        assert node.window_position() == 0.0
        publisher = connected_publisher(mosquitto.url)
        closing.callback(publisher.stop)
        control = {
            "device_id": device_id,
            "timestamp": "2026-12-05T10:00:00Z",
            "position": 60,
            "confidence": 0.9,
            "features_used": {},
        }
        publish_all(publisher, [(f"window/{device_id}/control", orjson.dumps(control))])
        wait_until(lambda: node.window_target == 60.0, what="the control message to arrive")
        now[0] += 6.0  # the motor's stroke to 60 %, on the node's clock
        assert node.window_position() == 60.0
        assert node.controls_applied == 1
        state = node.advance()
        assert state.window_pct == 60.0
        assert state.sound_dbfs > closed_level + 5


def test_run_rooms_publishes_each_rooms_cycles_over_mosquitto(mosquitto: MosquittoProcess) -> None:
    stop = threading.Event()
    stats, nodes = run_rooms(
        endpoint=parse_mqtt_url(mosquitto.url),
        devices=2,
        stop=stop,
        duration_s=1.5,
        seed=4,
        period_s=0.5,
        speedup=600.0,
        start_hour=18.0,
        persons=False,
    )
    assert [n.device_id for n in nodes] == ["room-01", "room-02"]
    assert stats.sent >= 2 * 3 * 2  # two rooms, three messages a cycle, at least two cycles
    assert stats.failed == 0
    for node in nodes:
        assert node.room.state.t_s > 18 * HOUR_S


def test_cli_sim_room_profile(mosquitto: MosquittoProcess) -> None:
    result = CliRunner().invoke(
        app,
        [
            "sim",
            "--profile",
            "room",
            "--mqtt-url",
            mosquitto.url,
            "--devices",
            "1",
            "--duration",
            "1",
            "--period",
            "0.5",
            "--speedup",
            "360",
            "--no-persons",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 rooms" in result.output
    assert "room-01 at 12." in result.output
