"""The ESP32 of the Go/ClickHouse window-control stack (the `sensor` profile).

From the stack's implementation plan and its backbone's source (docs/protocol.md, "The
Go/ClickHouse window-control stack"): `sensor/{id}/temperature` and `sensor/{id}/humidity`
carry the raw number as text (`25.5`); `sensor/{id}/audio` carries a 2-second buffer from an
I2S microphone as `{"data":"<base64 WAV>","sample_rate":16000,"duration":2.0}`; the node
subscribes to `window/{id}/control` (`{"device_id","timestamp","position":0-100,"confidence",
"features_used"}`, published by the ML service) and drives its window motor to `position`
percent, with "safety limits" and "smooth movement profiles".

The firmware is only planned (phase 3 of the plan), so where the plan is silent we chose,
saying why:

* one reading cycle every 10 s: temperature, humidity, then the audio buffer ("sensor reading
  loop with configurable intervals"; 10 s keeps one device's 2 s recordings well apart and its
  ~85 KB audio messages at ~8.5 KB/s);
* PubSubClient as in the other Arduino sketches: MQTT 3.1.1, clean session, publishes QoS 0 (its
  only publish QoS; the buffer is raised for the audio with `setBufferSize`), not retained;
  client id = device id; it subscribes to its control topic with QoS 1, matching the ML service's
  "QoS 1 for reliable delivery" of control messages;
* no last will: the stack tracks presence by last-seen ("detect inactive devices");
* device ids `window-01`, `window-02`, ... ("device ID configuration" gives a free-form name);
* temperature and humidity with one decimal (DHT22/BME280 as printed with `dtostrf(v, 1, 1)`);
* the window moves at `WINDOW_SPEED_PCT_PER_S` towards the last position asked for, clamped to
  0-100 (the safety limits); malformed control messages are ignored;
* the sound: ambient noise plus a mains hum whose level wanders like a street's, heard through
  the window, so a closed window makes the recording quieter: what the stack's ML loop learns.
"""

from __future__ import annotations

import array
import base64
import io
import math
import random
import threading
import time
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import orjson

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.sim.link import LinkedDevice, Periodic
from fieldhub.sim.payloads import BoundedWalk, SensorModel
from fieldhub.sim.stats import PublishCounter

SENSOR_PERIOD_S = 10.0
SENSOR_PUBLISH_QOS = 0
SENSOR_CONTROL_QOS = 1
AUDIO_SAMPLE_RATE_HZ = 16_000
AUDIO_DURATION_S = 2.0
AUDIO_SAMPLE_WIDTH_BYTES = 2
AUDIO_CHANNELS = 1
INT16_MAX = 32_767
INT16_MIN = -32_768
# The hum of mains-powered things near a window (50 Hz grid, heard mostly as its 100 Hz
# harmonic); half the sound's energy, the other half broadband noise.
HUM_FREQUENCY_HZ = 100.0
HUM_ENERGY_FRACTION = 0.5
# Street sound outside, in dB relative to full scale, as the microphone would hear it with the
# window open: a quiet street around -30 dBFS, a passing lorry near -12. One step per recording.
OUTSIDE_LEVEL_CENTER_DBFS = -30.0
OUTSIDE_LEVEL_MIN_DBFS = -48.0
OUTSIDE_LEVEL_MAX_DBFS = -12.0
OUTSIDE_LEVEL_STEP_DB = 3.0
OUTSIDE_LEVEL_REVERSION = 0.1
# A closed single-glazed window takes ~20 dB off street noise; in between, linear in the opening.
CLOSED_WINDOW_ATTENUATION_DB = 20.0
# An SG90 on a window linkage: a full stroke in about 10 s ("smooth movement profiles").
WINDOW_SPEED_PCT_PER_S = 10.0
WINDOW_MIN_PCT = 0.0
WINDOW_MAX_PCT = 100.0
# The window starts closed: the safe position after a power cut.
WINDOW_START_PCT = 0.0
SENSOR_DECIMALS = 1
# Salt for the audio generator's seed, so it never shares a stream with SensorModel's.
AUDIO_SEED_SALT = 0x5A0D_10


def window_sensor_id(index: int) -> str:
    """Device id of simulated window node number `index` (1-based): 1 -> `window-01`."""
    if index < 1:
        raise ValueError(f"node numbers start at 1, got {index}")
    return f"window-{index:02d}"


def sensor_topic(device_id: str, quantity: str) -> str:
    """`sensor/{id}/{quantity}`: `temperature`, `humidity` or `audio`."""
    return f"sensor/{device_id}/{quantity}"


def window_control_topic(device_id: str) -> str:
    """`window/{id}/control`: the ML service's window position for this node."""
    return f"window/{device_id}/control"


