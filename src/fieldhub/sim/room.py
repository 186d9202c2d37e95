"""A simulated room around a window-control node: `fieldhub sim --profile room`.

The `sensor` profile's node (`window_sensor.py`) publishes walks that do not care where its
window is; a room makes the window matter, so the ML loop's decisions have consequences a test
can measure. One room per device, each a `RoomNode`: the window-control stack's node with the
same topics, payloads, QoS and control handling (`sensor/{id}/temperature`, `/humidity`, a 2 s
WAV clip on `/audio`, a motor obeying `window/{id}/control`), whose readings come from `Room`.

The physics (`Room.step`, pure: the caller passes the simulated time, so tests run a day in
milliseconds):

* **Outside**: temperature on a daily cosine, `OUTSIDE_MIN_C` (12 °C) at 03:00 to
  `OUTSIDE_MAX_C` (22 °C) at `WARMEST_HOUR` (15:00), a mild day on which a closed room overheats
  (to ~28 °C) and an open one cools, so the window decides whether the room stays comfortable
  (on a day warmer than the comfort band no window could); relative humidity the other way round
  (85 % in the cool night, 40 % in the afternoon); the street's sound a mean-reverting walk
  around a daytime level (-30 dBFS, `window_sensor`'s street) and a quieter night (-45).
* **Indoor temperature** relaxes towards two things at once: the outside air, at a rate that
  grows with the opening (time constant `OPEN_TAU_S`, 10 min, fully open), and what the closed
  room holds (`CLOSED_TAU_S`, 2 h): the outside plus the gains of people, computers and sun
  (`INTERNAL_GAIN_C`, 6 °C), never below the heating's `HEATING_SETPOINT_C` (20 °C). So a closed
  room on a warm day overheats, an open one follows the outside, and between them lies the
  comfort band the policy (`fieldhub.ml.policy`) keeps: held by the policy all day, the room
  stays inside it, closed it spends the afternoon above it (`tests/sim/test_room.py`). Both
  relaxations are solved exactly for each step (an exponential towards their weighted target),
  so any step length is stable.
* **Indoor humidity** the same way: towards the outside's with the opening, towards
  `INDOOR_HUMIDITY_PCT` (people breathing, 55 %) when closed.
* **Sound** at the microphone: the street less what the window keeps out
  (`window_sensor.heard_level_dbfs`, ~20 dB closed), never below fieldhub's floor (-120 dBFS).
  The clip the node publishes is rendered at that level, so fieldhub measures it back.
* **A person** (`Person`, optional) who now and then moves the window: opens a hot room, closes a
  cold or loud one. In the platform a *manual* command is a `set_window` that did not come from
  the loop (it pauses automatic control, `guards.after_manual`); a person pushing the window
  with a hand is invisible to fieldhub. So when the sim knows fieldhub's API (`--url`, with an
  operator `--token` when authentication is on) the person sends `set_window` through
  `POST /api/v1/devices/{id}/commands`, which is exactly what a manual override is; without it
  the node moves its own motor and fieldhub learns of it only from the sound and temperature.

Time: a room runs on simulated seconds since midnight. `RoomNode` advances it by the wall time
since its last cycle times `speedup` (1 = real time; 360 = an hour of the room per 10 s), so a
closed-loop test can watch an afternoon in a minute. The window motor moves in wall time (it is
the node's hardware); the room sees wherever it is at each cycle.

Deterministic: the same seed, steps and window positions give the same readings.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.sim.payloads import BoundedWalk
from fieldhub.sim.stats import PublishCounter, SimStats
from fieldhub.sim.window_sensor import (
    SENSOR_PERIOD_S,
    WINDOW_MAX_PCT,
    WINDOW_MIN_PCT,
    WindowSensor,
    ambient_sound,
    dbfs_to_rms,
    heard_level_dbfs,
    sensor_audio_payload,
    sensor_number_payload,
    wav_bytes,
)
from fieldhub_node.audio import FLOOR_DBFS

__all__ = [
    "Outside",
    "Person",
    "PersonParams",
    "Room",
    "RoomNode",
    "RoomParams",
    "RoomState",
    "api_override",
    "band_excess",
    "in_band_fraction",
    "room_id",
    "run_rooms",
]

log = logging.getLogger("fieldhub.sim")

DAY_S = 86_400.0
HOUR_S = 3_600.0
# The outside's daily cycle: a mild day in a temperate city (module docstring: why mild).
OUTSIDE_MIN_C = 12.0
OUTSIDE_MAX_C = 22.0
WARMEST_HOUR = 15.0
# Relative humidity runs against temperature: dew in the cool night, dry afternoons.
OUTSIDE_HUMIDITY_MIN_PCT = 40.0
OUTSIDE_HUMIDITY_MAX_PCT = 85.0
# The street: `window_sensor`'s daytime level, ~15 dB quieter at night; daytime 07:00-22:00.
STREET_DAY_DBFS = -30.0
STREET_NIGHT_DBFS = -45.0
STREET_DAY_FROM_HOUR = 7.0
STREET_DAY_TO_HOUR = 22.0
STREET_MIN_DBFS = -60.0
STREET_MAX_DBFS = -12.0
# One walk step per room step; 2 dB keeps a passing lorry a step or two, not a jump to -12.
STREET_STEP_DB = 2.0
STREET_REVERSION = 0.2
# How fast a fully open window brings the room to the outside air (e-folding time): a room of
# ~40 m^3 with a wide-open casement exchanges its air about six times an hour.
OPEN_TAU_S = 600.0
# How fast a closed room settles to its own level: insulation and thermal mass, hours.
CLOSED_TAU_S = 7_200.0
# What a closed room holds above the outside: people, computers, sun through the glass.
INTERNAL_GAIN_C = 6.0
# The heating keeps a closed room at least this warm (the policy's band starts here too).
HEATING_SETPOINT_C = 20.0
# Two people breathing in a closed room.
INDOOR_HUMIDITY_PCT = 55.0
HUMIDITY_MIN_PCT = 5.0
HUMIDITY_MAX_PCT = 100.0
# A long step is integrated in pieces of at most this, so the street's walk and the person see
# a day as many moments, whatever the caller's step (the physics itself is exact for any step).
MAX_SUBSTEP_S = 60.0
# The comfort band a test judges by; the same numbers as the policy's (kept equal by a test).
COMFORT_LOW_C = 20.0
COMFORT_HIGH_C = 24.0
# Seeds: the room's and the person's streams never share numbers with each other or the node's.
PERSON_SEED_SALT = 0x9E15_0A
ROOM_SEED_SALT = 0x200D_17
ROOM_ID_FORMAT = "room-{:02d}"
# Overrides sent to fieldhub's API give up after this long (the person shrugs and walks on).
OVERRIDE_TIMEOUT_S = 5.0


def room_id(index: int) -> str:
    """Device id of simulated room number `index` (1-based): 1 -> `room-01`."""
    if index < 1:
        raise ValueError(f"room numbers start at 1, got {index}")
    return ROOM_ID_FORMAT.format(index)


@dataclass(frozen=True, slots=True)
class RoomParams:
    """A room's constants (the module docstring says what each does)."""

    outside_min_c: float = OUTSIDE_MIN_C
    outside_max_c: float = OUTSIDE_MAX_C
    warmest_hour: float = WARMEST_HOUR
    outside_humidity_min_pct: float = OUTSIDE_HUMIDITY_MIN_PCT
    outside_humidity_max_pct: float = OUTSIDE_HUMIDITY_MAX_PCT
    open_tau_s: float = OPEN_TAU_S
    closed_tau_s: float = CLOSED_TAU_S
    internal_gain_c: float = INTERNAL_GAIN_C
    heating_setpoint_c: float = HEATING_SETPOINT_C
    indoor_humidity_pct: float = INDOOR_HUMIDITY_PCT

    def __post_init__(self) -> None:
        if self.open_tau_s <= 0 or self.closed_tau_s <= 0:
            raise ValueError("time constants must be > 0 s")
        if self.outside_min_c > self.outside_max_c:
            raise ValueError(f"outside_min_c {self.outside_min_c} > max {self.outside_max_c}")


