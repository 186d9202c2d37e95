"""Pure payload builders, topic names and sensor models for simulated devices (no I/O).

Two wire formats live here:

* ``native`` (docs/protocol.md): compact JSON telemetry ``{"v":1,"ts":...,"seq":...,...}`` and
  the plain status words ``online`` / ``offline``.
* ``readings`` (the Flask/SQLite gateway stack): the ESP32 firmware formats its JSON by hand with
  ``write!(data_str, "{{\\"macAddress\\":\\"{}\\", \\"timestamp\\":{}, \\"rssi\\":{:.2}}}", ...)``,
  so the bytes have no space after a colon and one space after each comma. fieldhub must accept
  those bytes exactly, so the simulator reproduces them byte for byte instead of using a JSON
  encoder.

The sensor models are seeded, mean-reverting random walks: deterministic for a given seed, so a
demo or a test run can be replayed, and bounded, so a long run never drifts into absurd values.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from fieldhub_node.config import validate as validate_config
from fieldhub_node.node import Node, Publish
from fieldhub_node.telemetry import telemetry_payload

# --- native profile ----------------------------------------------------------------------------

# Version of the native telemetry envelope (docs/protocol.md: a shape change bumps `v`).
NATIVE_PAYLOAD_VERSION = 1
ONLINE_PAYLOAD = b"online"
OFFLINE_PAYLOAD = b"offline"

# --- readings profile --------------------------------------------------------------------------

# The firmware maps the WiFi RSSI linearly from this dBm range onto 0..100 %, clamped: -90 dBm is
# about where an ESP32 loses the access point, -30 dBm is standing next to it.
RSSI_FLOOR_DBM = -90.0
RSSI_CEILING_DBM = -30.0
RSSI_PERCENT_MAX = 100

# Simulated gateways get MACs under the Espressif OUI the Flask stack's own gateway uses
# (3C:E9:0E:72:12:4C), so they look like the real thing on a dashboard; the index fills the
# three NIC bytes.
SIM_MAC_OUI = (0x3C, 0xE9, 0x0E)
MAX_MAC_INDEX = 0xFF_FF_FF

_CANONICAL_MAC = re.compile(r"^[0-9A-F]{2}(?::[0-9A-F]{2}){5}$")


def native_telemetry_topic(device_id: str) -> str:
    """`devices/{id}/telemetry`: where a native device publishes readings."""
    return f"devices/{device_id}/telemetry"


def native_status_topic(device_id: str) -> str:
    """`devices/{id}/status`: retained `online`/`offline`, also the device's last will."""
    return f"devices/{device_id}/status"


def readings_gateway_topic(mac: str) -> str:
    """`/readings/gateway/{MAC}`; the leading slash is part of the firmware's topic."""
    return f"/readings/gateway/{mac}"


def readings_temperature_topic(mac: str) -> str:
    """`/readings/temperature/{MAC}`; the leading slash is part of the firmware's topic."""
    return f"/readings/temperature/{mac}"


def mac_for_index(index: int) -> str:
    """A deterministic gateway MAC for a 1-based index: 1 -> `3C:E9:0E:00:00:01`."""
    if not 1 <= index <= MAX_MAC_INDEX:
        raise ValueError(f"MAC index {index} is outside 1..{MAX_MAC_INDEX}")
    octets = (*SIM_MAC_OUI, (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF)
    return ":".join(f"{octet:02X}" for octet in octets)


def _check_mac(mac: str) -> None:
    # The firmware always prints its MAC upper case with colons; anything else in the simulator is
    # a bug in the caller, and would silently create a second device id on the dashboard.
    if not _CANONICAL_MAC.match(mac):
        raise ValueError(f"MAC {mac!r} must be upper case with colons, e.g. 3C:E9:0E:72:12:4C")


def _check_uptime(uptime_ms: int) -> None:
    if uptime_ms < 0:
        raise ValueError(f"uptime must be >= 0 ms, got {uptime_ms}")


def rssi_percent(dbm: float) -> int:
    """Map RSSI in dBm to the firmware's 0..100 %: -90 dBm -> 0, -30 dBm -> 100, clamped.

    The firmware's own function is not quoted in its project's write-up; its logged example
    (-51 dBm -> 65 %) is exact under this linear map. We round to the nearest percent (half up).
    """
    if math.isnan(dbm):
        raise ValueError("RSSI must be a number, got NaN")
    # Clamp in dBm first, so an infinite input never reaches the integer conversion.
    clamped_dbm = min(RSSI_CEILING_DBM, max(RSSI_FLOOR_DBM, dbm))
    span_dbm = RSSI_CEILING_DBM - RSSI_FLOOR_DBM
    percent = (clamped_dbm - RSSI_FLOOR_DBM) * RSSI_PERCENT_MAX / span_dbm
    return math.floor(percent + 0.5)


def readings_gateway_payload(mac: str, uptime_ms: int, rssi_percent: int) -> bytes:
    """The firmware's gateway message, byte for byte.

    >>> readings_gateway_payload("3C:E9:0E:72:12:4C", 93387, 65)
    b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":93387, "rssi":65}'
    """
    _check_mac(mac)
    _check_uptime(uptime_ms)
    if not 0 <= rssi_percent <= RSSI_PERCENT_MAX:
        raise ValueError(f"rssi must be a percentage 0..{RSSI_PERCENT_MAX}, got {rssi_percent}")
    return f'{{"macAddress":"{mac}", "timestamp":{uptime_ms}, "rssi":{rssi_percent}}}'.encode()


def readings_temperature_payload(mac: str, uptime_ms: int, temperature: float) -> bytes:
    """The temperature message in the gateway's layout, temperature with one decimal.

    >>> readings_temperature_payload("3C:E9:0E:72:12:4C", 93387, 21.43)
    b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":93387, "temperature":21.4}'
    """
    _check_mac(mac)
    _check_uptime(uptime_ms)
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature}")
    text = f"{temperature:.1f}"
    if text == "-0.0":
        # A reading that rounds to zero from below is still zero; "-0.0" would only confuse.
        text = "0.0"
    return f'{{"macAddress":"{mac}", "timestamp":{uptime_ms}, "temperature":{text}}}'.encode()


