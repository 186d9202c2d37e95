"""Pure tests of the simulator's payload builders and sensor models (no broker)."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldhub.sim import (
    BoundedWalk,
    NativeTelemetry,
    SensorModel,
    mac_for_index,
    native_telemetry_payload,
    readings_gateway_payload,
    readings_temperature_payload,
    rssi_percent,
)
from fieldhub.sim.payloads import (
    HUMIDITY_MAX_PCT,
    HUMIDITY_MIN_PCT,
    RSSI_MAX_DBM,
    RSSI_MIN_DBM,
    TEMPERATURE_MAX_C,
    TEMPERATURE_MIN_C,
)

FIRMWARE_MAC = "3C:E9:0E:72:12:4C"
GATEWAY_LAYOUT = re.compile(rb'^\{"macAddress":"[0-9A-F:]{17}", "timestamp":\d+, "rssi":\d+\}$')

uptimes = st.integers(min_value=0, max_value=2**53)
percents = st.integers(min_value=0, max_value=100)
seeds = st.integers(min_value=0, max_value=2**32)


def test_gateway_payload_matches_the_firmware_bytes() -> None:
    """The gateway payload is byte for byte the firmware's logged one (docs/protocol.md)."""
    payload = readings_gateway_payload(FIRMWARE_MAC, 1835587, 65)
    assert payload == b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":1835587, "rssi":65}'


def test_gateway_payload_matches_the_design_example() -> None:
    """The example of the stack's presentation (timestamp 93387) comes out exactly too."""
    payload = readings_gateway_payload(FIRMWARE_MAC, 93387, 65)
    assert payload == b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":93387, "rssi":65}'


@given(index=st.integers(min_value=1, max_value=0xFFFFFF), uptime=uptimes, rssi=percents)
def test_gateway_payload_is_json_in_the_firmware_layout(index: int, uptime: int, rssi: int) -> None:
    """Any gateway payload keeps the layout and parses back to its values."""
    mac = mac_for_index(index)
    payload = readings_gateway_payload(mac, uptime, rssi)
    assert GATEWAY_LAYOUT.match(payload)
    assert json.loads(payload) == {"macAddress": mac, "timestamp": uptime, "rssi": rssi}


def test_temperature_payload_has_one_decimal() -> None:
    """The temperature payload uses the gateway layout with one decimal."""
    payload = readings_temperature_payload(FIRMWARE_MAC, 93387, 21.43)
    assert payload == b'{"macAddress":"3C:E9:0E:72:12:4C", "timestamp":93387, "temperature":21.4}'
    assert readings_temperature_payload(FIRMWARE_MAC, 1, 21.0).endswith(b'"temperature":21.0}')


def test_temperature_payload_never_says_negative_zero() -> None:
    """A temperature that rounds to zero from below is written 0.0."""
    assert readings_temperature_payload(FIRMWARE_MAC, 1, -0.04).endswith(b'"temperature":0.0}')


@pytest.mark.parametrize(
    ("mac", "uptime", "rssi"),
    [
        ("3c:e9:0e:72:12:4c", 1, 50),  # lower case: the firmware prints upper case
        ("3C-E9-0E-72-12-4C", 1, 50),
        ("3CE90E72124C", 1, 50),
        (FIRMWARE_MAC, -1, 50),
        (FIRMWARE_MAC, 1, 101),
        (FIRMWARE_MAC, 1, -1),
    ],
)
def test_gateway_payload_refuses_what_the_firmware_never_sends(
    mac: str, uptime: int, rssi: int
) -> None:
    """Non-canonical MACs, negative uptimes and out-of-range percentages raise ValueError."""
    with pytest.raises(ValueError, match=r"MAC|uptime|rssi"):
        readings_gateway_payload(mac, uptime, rssi)


@pytest.mark.parametrize(
    ("dbm", "percent"),
    [(-90.0, 0), (-30.0, 100), (-51.0, 65), (-60.0, 50), (-89.9, 0), (-30.1, 100)],
)
def test_rssi_percent_maps_the_firmware_range_linearly(dbm: float, percent: int) -> None:
    """-90 dBm is 0 %, -30 dBm is 100 %, and the firmware's logged -51 dBm is 65 %."""
    assert rssi_percent(dbm) == percent


@given(dbm=st.floats(allow_nan=False, allow_infinity=True))
def test_rssi_percent_is_clamped(dbm: float) -> None:
    """Any signal maps into 0..100; below -90 dBm is 0 and above -30 dBm is 100."""
    percent = rssi_percent(dbm)
    assert 0 <= percent <= 100
    if dbm <= -90:
        assert percent == 0
    if dbm >= -30:
        assert percent == 100