@dataclass(frozen=True, slots=True)
class Outside:
    """The weather and the street at one moment."""

    temperature: float
    humidity: float
    street_dbfs: float


@dataclass(frozen=True, slots=True)
class RoomState:
    """A room at simulated time `t_s` (seconds since the first midnight)."""

    t_s: float
    temperature: float
    humidity: float
    window_pct: float
    outside: Outside

    @property
    def sound_dbfs(self) -> float:
        """The level at the microphone: the street through the window, floored."""
        return max(FLOOR_DBFS, heard_level_dbfs(self.outside.street_dbfs, self.window_pct))


def _daily(t_s: float, low: float, high: float, peak_hour: float) -> float:
    """A cosine between `low` and `high` over a day, at `high` at `peak_hour`."""
    phase = 2 * math.pi * (t_s / HOUR_S - peak_hour) / 24.0
    return (low + high) / 2 + (high - low) / 2 * math.cos(phase)


def _relax(value: float, target: float, rate_per_s: float, dt_s: float) -> float:
    """`value` after `dt_s` of exponential approach to `target` at `rate_per_s` (exact)."""
    return target + (value - target) * math.exp(-rate_per_s * dt_s)


class Room:
    """One room's physics; see the module docstring. Pure: time comes in through `step`."""

    def __init__(
        self,
        *,
        seed: int = 0,
        start_s: float = 0.0,
        params: RoomParams | None = None,
        temperature: float | None = None,
        humidity: float | None = None,
    ) -> None:
        self.params = params or RoomParams()
        self._rng = random.Random(seed ^ ROOM_SEED_SALT)
        self._street = BoundedWalk(
            rng=self._rng,
            center=self._street_center(start_s),
            low=STREET_MIN_DBFS,
            high=STREET_MAX_DBFS,
            step=STREET_STEP_DB,
            reversion=STREET_REVERSION,
        )
        outside = self._outside(start_s, self._street.value)
        closed_t, closed_h = self._closed_levels(outside)
        self.state = RoomState(
            t_s=start_s,
            temperature=closed_t if temperature is None else temperature,
            humidity=closed_h if humidity is None else humidity,
            window_pct=WINDOW_MIN_PCT,
            outside=outside,
        )

    @staticmethod
    def _street_center(t_s: float) -> float:
        hour = (t_s / HOUR_S) % 24.0
        daytime = STREET_DAY_FROM_HOUR <= hour < STREET_DAY_TO_HOUR
        return STREET_DAY_DBFS if daytime else STREET_NIGHT_DBFS

    def _outside(self, t_s: float, street_dbfs: float) -> Outside:
        p = self.params
        temperature = _daily(t_s, p.outside_min_c, p.outside_max_c, p.warmest_hour)
        # Humidity peaks when temperature bottoms out (12 h later).
        humidity = _daily(
            t_s, p.outside_humidity_min_pct, p.outside_humidity_max_pct, p.warmest_hour + 12.0
        )
        return Outside(temperature, humidity, street_dbfs)

    def outside_at(self, t_s: float) -> Outside:
        """The weather at `t_s` with the street as it is now (the walk does not advance)."""
        return self._outside(t_s, self._street.value)

    def _closed_levels(self, outside: Outside) -> tuple[float, float]:
        p = self.params
        return (
            max(p.heating_setpoint_c, outside.temperature + p.internal_gain_c),
            p.indoor_humidity_pct,
        )

    def step(self, dt_s: float, window_pct: float) -> RoomState:
        """Advance `dt_s` simulated seconds with the window at `window_pct` (0-100) throughout;
        returns (and keeps) the new state."""
        if dt_s < 0 or not math.isfinite(dt_s):
            raise ValueError(f"a step must be finite and >= 0 s, got {dt_s}")
        opening = min(WINDOW_MAX_PCT, max(WINDOW_MIN_PCT, window_pct)) / WINDOW_MAX_PCT
        state = replace(self.state, window_pct=opening * WINDOW_MAX_PCT)
        remaining = dt_s
        while remaining > 0:
            dt = min(MAX_SUBSTEP_S, remaining)
            remaining -= dt
            t_s = state.t_s + dt
            self._street.center = self._street_center(t_s)
            outside = self._outside(t_s, self._street.next())
            state = self._advance(state, outside, opening, dt)
        self.state = state
        return state

    def _advance(self, state: RoomState, outside: Outside, opening: float, dt: float) -> RoomState:
        # Two relaxations at once are one relaxation towards their rate-weighted target.
        open_rate = opening / self.params.open_tau_s
        closed_rate = 1.0 / self.params.closed_tau_s
        rate = open_rate + closed_rate
        closed_t, closed_h = self._closed_levels(outside)
        target_t = (open_rate * outside.temperature + closed_rate * closed_t) / rate
        target_h = (open_rate * outside.humidity + closed_rate * closed_h) / rate
        humidity = _relax(state.humidity, target_h, rate, dt)
        return RoomState(
            t_s=state.t_s + dt,
            temperature=_relax(state.temperature, target_t, rate, dt),
            humidity=min(HUMIDITY_MAX_PCT, max(HUMIDITY_MIN_PCT, humidity)),
            window_pct=state.window_pct,
            outside=outside,
        )


