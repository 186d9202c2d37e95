"""Pure tests of the legacy-stack device kinds: byte layouts, the WAV builder, command handling
(the fastapi kind has its own module, test_sim_fastapi_node.py).

No broker: the devices are built but never started (their MQTT client only connects on start).
"""

from __future__ import annotations

import array
import base64
import io
import math
import random
import re
import wave
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from typer.testing import CliRunner

from fieldhub.cli import app
from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.sim import (
    DEVICE_KINDS,
    SIM_PROFILES,
    CommandResult,
    IotNode,
    Led,
    PublishCounter,
    WindowMotor,
    WindowSensor,
    ambient_sound,
    apply_iot_node_command,
    iot_node_offline_payload,
    iot_node_status_payload,
    iot_node_telemetry_payload,
    parse_window_control,
    rms,
    sensor_audio_payload,
    sensor_number_payload,
    tone,
    wav_bytes,
)
from fieldhub.sim.fleet import _build_fleet, _describe, _jobs, _kinds
from fieldhub.sim.window_sensor import (
    AUDIO_SAMPLE_RATE_HZ,
    CLOSED_WINDOW_ATTENUATION_DB,
    heard_level_dbfs,
)

# Nothing listens here; nothing below connects.
NOWHERE = MqttEndpoint(host="127.0.0.1", port=9)
# 2 s of 16 kHz mono 16-bit PCM plus the 44-byte RIFF header.
WAV_BYTES = 44 + 2 * 16_000 * 2


# --- iot-node (Raspberry Pi/Mosquitto stack) -----------------------------------------------------


def test_iot_node_telemetry_is_the_seed_example_byte_for_byte() -> None:
    """With the document's values, the telemetry is its example, compact and in its key order."""
    payload = iot_node_telemetry_payload(
        node_id="node_01",
        timestamp_s=1_704_844_800,
        temperature=22.5,
        humidity=45.2,
        wifi_rssi=-65,
        uptime_s=3600,
    )
    assert payload == (
        b'{"node_id":"node_01","timestamp":1704844800,'
        b'"sensors":{"temperature":22.5,"humidity":45.2},"wifi_rssi":-65,"uptime":3600}'
    )


def test_iot_node_device_topics_ids_and_will() -> None:
    """Topic id `01`, payload/client id `node_01`, retained JSON `offline` will."""
    node = IotNode(endpoint=NOWHERE, topic_id="01", wall_clock_s=lambda: 1_704_844_800.5)
    assert (node.device_id, node.node_id, node.client_id) == ("01", "node_01", "node_01")
    assert node.telemetry_topic == "iot/node/01/telemetry"
    assert node.status_topic == "iot/node/01/status"
    assert node.command_topic == "iot/node/01/command"
    assert node.will is not None
    assert (node.will.topic, node.will.qos, node.will.retain) == (node.status_topic, 1, True)
    assert orjson.loads(node.will.payload) == {"node_id": "node_01", "status": "offline"}
    assert node.will.payload == iot_node_offline_payload("node_01")
    telemetry = orjson.loads(node.next_telemetry_payload())
    assert telemetry["timestamp"] == 1_704_844_800
    assert set(telemetry) == {"node_id", "timestamp", "sensors", "wifi_rssi", "uptime"}
    assert set(telemetry["sensors"]) == {"temperature", "humidity"}


def test_iot_node_set_led_changes_the_led_and_the_status_reply_says_so() -> None:
    """`set_led` with the document's params turns the LED on; the status reply reports `ok`."""
    node = IotNode(endpoint=NOWHERE, topic_id="07", wall_clock_s=lambda: 1_704_844_800.0)
    node.on_message(
        node.command_topic, b'{"command":"set_led","params":{"state":"on","brightness":128}}'
    )
    assert node.led == Led("on", 128)
    assert node.last_result == CommandResult("set_led", ok=True)
    status = orjson.loads(node.status_payload())
    assert status["led"] == {"state": "on", "brightness": 128}
    assert (status["status"], status["last_command"], status["result"]) == (
        "online",
        "set_led",
        "ok",
    )


def test_iot_node_status_payload_layout() -> None:
    """The status message, with and without a command result."""
    plain = iot_node_status_payload(
        node_id="node_01", timestamp_s=1, uptime_s=2, wifi_rssi=-60, led=Led()
    )
    assert plain == (
        b'{"node_id":"node_01","status":"online","timestamp":1,"uptime":2,"wifi_rssi":-60,'
        b'"led":{"state":"off","brightness":0}}'
    )
    failed = iot_node_status_payload(
        node_id="node_01",
        timestamp_s=1,
        uptime_s=2,
        wifi_rssi=-60,
        led=Led(),
        last=CommandResult("reboot", ok=False, error="unknown command 'reboot'"),
    )
    assert failed.endswith(
        b'"last_command":"reboot","result":"error","error":"unknown command \'reboot\'"}'
    )