def native_telemetry_payload(
    *,
    ts_ms: int,
    seq: int,
    temperature: float,
    humidity: float,
    rssi: int,
    window_position: int | None = None,
) -> bytes:
    """Compact native telemetry JSON: `{"v":1,"ts":...,"seq":...,"temperature":...,...}`.

    Built by the firmware core (`fieldhub_node.telemetry`), so the simulator sends the bytes a
    real node sends. `ts` is epoch milliseconds, so ingest takes it as the reading time (and its
    primary key absorbs a redelivery); `seq` lets a test check that nothing was lost.
    """
    if ts_ms < 0 or seq < 0:
        raise ValueError(f"ts and seq must be >= 0, got ts={ts_ms} seq={seq}")
    for name, value in (("temperature", temperature), ("humidity", humidity)):
        # JSON has no NaN or infinity: it would reach ingest as a dead letter.
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    readings: dict[str, float | int] = {"temperature": temperature, "humidity": humidity}
    readings["rssi"] = rssi
    if window_position is not None:
        readings["window_position"] = window_position
    return telemetry_payload(ts_ms, seq, readings)


# --- sensor models -----------------------------------------------------------------------------

# Indoor air: a room that wanders a few degrees around 21 C over hours. Step and reversion are per
# sample; at one sample a second the walk moves ~0.05 C/s and returns half way to the centre in
# roughly a minute, which looks alive on a live chart without looking like noise.
TEMPERATURE_CENTER_C = 21.0
TEMPERATURE_MIN_C = 17.0
TEMPERATURE_MAX_C = 25.0
TEMPERATURE_STEP_C = 0.05
HUMIDITY_CENTER_PCT = 50.0
HUMIDITY_MIN_PCT = 40.0
HUMIDITY_MAX_PCT = 60.0
HUMIDITY_STEP_PCT = 0.3
# WiFi signal of a device a few metres from the access point; fades of a few dB are normal.
RSSI_CENTER_DBM = -60.0
RSSI_MIN_DBM = -70.0
RSSI_MAX_DBM = -50.0
RSSI_STEP_DBM = 1.0
# Fraction of the distance to the centre a walk recovers each sample: small enough to wander,
# large enough that a walk never sits on a bound for long.
MEAN_REVERSION = 0.01
# How far from the centre a walk starts, as a fraction of its half range, so that devices of one
# fleet start at different values instead of drawing identical lines at first.
START_SPREAD = 0.5
# Resolution of the simulated sensors (SHT3x-like: 0.01 C, 0.1 %RH; RSSI is whole dBm).
TEMPERATURE_DECIMALS = 2
HUMIDITY_DECIMALS = 1


class BoundedWalk:
    """A mean-reverting Gaussian random walk clamped to ``[low, high]``.

    Deterministic for a given `random.Random`: the walk draws exactly one number per step, so two
    walks sharing a generator interleave reproducibly.
    """

    def __init__(
        self,
        *,
        rng: random.Random,
        center: float,
        low: float,
        high: float,
        step: float,
        reversion: float = MEAN_REVERSION,
        start: float | None = None,
    ) -> None:
        if not low <= center <= high:
            raise ValueError(f"center {center} is outside [{low}, {high}]")
        if step < 0 or not 0 <= reversion <= 1:
            raise ValueError(f"need step >= 0 and 0 <= reversion <= 1, got {step}, {reversion}")
        self._rng = rng
        self.center = center
        self.low = low
        self.high = high
        self.step = step
        self.reversion = reversion
        self.value = min(high, max(low, center if start is None else start))

    def next(self) -> float:
        """Advance one sample and return the new value, always within the bounds."""
        drift = (self.center - self.value) * self.reversion
        moved = self.value + drift + self._rng.gauss(0.0, self.step)
        self.value = min(self.high, max(self.low, moved))
        return self.value