@dataclass(frozen=True, slots=True)
class PersonParams:
    """When the person in the room gets up to move the window."""

    # How often, on average, the person looks at the window (simulated seconds).
    mean_interval_s: float = 2 * HOUR_S
    # Opens a closed-ish window above this, closes an open-ish one below `cold_c`.
    hot_c: float = 27.0
    cold_c: float = 19.0
    # Closes an open window when the street is this loud at the microphone.
    loud_dbfs: float = -20.0


class Person:
    """Someone who now and then moves the window by hand (pure, seeded)."""

    def __init__(self, *, seed: int = 0, params: PersonParams | None = None) -> None:
        self.params = params or PersonParams()
        self._rng = random.Random(seed ^ PERSON_SEED_SALT)

    def decide(self, state: RoomState, dt_s: float) -> int | None:
        """Whether the person moves the window during the last `dt_s`, and where to (None: they
        stay seated). One random number per call."""
        chance = 1.0 - math.exp(-max(0.0, dt_s) / self.params.mean_interval_s)
        if self._rng.random() >= chance:
            return None
        p = self.params
        if state.window_pct > 0 and (
            state.temperature < p.cold_c or state.sound_dbfs >= p.loud_dbfs
        ):
            return 0
        if state.window_pct < 50 and state.temperature > p.hot_c:
            return 100
        return None