@pytest.mark.parametrize(
    ("payload", "led", "ok"),
    [
        (b'{"command":"set_led","params":{"state":"on"}}', Led("on", 10), True),
        (b'{"command":"set_led","params":{"brightness":300}}', Led("off", 255), True),
        (b'{"command":"set_led","params":{"brightness":-3}}', Led("off", 0), True),
        (b'{"command":"set_led","params":{"state":"blink"}}', Led("off", 10), False),
        (b'{"command":"set_led","params":{"brightness":"max"}}', Led("off", 10), False),
        (b'{"command":"set_led","params":[1]}', Led("off", 10), False),
        (b'{"command":"reboot"}', Led("off", 10), False),
    ],
)
def test_iot_node_command_parsing(payload: bytes, led: Led, ok: bool) -> None:
    """Partial params keep the rest; bad values and unknown commands fail without a change."""
    outcome = apply_iot_node_command(Led("off", 10), payload)
    assert outcome is not None
    assert outcome[0] == led
    assert outcome[1].ok is ok


@pytest.mark.parametrize("payload", [b"nope", b"[]", b'{"params":{}}', b'{"command":5}'])
def test_iot_node_ignores_what_names_no_command(payload: bytes) -> None:
    """Without a command name there is nothing to reply about."""
    assert apply_iot_node_command(Led(), payload) is None


# --- sensor (Go/ClickHouse window-control stack) -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"), [(25.5, b"25.5"), (25.46, b"25.5"), (21.0, b"21.0"), (-0.04, b"0.0")]
)
def test_sensor_numbers_are_raw_text_with_one_decimal(value: float, text: bytes) -> None:
    """`sensor/{id}/temperature` and `/humidity` carry the number as text, nothing else."""
    assert sensor_number_payload(value) == text


def test_a_tone_of_amplitude_a_has_rms_a_over_root_two() -> None:
    """A 1 kHz sine of peak A over whole periods: RMS A/sqrt(2) to within int16 rounding."""
    samples = tone(amplitude=10_000, frequency_hz=1_000, duration_s=2.0)
    assert len(samples) == 32_000
    assert rms(samples) == pytest.approx(10_000 / math.sqrt(2), abs=0.5)
    assert max(samples) == 10_000


def test_ambient_sound_has_the_level_asked_for() -> None:
    """Hum plus noise at RMS L measures L (noise: within 2 % over 32,000 samples)."""
    for level in (100.0, 1_000.0, 8_000.0):
        samples = ambient_sound(level_rms=level, rng=random.Random(7))
        assert rms(samples) == pytest.approx(level, rel=0.02)


def test_wav_is_2_s_of_16_khz_mono_16_bit_pcm() -> None:
    """The WAV reads back with stdlib `wave` as written, samples included."""
    samples = tone(amplitude=1_000, frequency_hz=440)
    data = wav_bytes(samples)
    assert len(data) == WAV_BYTES
    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == AUDIO_SAMPLE_RATE_HZ
        assert wav.getnframes() == 32_000
        frames = wav.readframes(wav.getnframes())
    assert array.array("h", frames) == samples


def test_audio_payload_layout_and_size() -> None:
    """`{"data":"<base64 WAV>","sample_rate":16000,"duration":2.0}`, ~85 KB."""
    data = wav_bytes(ambient_sound(level_rms=500.0, rng=random.Random(1)))
    payload = sensor_audio_payload(data)
    assert payload.startswith(b'{"data":"UklGR')  # base64 of "RIFF"
    assert payload.endswith(b'","sample_rate":16000,"duration":2.0}')
    decoded = orjson.loads(payload)
    assert list(decoded) == ["data", "sample_rate", "duration"]
    assert (type(decoded["sample_rate"]), type(decoded["duration"])) == (int, float)
    assert base64.b64decode(decoded["data"], validate=True) == data
    assert 85_000 < len(payload) < 86_000


def test_window_sensor_messages_of_one_cycle() -> None:
    """Temperature, humidity (text) and audio (JSON) on `sensor/{id}/...`; control subscribed."""
    sensor = WindowSensor(endpoint=NOWHERE, device_id="window-01", seed=2)
    assert sensor.will is None  # presence is last-seen in that stack
    assert sensor.control_topic == "window/window-01/control"
    [(t_topic, t_payload), (h_topic, h_payload), (a_topic, a_payload)] = sensor.next_messages()
    assert (t_topic, h_topic, a_topic) == (
        "sensor/window-01/temperature",
        "sensor/window-01/humidity",
        "sensor/window-01/audio",
    )
    assert re.fullmatch(rb"-?\d+\.\d", t_payload)
    assert re.fullmatch(rb"\d+\.\d", h_payload)
    audio = base64.b64decode(orjson.loads(a_payload)["data"])
    with wave.open(io.BytesIO(audio)) as wav:
        level = rms(array.array("h", wav.readframes(wav.getnframes())))
    assert sensor.last_level_dbfs is not None
    expected = 32_767 * 10 ** (sensor.last_level_dbfs / 20)
    assert level == pytest.approx(expected, rel=0.05)