@dataclass(frozen=True, slots=True)
class SensorSample:
    """One reading of every simulated sensor, already at sensor resolution."""

    temperature: float
    humidity: float
    rssi_dbm: int


class SensorModel:
    """Temperature, humidity and WiFi RSSI of one simulated device, seeded and bounded."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self.temperature = self._walk(
            TEMPERATURE_CENTER_C, TEMPERATURE_MIN_C, TEMPERATURE_MAX_C, TEMPERATURE_STEP_C
        )
        self.humidity = self._walk(
            HUMIDITY_CENTER_PCT, HUMIDITY_MIN_PCT, HUMIDITY_MAX_PCT, HUMIDITY_STEP_PCT
        )
        self.rssi = self._walk(RSSI_CENTER_DBM, RSSI_MIN_DBM, RSSI_MAX_DBM, RSSI_STEP_DBM)

    def _walk(self, center: float, low: float, high: float, step: float) -> BoundedWalk:
        half_range = min(center - low, high - center)
        start = center + self._rng.uniform(-1.0, 1.0) * half_range * START_SPREAD
        return BoundedWalk(rng=self._rng, center=center, low=low, high=high, step=step, start=start)

    def sample(self) -> SensorSample:
        """Advance every sensor one step and return the readings."""
        return SensorSample(
            temperature=round(self.temperature.next(), TEMPERATURE_DECIMALS),
            humidity=round(self.humidity.next(), HUMIDITY_DECIMALS),
            rssi_dbm=round(self.rssi.next()),
        )


def epoch_ms() -> int:
    """Wall-clock time in epoch milliseconds (the native `ts`)."""
    return time.time_ns() // 1_000_000


# The simulated node's configuration, validated by the firmware core like a real config.json.
# WiFi and broker are placeholders (the simulator's transport is paho, not the node's WiFi). The
# buffer is the core's maximum, 2,000 entries: 33 min of readings at 1 Hz, 20 s at 100 Hz.
SIM_NODE_CONFIG: dict[str, object] = {
    "wifi": {"ssid": "fieldhub-sim"},
    "mqtt": {"host": "simulated"},
    "sensor": {"type": "none"},
    "telemetry_interval_s": 1,
    "buffer_entries": 2000,
}


def sim_node(device_id: str, *, buffer_entries: int | None = None) -> Node:
    """A firmware core `Node` configured like a simulated device."""
    raw = dict(SIM_NODE_CONFIG)
    if buffer_entries is not None:
        raw["buffer_entries"] = buffer_entries
    return Node(validate_config(raw), device_id)


class NativeTelemetry:
    """The successive readings of one native device, turned into payloads by the firmware core.

    `seq` counts from 0 so a test can check nothing was lost; `ts` is epoch ms and strictly
    increasing even when the clock stands still or steps back (NTP), because ingest keys readings
    by (device, metric, ts) and two messages sharing a millisecond would collapse into one row.
    Both rules live in the core (`fieldhub_node`), which NativeDevice runs too: a twin built with
    the same seed and clock yields the bytes the device publishes.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        clock_ms: Callable[[], int] = epoch_ms,
        node: Node | None = None,
    ) -> None:
        self.sensors = SensorModel(seed)
        self._clock_ms = clock_ms
        # A twin (no node given) is always "online": every reading becomes a live payload.
        self.node = node if node is not None else sim_node("twin")
        if node is None:
            self.node.on_connect(0)

    @property
    def next_seq(self) -> int:
        """The `seq` the next payload will carry (= readings taken so far)."""
        return self.node.stamper.seq

    def readings(self) -> dict[str, float | int]:
        """Sample the sensors once: what a node's drivers would return."""
        sample = self.sensors.sample()
        return {
            "temperature": sample.temperature,
            "humidity": sample.humidity,
            "rssi": sample.rssi_dbm,
        }

    def take_reading(self, now_ms: int = 0) -> list[object]:
        """Sample the sensors and hand the readings to the node: its actions (a live Publish,
        or nothing when it buffered the reading)."""
        return self.node.on_reading(self.readings(), now_ms, self._clock_ms())

    def next_payload(self) -> bytes:
        """Sample the sensors and build the next live payload (the node must be online)."""
        for action in self.take_reading():
            if isinstance(action, Publish):
                return action.payload
        raise RuntimeError("the node buffered the reading: it is not online")