Override = Callable[[str, int], None]


def api_override(url: str, token: str | None = None) -> Override:
    """A person's hand through fieldhub's API: `POST /api/v1/devices/{id}/commands` with
    `set_window`, which the loop takes as a manual override. Failures are logged, not raised:
    the simulation goes on."""

    def send(device_id: str, position: int) -> None:
        path = f"/api/v1/devices/{urllib.parse.quote(device_id, safe='')}/commands"
        body = json.dumps({"name": "set_window", "params": {"position": position}}).encode()
        request = urllib.request.Request(
            f"{url.rstrip('/')}{path}",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if token is not None:
            request.add_unredirected_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=OVERRIDE_TIMEOUT_S) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            log.warning("sim: %s's person: set_window refused: %s %s", device_id, exc.code, exc)
        except OSError as exc:
            log.warning("sim: %s's person cannot reach fieldhub at %s: %s", device_id, url, exc)

    return send


class RoomNode(WindowSensor):
    """The window-control node in a `Room`: its readings are the room's (module docstring).

    `clock_s` is the wall clock the motor and the room's steps follow (injectable for tests);
    `speedup` simulated seconds pass per wall second; `start_s` is the room's time of day at
    the first cycle. `person` moves the window now and then, through `override` (fieldhub's API,
    see `api_override`) when given, else by driving the motor itself.
    """

    kind = "room"

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        device_id: str,
        seed: int = 0,
        counter: PublishCounter | None = None,
        period_s: float = SENSOR_PERIOD_S,
        clock_s: Callable[[], float] | None = None,
        speedup: float = 1.0,
        start_s: float = 12 * HOUR_S,
        room: Room | None = None,
        person: Person | None = None,
        override: Override | None = None,
    ) -> None:
        if speedup <= 0 or not math.isfinite(speedup):
            raise ValueError(f"speedup must be > 0, got {speedup}")
        super().__init__(
            endpoint=endpoint,
            device_id=device_id,
            seed=seed,
            counter=counter,
            period_s=period_s,
            clock_s=clock_s,
        )
        self.speedup = speedup
        self.room = room if room is not None else Room(seed=seed, start_s=start_s)
        self.person = person
        self.override = override
        self.overrides = 0
        self._room_lock = threading.Lock()
        self._last_wall_s: float | None = None
        # (room time, temperature, window) after each cycle, for tests and the fleet's summary.
        self.history: list[tuple[float, float, float]] = []

    def advance(self) -> RoomState:
        """Step the room by the wall time since the last call times `speedup`, with the window
        where the motor has it now; maybe let the person act."""
        with self._room_lock:
            now = self._clock_s()
            dt_wall = 0.0 if self._last_wall_s is None else max(0.0, now - self._last_wall_s)
            self._last_wall_s = now
            dt_s = dt_wall * self.speedup
            state = self.room.step(dt_s, self.window_position())
            self.history.append((state.t_s, state.temperature, state.window_pct))
            # The person sees where the window is heading: a window already opening is not
            # pushed again (each push through the API would be one more manual command).
            seen = replace(state, window_pct=self.window_target)
            wanted = None if self.person is None else self.person.decide(seen, dt_s)
        if wanted is not None:
            self.overrides += 1
            log.info("sim: a person in %s moves the window to %d %%", self.device_id, wanted)
            if self.override is not None:
                self.override(self.device_id, wanted)
            else:
                with self._motor_lock:
                    self._motor.move_to(float(wanted), now)
        return state

    def next_messages(self) -> list[tuple[str, bytes]]:
        """One cycle: the room's temperature and humidity, and 2 s of its sound."""
        state = self.advance()
        self.last_level_dbfs = level = state.sound_dbfs
        sound = ambient_sound(level_rms=dbfs_to_rms(level), rng=self._audio_rng)
        return [
            (self.temperature_topic, sensor_number_payload(state.temperature)),
            (self.humidity_topic, sensor_number_payload(state.humidity)),
            (self.audio_topic, sensor_audio_payload(wav_bytes(sound))),
        ]