@given(a=st.floats(-200, 50), b=st.floats(-200, 50))
def test_rssi_percent_is_monotonic(a: float, b: float) -> None:
    """A stronger signal never maps to a lower percentage."""
    low, high = sorted((a, b))
    assert rssi_percent(low) <= rssi_percent(high)


def test_rssi_percent_refuses_nan() -> None:
    """NaN is not a signal strength."""
    with pytest.raises(ValueError, match="NaN"):
        rssi_percent(float("nan"))


def test_mac_for_index_is_canonical_and_deterministic() -> None:
    """Index 1 is 3C:E9:0E:00:00:01; indexes fill the three NIC bytes; 0 and 2**24 are refused."""
    assert mac_for_index(1) == "3C:E9:0E:00:00:01"
    assert mac_for_index(0x12AB3C) == "3C:E9:0E:12:AB:3C"
    for bad in (0, 0x1000000):
        with pytest.raises(ValueError, match="MAC index"):
            mac_for_index(bad)


def test_native_payload_is_compact_json() -> None:
    """Native telemetry is compact JSON with the v/ts/seq envelope."""
    payload = native_telemetry_payload(
        ts_ms=1_763_900_000_123, seq=7, temperature=21.53, humidity=45.1, rssi=-61
    )
    assert payload == (
        b'{"v":1,"ts":1763900000123,"seq":7,"temperature":21.53,"humidity":45.1,"rssi":-61}'
    )


def test_native_payload_refuses_non_finite_numbers() -> None:
    """NaN would become null in JSON and reach ingest as a missing reading."""
    with pytest.raises(ValueError, match="temperature"):
        native_telemetry_payload(ts_ms=1, seq=0, temperature=float("nan"), humidity=50, rssi=-60)


@given(clock=st.lists(st.integers(min_value=0, max_value=2**45), min_size=1, max_size=50))
def test_native_telemetry_ts_and_seq_strictly_increase(clock: list[int]) -> None:
    """seq counts from 0 and ts strictly increases even when the clock stalls or steps back."""
    ticks: Iterator[int] = iter(clock)
    source = NativeTelemetry(seed=3, clock_ms=lambda: next(ticks))
    decoded = [orjson.loads(source.next_payload()) for _ in clock]
    assert [message["seq"] for message in decoded] == list(range(len(clock)))
    stamps = [message["ts"] for message in decoded]
    assert all(later > earlier for earlier, later in itertools.pairwise(stamps))
    assert all(stamp >= tick for stamp, tick in zip(stamps, clock, strict=True))
    for message in decoded:
        assert set(message) == {
            "v",
            "ts",
            "seq",
            "temperature",
            "humidity",
            "rssi",
            "window_position",
        }
        assert message["v"] == 1


@given(seed=seeds)
def test_sensor_model_is_deterministic_for_a_seed(seed: int) -> None:
    """Two models with one seed produce the same readings."""
    first, second = SensorModel(seed), SensorModel(seed)
    assert [first.sample() for _ in range(50)] == [second.sample() for _ in range(50)]


def test_sensor_models_with_different_seeds_differ() -> None:
    """Different seeds give devices different lines on a chart."""
    assert [SensorModel(0).sample() for _ in range(5)] != [
        SensorModel(1).sample() for _ in range(5)
    ]


@given(seed=seeds)
def test_sensor_model_stays_in_bounds(seed: int) -> None:
    """Temperature, humidity and RSSI stay within their realistic ranges over a long run."""
    model = SensorModel(seed)
    for _ in range(500):
        sample = model.sample()
        assert TEMPERATURE_MIN_C <= sample.temperature <= TEMPERATURE_MAX_C
        assert HUMIDITY_MIN_PCT <= sample.humidity <= HUMIDITY_MAX_PCT
        assert RSSI_MIN_DBM <= sample.rssi_dbm <= RSSI_MAX_DBM


@given(seed=seeds, step=st.floats(min_value=0, max_value=1e6), reversion=st.floats(0, 1))
def test_bounded_walk_never_leaves_its_bounds(seed: int, step: float, reversion: float) -> None:
    """Even absurd steps are clamped to the walk's bounds."""
    walk = BoundedWalk(
        rng=random.Random(seed), center=21.0, low=17.0, high=25.0, step=step, reversion=reversion
    )
    assert all(17.0 <= walk.next() <= 25.0 for _ in range(200))


def test_sensor_model_moves_around_its_centre() -> None:
    """The walk actually wanders (a flat line would make a dull demo) and stays near 21 C."""
    model = SensorModel(42)
    temperatures = [model.sample().temperature for _ in range(3_600)]
    assert len(set(temperatures)) > 100
    assert 19.0 < sum(temperatures) / len(temperatures) < 23.0
