"""The window loop's own trigger is the backbone's rule (inference_service.go): first at once,
then only past |z| >= 1.5 against the last decision's window, per feature, with its reasons."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from fieldhub.ml.trigger import FEATURES, TriggerParams, evaluate, zscore

PARAMS = TriggerParams()
STDS = {"temperature": 0.8, "humidity": 4.0, "sound_volume": 6.0}
BASE = {"temperature": 22.0, "humidity": 50.0, "sound_volume": -45.0}


def test_the_first_window_with_data_decides_at_once() -> None:
    verdict = evaluate(BASE, None, STDS, PARAMS)
    assert (verdict.fire, verdict.reason) == (True, "first_inference")
    assert verdict.zscores == dict.fromkeys(FEATURES)


def test_no_data_now_skips_and_no_data_then_decides() -> None:
    empty = dict.fromkeys(FEATURES)
    assert evaluate(empty, None, STDS, PARAMS).fire is False
    assert evaluate(empty, BASE, STDS, PARAMS).reason == "no_current_data"
    verdict = evaluate(BASE, empty, STDS, PARAMS)
    assert (verdict.fire, verdict.reason) == (True, "missing_last_data")


def test_crossings_are_named_in_the_backbones_order() -> None:
    moved = {"temperature": 22.0 + 1.3, "humidity": 50.0 - 6.0, "sound_volume": -45.0 + 8.9}
    verdict = evaluate(moved, BASE, STDS, PARAMS)
    assert verdict.fire
    assert verdict.reason == "temperature_zscore,humidity_zscore"
    assert verdict.zscores["temperature"] == pytest.approx(1.625)
    assert verdict.zscores["humidity"] == pytest.approx(-1.5)
    assert verdict.zscores["sound_volume"] == pytest.approx(8.9 / 6.0)  # 1.483: below
    loud = {**BASE, "sound_volume": -45.0 + 9.0}
    assert evaluate(loud, BASE, STDS, PARAMS).reason == "volume_zscore"


def test_just_below_the_threshold_does_not_fire_and_a_zero_deviation_gives_zero() -> None:
    near = {**BASE, "temperature": 22.0 + 1.19}
    assert evaluate(near, BASE, STDS, PARAMS).fire is False
    flat = {**STDS, "temperature": 0.0}
    far = {**BASE, "temperature": 40.0}
    verdict = evaluate(far, BASE, flat, PARAMS)
    assert verdict.zscores["temperature"] == 0.0
    assert verdict.fire is False
    assert zscore(None, 1.0, 1.0) is None
    assert zscore(1.0, None, 1.0) is None


def test_a_feature_missing_in_one_window_cannot_trigger_but_the_others_can() -> None:
    partial = {**BASE, "humidity": None, "temperature": 30.0}
    verdict = evaluate(partial, BASE, STDS, PARAMS)
    assert verdict.zscores["humidity"] is None
    assert verdict.reason == "temperature_zscore"


def test_a_synthetic_series_fires_exactly_where_the_formula_says() -> None:
    """A drifting room, one window a minute: after the first decision it fires only when some
    feature's window mean has moved 1.5 deviations from the window of the last decision."""
    rng = random.Random(7)
    last: dict[str, float | None] | None = None
    fired = []
    for minute in range(240):
        current: dict[str, float | None] = {
            "temperature": 21.0 + 3.0 * math.sin(minute / 40) + rng.gauss(0, 0.1),
            "humidity": 50.0 + 0.05 * minute + rng.gauss(0, 0.5),
            "sound_volume": -50.0 + (15.0 if 100 <= minute < 110 else 0.0) + rng.gauss(0, 1),
        }
        verdict = evaluate(current, last, STDS, PARAMS)
        expected = last is None or any(
            abs((current[f] or 0.0) - (last[f] or 0.0)) / STDS[f] >= 1.5 for f in FEATURES
        )
        assert verdict.fire is expected, (minute, verdict)
        if verdict.fire:
            fired.append((minute, verdict.reason))
            last = current
    assert fired[0] == (0, "first_inference")
    assert (100, "volume_zscore") in fired  # the lorry outside
    assert 5 < len(fired) < 60


def test_parameters_are_validated() -> None:
    assert TriggerParams(z_threshold=2.0, window_s=60).z_threshold == 2.0
    with pytest.raises(ValidationError):
        TriggerParams(z_threshold=0)
    with pytest.raises(ValidationError):
        TriggerParams(interval_s=0.1)
    with pytest.raises(ValidationError):
        TriggerParams.model_validate({"threshold": 1.5})