def in_band_fraction(
    temperatures: Sequence[float], low: float = COMFORT_LOW_C, high: float = COMFORT_HIGH_C
) -> float:
    """The share of `temperatures` inside [low, high] (0 for none)."""
    if not temperatures:
        return 0.0
    return sum(1 for t in temperatures if low <= t <= high) / len(temperatures)


def band_excess(
    temperatures: Sequence[float], low: float = COMFORT_LOW_C, high: float = COMFORT_HIGH_C
) -> float:
    """The mean distance of `temperatures` outside [low, high] in °C (0: always inside): how
    far from comfort a room was, which a window can shrink even where it cannot reach the band."""
    if not temperatures:
        return 0.0
    return sum(max(0.0, low - t, t - high) for t in temperatures) / len(temperatures)


# The runner's scheduler wakes at least this often, to stop promptly.
RUN_MAX_SLEEP_S = 0.1


def run_rooms(
    *,
    endpoint: MqttEndpoint,
    devices: int,
    stop: threading.Event,
    duration_s: float | None = None,
    seed: int = 0,
    period_s: float = SENSOR_PERIOD_S,
    speedup: float = 1.0,
    start_hour: float = 12.0,
    persons: bool = True,
    override: Override | None = None,
    log_line: Callable[[str], None] | None = None,
) -> tuple[SimStats, list[RoomNode]]:
    """`fieldhub sim --profile room`: `devices` rooms (`room-01`...), each node publishing a
    cycle every `period_s` wall seconds, until `stop` or `duration_s`. Returns the publish
    counts and the nodes (their `history`)."""
    emit = log_line if log_line is not None else log.info
    counter = PublishCounter()
    nodes = [
        RoomNode(
            endpoint=endpoint,
            device_id=room_id(n + 1),
            seed=seed * 1_000_003 + n,
            counter=counter,
            period_s=period_s,
            speedup=speedup,
            start_s=start_hour * HOUR_S,
            person=Person(seed=seed * 1_000_003 + n) if persons else None,
            override=override,
        )
        for n in range(devices)
    ]
    emit(
        f"sim: {devices} rooms -> {endpoint.url}; a cycle every {period_s:g} s, x{speedup:g} "
        f"room time from {start_hour:g}:00; persons "
        + ("off" if not persons else "through fieldhub's API" if override else "by hand")
    )
    started = time.monotonic()
    end = started + duration_s if duration_s is not None else math.inf
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_subscribed(5.0)
        # Spread the nodes over one period, as the fleet's scheduler does.
        due = [started + period_s * n / len(nodes) for n in range(len(nodes))]
        while not stop.is_set() and time.monotonic() < end:
            now = time.monotonic()
            for index, node in enumerate(nodes):
                if due[index] <= now:
                    node.publish_cycle()
                    due[index] += period_s * max(1, math.ceil((now - due[index]) / period_s))
            stop.wait(max(0.0, min(min(due), end, now + RUN_MAX_SLEEP_S) - time.monotonic()))
    finally:
        for node in nodes:
            node.stop()
    for node in nodes:
        state = node.room.state
        temps = [h[1] for h in node.history]
        emit(
            f"sim: {node.device_id} at {state.t_s / HOUR_S % 24:.1f} h: "
            f"{state.temperature:.1f} °C, window {node.window_position():.0f} %, "
            f"{node.overrides} overrides; over the run {100 * in_band_fraction(temps):.0f} % of "
            f"cycles in the comfort band, {band_excess(temps):.1f} °C outside it on average"
        )
    return counter.snapshot(), nodes