def sensor_number_payload(value: float) -> bytes:
    """A reading as the raw text the firmware publishes: one decimal, `25.5`, never `-0.0`."""
    if not math.isfinite(value):
        raise ValueError(f"a reading must be finite, got {value}")
    text = f"{value:.{SENSOR_DECIMALS}f}"
    if text == "-0.0":
        text = "0.0"
    return text.encode()


def _clip(sample: float) -> int:
    return max(INT16_MIN, min(INT16_MAX, round(sample)))


def tone(
    *,
    amplitude: float,
    frequency_hz: float,
    duration_s: float = AUDIO_DURATION_S,
    sample_rate: int = AUDIO_SAMPLE_RATE_HZ,
) -> array.array[int]:
    """A sine of peak `amplitude` (int16 units) as 16-bit samples; its RMS is amplitude/sqrt(2)."""
    count = round(duration_s * sample_rate)
    step = 2 * math.pi * frequency_hz / sample_rate
    return array.array("h", (_clip(amplitude * math.sin(step * n)) for n in range(count)))


def ambient_sound(
    *,
    level_rms: float,
    rng: random.Random,
    duration_s: float = AUDIO_DURATION_S,
    sample_rate: int = AUDIO_SAMPLE_RATE_HZ,
) -> array.array[int]:
    """Hum plus Gaussian noise whose combined RMS is `level_rms` (int16 units), before clipping.

    The hum carries `HUM_ENERGY_FRACTION` of the energy (a sine of peak a has power a^2/2) and the
    noise the rest (power = its variance), and the two are independent, so the powers add.
    """
    if level_rms < 0:
        raise ValueError(f"level must be >= 0, got {level_rms}")
    count = round(duration_s * sample_rate)
    power = level_rms * level_rms
    hum_peak = math.sqrt(2 * power * HUM_ENERGY_FRACTION)
    noise_sigma = math.sqrt(power * (1 - HUM_ENERGY_FRACTION))
    step = 2 * math.pi * HUM_FREQUENCY_HZ / sample_rate
    phase = rng.uniform(0, 2 * math.pi)
    gauss = rng.gauss
    return array.array(
        "h",
        (
            _clip(hum_peak * math.sin(phase + step * n) + gauss(0.0, noise_sigma))
            for n in range(count)
        ),
    )


def rms(samples: Sequence[int]) -> float:
    """Root mean square of integer samples (0 for none)."""
    if not samples:
        return 0.0
    return math.sqrt(sum(sample * sample for sample in samples) / len(samples))


def wav_bytes(samples: array.array[int], *, sample_rate: int = AUDIO_SAMPLE_RATE_HZ) -> bytes:
    """A mono 16-bit PCM WAV file (RIFF header + little-endian samples), via stdlib `wave`."""
    if samples.typecode != "h":
        raise ValueError(f"samples must be 16-bit ('h'), got typecode {samples.typecode!r}")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(AUDIO_CHANNELS)
        out.setsampwidth(AUDIO_SAMPLE_WIDTH_BYTES)
        out.setframerate(sample_rate)
        # wave writes frames as given; the ESP32 (like every machine we run on) is little-endian,
        # and so is WAV: swap only on a big-endian host.
        if array.array("h", [1]).tobytes() != b"\x01\x00":
            samples = array.array("h", samples)
            samples.byteswap()
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def sensor_audio_payload(
    wav: bytes, *, sample_rate: int = AUDIO_SAMPLE_RATE_HZ, duration_s: float = AUDIO_DURATION_S
) -> bytes:
    """`{"data":"<base64 WAV>","sample_rate":16000,"duration":2.0}` (compact, this key order)."""
    return orjson.dumps(
        {
            "data": base64.b64encode(wav).decode("ascii"),
            "sample_rate": sample_rate,
            "duration": float(duration_s),
        }
    )


