"""The model's inputs: range checks with reason codes, and percentile scaling with a clip."""

from __future__ import annotations

import math

import pytest

from fieldhub.errors import Invalid
from fieldhub.ml.features import FEATURES, SPECS, Scaler, check

GOOD = {"temperature": 22.5, "humidity": 45.0, "sound_volume": -31.2}
SCALER = Scaler(p10=(15.0, 30.0, -60.0), p90=(31.0, 80.0, -20.0))


def test_features_order_and_ranges() -> None:
    """The three features in the contract's order, with their physical ranges."""
    assert FEATURES == ("temperature", "humidity", "sound_volume")
    assert [(s.name, s.unit, s.low, s.high) for s in SPECS] == [
        ("temperature", "°C", -50.0, 60.0),
        ("humidity", "%", 0.0, 100.0),
        ("sound_volume", "dBFS", -120.0, 0.0),
    ]


def test_check_accepts_usable_values_and_range_ends() -> None:
    """In-range readings, ends included, are usable; extra keys are ignored."""
    assert check(GOOD) is None
    assert check({"temperature": -50.0, "humidity": 100.0, "sound_volume": -120.0}) is None
    assert check({"temperature": 60, "humidity": 0, "sound_volume": 0, "rssi": -70}) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"temperature": None}, "missing:temperature"),
        ({"humidity": math.nan}, "non_finite:humidity"),
        ({"sound_volume": -math.inf}, "non_finite:sound_volume"),
        ({"temperature": 60.1}, "out_of_range:temperature"),
        ({"humidity": -0.1}, "out_of_range:humidity"),
        # The old ML service's 0..120 "dB": a positive level is not dBFS.
        ({"sound_volume": 45.0}, "out_of_range:sound_volume"),
        ({"sound_volume": -120.5}, "out_of_range:sound_volume"),
        ({"humidity": True}, "non_finite:humidity"),
    ],
)
def test_check_reasons(change: dict[str, float | None], reason: str) -> None:
    """Each failure has its reason code naming the feature."""
    assert check({**GOOD, **change}) == reason


def test_check_reports_first_failure_in_feature_order() -> None:
    """With several problems, the first feature in FEATURES order is named."""
    assert check({"sound_volume": 5.0, "humidity": math.nan}) == "missing:temperature"
    assert check({"temperature": 20.0, "sound_volume": 5.0}) == "missing:humidity"
    bad = {"temperature": 20.0, "humidity": 200.0, "sound_volume": math.nan}
    assert check(bad) == "out_of_range:humidity"


def test_scale_maps_p10_p90_to_0_1_and_clips() -> None:
    """p10 -> 0, p90 -> 1, linear between, clipped outside."""
    assert SCALER.scale({"temperature": 15.0, "humidity": 80.0, "sound_volume": -40.0}) == [
        0.0,
        1.0,
        0.5,
    ]
    assert SCALER.scale({"temperature": -50.0, "humidity": 100.0, "sound_volume": 0.0}) == [
        0.0,
        1.0,
        1.0,
    ]
    assert SCALER.scale_row([23.0, 55.0, -120.0]) == [0.5, 0.5, 0.0]


def test_scaler_fit_takes_percentiles() -> None:
    """fit gives numpy's linear-interpolated 10th and 90th percentiles."""
    rows = [(float(i), float(100 - i), -float(i)) for i in range(101)]
    scaler = Scaler.fit(rows)
    assert scaler.p10 == pytest.approx((10.0, 10.0, -90.0))
    assert scaler.p90 == pytest.approx((90.0, 90.0, -10.0))


def test_scaler_refuses_a_constant_feature() -> None:
    """A feature whose p10 equals its p90 cannot be scaled: Invalid naming it."""
    with pytest.raises(Invalid, match="humidity"):
        Scaler.fit([(float(i), 50.0, -30.0 - i) for i in range(20)])


def test_scaler_json_round_trip() -> None:
    """to_json lists each spec with its percentiles; from_json reads it back."""
    data = SCALER.to_json()
    assert data[2] == {
        "name": "sound_volume",
        "unit": "dBFS",
        "low": -120.0,
        "high": 0.0,
        "p10": -60.0,
        "p90": -20.0,
    }
    assert Scaler.from_json(data) == SCALER


@pytest.mark.parametrize(
    ("index", "key", "value", "message"),
    [
        (0, "name", "humidity", "features\\[0\\] must be temperature"),
        (2, "high", 120.0, "features\\[2\\].high must be 0.0"),
        (1, "p10", "30", "features\\[1\\].p10 must be a number"),
        (1, "p90", 20.0, "humidity"),
    ],
)
def test_scaler_from_json_names_the_bad_entry(
    index: int, key: str, value: object, message: str
) -> None:
    """A manifest's features list that is not this module's specs is Invalid, naming why."""
    data = SCALER.to_json()
    data[index][key] = value
    with pytest.raises(Invalid, match=message):
        Scaler.from_json(data)
