"""The synthetic comfort policy has the properties docs/ml-model.md states, and its data set is
deterministic and realistic."""

from __future__ import annotations

import statistics

import pytest

from fieldhub.ml.features import FEATURES, check
from fieldhub.ml.policy import (
    AIRING_MAX_PCT,
    COMFORT_HIGH_C,
    COMFORT_LOW_C,
    FULL_OPEN_C,
    LOUD_CLOSE_FRACTION,
    LOUD_DBFS,
    OPEN_FROM_C,
    QUIET_DBFS,
    comfort_position,
    synthetic_dataset,
)

HUMIDITIES = (10.0, 50.0, 70.0, 100.0)
SOUNDS = (-120.0, -40.0, -25.0, 0.0)


def test_comfort_band_constants() -> None:
    """The band the loop's tests rely on: 20-24 °C, opening from its middle (22 °C), fully
    open from 28 °C."""
    assert (COMFORT_LOW_C, COMFORT_HIGH_C) == (20.0, 24.0)
    assert (OPEN_FROM_C, FULL_OPEN_C) == (22.0, 28.0)
    assert COMFORT_LOW_C < OPEN_FROM_C < COMFORT_HIGH_C < FULL_OPEN_C


@pytest.mark.parametrize("temperature", [-50.0, 0.0, 15.0, 19.9])
def test_closed_when_cold(temperature: float) -> None:
    """Below the comfort band the window is closed, whatever the humidity or sound."""
    for humidity in HUMIDITIES:
        for sound in SOUNDS:
            assert comfort_position(temperature, humidity, sound) == 0.0


@pytest.mark.parametrize("temperature", [FULL_OPEN_C, 33.0, 60.0])
def test_open_when_hot_and_quiet(temperature: float) -> None:
    """From FULL_OPEN_C up, on a quiet day, fully open."""
    for humidity in HUMIDITIES:
        assert comfort_position(temperature, humidity, QUIET_DBFS) == 100.0


def test_opens_with_heat() -> None:
    """From the band's middle up the opening grows with temperature (never shrinks)."""
    positions = [comfort_position(20.0 + 0.5 * i, 50.0, -40.0) for i in range(25)]
    assert positions == sorted(positions)
    assert comfort_position(OPEN_FROM_C, 50.0, -40.0) == 0.0
    assert comfort_position(COMFORT_HIGH_C, 50.0, -40.0) == pytest.approx(100 / 3)
    assert comfort_position(25.0, 50.0, -40.0) == pytest.approx(50.0)


def test_humidity_airs_inside_the_band() -> None:
    """Below the heat ramp only humidity opens the window, up to AIRING_MAX_PCT at the band's
    top; on the ramp it adds to the heat's opening."""
    assert comfort_position(21.0, 50.0, -40.0) == 0.0
    assert 0.0 < comfort_position(21.0, 75.0, -40.0) < comfort_position(21.0, 90.0, -40.0)
    assert comfort_position(OPEN_FROM_C, 90.0, -40.0) == pytest.approx(AIRING_MAX_PCT / 2)
    dry = comfort_position(COMFORT_HIGH_C, 50.0, -40.0)
    assert comfort_position(COMFORT_HIGH_C, 90.0, -40.0) == pytest.approx(dry + AIRING_MAX_PCT)


@pytest.mark.parametrize("temperature", [23.0, 26.0, 28.0, 35.0])
def test_less_open_when_loud(temperature: float) -> None:
    """A loud street closes the window again: louder is never more open, and fully loud keeps
    1 - LOUD_CLOSE_FRACTION of the quiet opening."""
    quiet = comfort_position(temperature, 80.0, QUIET_DBFS)
    assert quiet > 0.0
    levels = [QUIET_DBFS + i for i in range(40)]
    positions = [comfort_position(temperature, 80.0, level) for level in levels]
    assert positions == sorted(positions, reverse=True)
    assert comfort_position(temperature, 80.0, -25.0) < quiet
    loud = comfort_position(temperature, 80.0, LOUD_DBFS)
    assert loud == pytest.approx(quiet * (1.0 - LOUD_CLOSE_FRACTION))


def test_positions_bounded() -> None:
    """Every position is within 0..100."""
    for t in range(-50, 61, 2):
        for h in range(0, 101, 10):
            for s in range(-120, 1, 10):
                assert 0.0 <= comfort_position(float(t), float(h), float(s)) <= 100.0


def test_dataset_is_deterministic_for_a_seed() -> None:
    """The same (n, seed) gives the same examples; another seed others."""
    assert synthetic_dataset(500, 7) == synthetic_dataset(500, 7)
    assert synthetic_dataset(500, 7) != synthetic_dataset(500, 8)
    assert synthetic_dataset(0, 7) == []


def test_dataset_is_realistic_and_noisy() -> None:
    """Readings are in range and centred where a room near a street is; labels are 0..100,
    mostly near the policy, sometimes far (overrides)."""
    data = synthetic_dataset(5_000, 11)
    for t, h, s, label in data:
        assert check(dict(zip(FEATURES, (t, h, s), strict=True))) is None
        assert 0.0 <= label <= 100.0
    temperatures = [row[0] for row in data]
    sounds = [row[2] for row in data]
    assert 22.0 < statistics.mean(temperatures) < 24.0
    assert -40.0 < statistics.median(sounds) < -25.0
    gaps = [abs(label - comfort_position(t, h, s)) for t, h, s, label in data]
    assert 0.5 < statistics.mean(gaps) < 8.0
    assert 0.01 < sum(gap > 30 for gap in gaps) / len(gaps) < 0.05