def parse_window_control(payload: bytes) -> float | None:
    """The `position` of a control message, clamped to 0-100; None when it is unusable."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    position = message.get("position")
    if isinstance(position, bool) or not isinstance(position, int | float):
        return None
    if not math.isfinite(position):
        return None
    return min(WINDOW_MAX_PCT, max(WINDOW_MIN_PCT, float(position)))


class WindowMotor:
    """A window opening that moves at a fixed speed towards its target (pure: time is passed in)."""

    def __init__(
        self,
        *,
        position_pct: float = WINDOW_START_PCT,
        speed_pct_per_s: float = WINDOW_SPEED_PCT_PER_S,
        now_s: float = 0.0,
    ) -> None:
        if speed_pct_per_s <= 0:
            raise ValueError(f"speed must be > 0 %/s, got {speed_pct_per_s}")
        self.speed_pct_per_s = speed_pct_per_s
        self._from_pct = position_pct
        self.target_pct = position_pct
        self._since_s = now_s

    def position(self, now_s: float) -> float:
        """Where the window is at `now_s`, in percent open."""
        travelled = max(0.0, now_s - self._since_s) * self.speed_pct_per_s
        gap = self.target_pct - self._from_pct
        if abs(gap) <= travelled:
            return self.target_pct
        return self._from_pct + math.copysign(travelled, gap)

    def move_to(self, target_pct: float, now_s: float) -> None:
        """Head for `target_pct` from wherever the window is at `now_s`."""
        self._from_pct = self.position(now_s)
        self._since_s = now_s
        self.target_pct = min(WINDOW_MAX_PCT, max(WINDOW_MIN_PCT, target_pct))


def heard_level_dbfs(outside_dbfs: float, window_pct: float) -> float:
    """The level at the microphone: street sound less what the window keeps out."""
    closed_fraction = 1.0 - window_pct / WINDOW_MAX_PCT
    return outside_dbfs - CLOSED_WINDOW_ATTENUATION_DB * closed_fraction


def dbfs_to_rms(level_dbfs: float) -> float:
    """An RMS level in int16 units for a level in dB relative to full scale."""
    return INT16_MAX * 10 ** (level_dbfs / 20)


class WindowSensor(LinkedDevice):
    """One simulated node of the window-control stack (see the module docstring)."""

    kind = "sensor"

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        device_id: str,
        seed: int = 0,
        counter: PublishCounter | None = None,
        period_s: float = SENSOR_PERIOD_S,
        clock_s: Callable[[], float] | None = None,
    ) -> None:
        self.temperature_topic = sensor_topic(device_id, "temperature")
        self.humidity_topic = sensor_topic(device_id, "humidity")
        self.audio_topic = sensor_topic(device_id, "audio")
        self.control_topic = window_control_topic(device_id)
        super().__init__(
            endpoint=endpoint,
            device_id=device_id,
            client_id=device_id,
            will=None,
            subscriptions=[(self.control_topic, SENSOR_CONTROL_QOS)],
            counter=counter,
        )
        self.period_s = period_s
        self.sensors = SensorModel(seed)
        self._audio_rng = random.Random(seed ^ AUDIO_SEED_SALT)
        self._outside = BoundedWalk(
            rng=self._audio_rng,
            center=OUTSIDE_LEVEL_CENTER_DBFS,
            low=OUTSIDE_LEVEL_MIN_DBFS,
            high=OUTSIDE_LEVEL_MAX_DBFS,
            step=OUTSIDE_LEVEL_STEP_DB,
            reversion=OUTSIDE_LEVEL_REVERSION,
        )
        self._clock_s = clock_s if clock_s is not None else time.monotonic
        self._motor_lock = threading.Lock()
        self._motor = WindowMotor(now_s=self._clock_s())
        self.controls_applied = 0
        self.controls_ignored = 0
        self.last_level_dbfs: float | None = None

    @property
    def window_target(self) -> float:
        """The position (percent open) the window is heading for."""
        with self._motor_lock:
            return self._motor.target_pct

    def window_position(self) -> float:
        """Where the window is now, in percent open."""
        with self._motor_lock:
            return self._motor.position(self._clock_s())

    def periodic(self) -> tuple[Periodic, ...]:
        """One reading cycle (temperature, humidity, audio) every `period_s`."""
        return (Periodic("cycle", self.period_s, self.publish_cycle),)

    def next_messages(self) -> list[tuple[str, bytes]]:
        """Sample the sensors and record 2 s of sound: the three messages of one cycle."""
        sample = self.sensors.sample()
        level_dbfs = heard_level_dbfs(self._outside.next(), self.window_position())
        self.last_level_dbfs = level_dbfs
        sound = ambient_sound(level_rms=dbfs_to_rms(level_dbfs), rng=self._audio_rng)
        return [
            (self.temperature_topic, sensor_number_payload(sample.temperature)),
            (self.humidity_topic, sensor_number_payload(sample.humidity)),
            (self.audio_topic, sensor_audio_payload(wav_bytes(sound))),
        ]

    def publish_cycle(self) -> list[Future[None]]:
        """Publish one cycle (QoS 0, not retained); skipped messages are counted, not returned."""
        if self._closed or not self.connected:
            self.counter.skip(3)
            return []
        futures = []
        for topic, payload in self.next_messages():
            future = self.publish(topic, payload, qos=SENSOR_PUBLISH_QOS)
            if future is not None:
                futures.append(future)
        return futures

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.control_topic:
            return
        target = parse_window_control(payload)
        with self._motor_lock:
            if target is None:
                self.controls_ignored += 1
                return
            self._motor.move_to(target, self._clock_s())
            self.controls_applied += 1