def test_window_control_moves_the_window_at_motor_speed() -> None:
    """A control message sets the target; the window gets there at 10 %/s, clamped to 0-100."""
    now_s = [100.0]
    sensor = WindowSensor(endpoint=NOWHERE, device_id="window-02", clock_s=lambda: now_s[0])
    control = {
        "device_id": "window-02",
        "timestamp": 1_704_844_800,
        "position": 60,
        "confidence": 0.87,
        "features_used": ["temperature", "humidity", "sound_volume"],
    }
    sensor.on_message(sensor.control_topic, orjson.dumps(control))
    assert sensor.window_target == 60
    assert sensor.window_position() == 0
    now_s[0] += 3.0
    assert sensor.window_position() == pytest.approx(30.0)
    now_s[0] += 10.0
    assert sensor.window_position() == 60
    sensor.on_message(sensor.control_topic, b'{"position": 140}')
    assert sensor.window_target == 100
    sensor.on_message(sensor.control_topic, b'{"position": "open"}')
    sensor.on_message(sensor.control_topic, b"garbage")
    assert (sensor.controls_applied, sensor.controls_ignored) == (2, 2)


def test_window_motor_reverses_from_where_it_is() -> None:
    """A new target mid-travel starts from the current position, not the old start."""
    motor = WindowMotor(position_pct=0.0, speed_pct_per_s=10.0, now_s=0.0)
    motor.move_to(100.0, now_s=0.0)
    motor.move_to(0.0, now_s=5.0)  # at 50 %
    assert motor.position(7.0) == pytest.approx(30.0)
    assert motor.position(60.0) == 0.0


@pytest.mark.parametrize(
    ("payload", "position"),
    [(b'{"position":55}', 55.0), (b'{"position":-1}', 0.0), (b'{"position":null}', None)],
)
def test_parse_window_control(payload: bytes, position: float | None) -> None:
    """Position clamped to 0-100; anything without a numeric position is ignored."""
    assert parse_window_control(payload) == position


def test_a_closed_window_makes_the_recording_quieter() -> None:
    """Closed takes CLOSED_WINDOW_ATTENUATION_DB off the street level; open takes nothing."""
    assert heard_level_dbfs(-30.0, 100.0) == -30.0
    assert heard_level_dbfs(-30.0, 0.0) == -30.0 - CLOSED_WINDOW_ATTENUATION_DB


# --- fleet and CLI -------------------------------------------------------------------------------


def test_mixed_cycles_through_every_kind() -> None:
    """Any prefix of five devices of a mixed fleet has one of each kind."""
    assert DEVICE_KINDS == ("native", "readings", "fastapi", "iot-node", "sensor")
    assert SIM_PROFILES[-1] == "mixed"
    assert SIM_PROFILES[:-1] == DEVICE_KINDS
    kinds = _kinds("mixed", 12)
    for start in range(len(kinds) - 4):
        assert sorted(kinds[start : start + 5]) == sorted(DEVICE_KINDS)
    assert _kinds("iot-node", 2) == ["iot-node", "iot-node"]


def test_mixed_fleet_ids_and_periods() -> None:
    """Ids per kind; native and readings follow the rate, the others their firmware's periods."""
    with ThreadPoolExecutor(max_workers=1) as teardown:
        fleet = _build_fleet(
            endpoint=NOWHERE,
            profile="mixed",
            devices=10,
            period_s=0.25,
            seed=0,
            counter=PublishCounter(),
            teardown=teardown,
            readings_temperature=False,
        )
        jobs = _jobs(fleet, 0.25, PublishCounter())
    ids = [getattr(device, "device_id", None) or getattr(device, "mac", None) for device in fleet]
    assert ids == [
        "sim-0001",
        "3C:E9:0E:00:00:01",
        "3CE90E100001",
        "01",
        "window-01",
        "sim-0002",
        "3C:E9:0E:00:00:02",
        "3CE90E100002",
        "02",
        "window-02",
    ]
    assert _describe(fleet) == "2 native, 2 readings, 2 fastapi, 2 iot-node, 2 sensor"
    periods = sorted({job.period_s for job in jobs})
    assert periods == [0.25, 1.0, 3.0, 10.0, 30.0]
    # The iot-node's status goes out on connect, so its first scheduled run is a period later;
    # the fastapi heartbeat does not (its sketch sends a status message on connect instead).
    assert min(job.first_s for job in jobs if job.period_s == 30.0) >= 30.0
    assert max(job.first_s for job in jobs if job.period_s == 3.0) < 3.0


def test_cli_sim_refuses_an_unknown_profile_listing_the_choices() -> None:
    """`fieldhub sim --profile bogus` exits 2 naming every profile."""
    result = CliRunner().invoke(app, ["sim", "--profile", "bogus"])
    assert result.exit_code == 2
    for profile in SIM_PROFILES:
        assert profile in result.output
