"""The window model's inputs: which readings, their valid ranges, and how they are scaled.

Pure: no torch, no onnxruntime. The model sees three readings of a `sensor`-profile device, in
the order of `FEATURES` everywhere (the ONNX input's columns, the manifest's `features`, golden
rows). Each is checked against a plausible physical range before it is used (`check`), then
scaled by the training data's 10th and 90th percentiles to 0..1 and clipped (`Scaler`): the
clip keeps a sensor glitch inside the range the model was trained on instead of extrapolating.

`sound_volume` is fieldhub's sound level (protocol/audio.py): the RMS of the clip after removing
the mean, in dBFS, floor -120. Its values are negative; the old stack's ML service range-checked
sound at 0..120 and so refused every real request (docs/ml-model.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fieldhub.errors import Invalid

FEATURES: tuple[str, str, str] = ("temperature", "humidity", "sound_volume")


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One input: its reading name, unit and the range a real sensor can report."""

    name: str
    unit: str
    low: float
    high: float


# Ranges a reading must lie in to be used. Temperature: what a DHT22/BME280 near a window can
# read in any climate we expect (their own limits are -40..80 °C; beyond -50..60 it is a fault).
# Humidity: relative humidity, by definition. Sound: dBFS is <= 0 by definition and fieldhub's
# floor for silence is -120 (fieldhub_node.audio.FLOOR_DBFS).
SPECS: tuple[FeatureSpec, FeatureSpec, FeatureSpec] = (
    FeatureSpec("temperature", "°C", -50.0, 60.0),
    FeatureSpec("humidity", "%", 0.0, 100.0),
    FeatureSpec("sound_volume", "dBFS", -120.0, 0.0),
)
SPEC_BY_NAME: dict[str, FeatureSpec] = {spec.name: spec for spec in SPECS}


def check(values: Mapping[str, float | None]) -> str | None:
    """None when `values` can be fed to the model, else a reason code for the first failing
    feature in `FEATURES` order: `missing:<f>` (absent or None), `non_finite:<f>` (NaN, ±inf,
    or not a number) or `out_of_range:<f>` (outside its `FeatureSpec` range, ends included)."""
    for spec in SPECS:
        value = values.get(spec.name)
        if value is None:
            return f"missing:{spec.name}"
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return f"non_finite:{spec.name}"
        if not spec.low <= value <= spec.high:
            return f"out_of_range:{spec.name}"
    return None


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default `linear` method)."""
    position = (len(sorted_values) - 1) * fraction
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    weight = position - below
    return sorted_values[below] * (1.0 - weight) + sorted_values[above] * weight


@dataclass(frozen=True, slots=True)
class Scaler:
    """Per feature, in `FEATURES` order, the training data's 10th and 90th percentiles: `scale`
    maps p10 to 0 and p90 to 1, linearly, and clips to 0..1.

    Percentiles rather than min/max: one outlier in the training data would otherwise squeeze
    every ordinary value into a sliver of the range."""

    p10: tuple[float, float, float]
    p90: tuple[float, float, float]

    def __post_init__(self) -> None:
        for spec, low, high in zip(SPECS, self.p10, self.p90, strict=True):
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise Invalid(
                    f"scaler for {spec.name}: p10 ({low}) must be finite and below p90 ({high})",
                    code="invalid_model_scaler",
                )

    @classmethod
    def fit(cls, rows: Sequence[Sequence[float]]) -> Scaler:
        """The percentiles of `rows` (raw values in `FEATURES` order); Invalid when a feature
        does not vary (p10 == p90), since the model could not tell its values apart."""
        if not rows:
            raise Invalid("no rows to fit a scaler on", code="invalid_model_scaler")
        columns = [sorted(float(row[i]) for row in rows) for i in range(len(FEATURES))]
        p10 = tuple(_percentile(column, 0.1) for column in columns)
        p90 = tuple(_percentile(column, 0.9) for column in columns)
        return cls(p10=(p10[0], p10[1], p10[2]), p90=(p90[0], p90[1], p90[2]))

    def scale_row(self, row: Sequence[float]) -> list[float]:
        """Raw values in `FEATURES` order -> scaled, clipped values."""
        out = []
        for value, low, high in zip(row, self.p10, self.p90, strict=True):
            scaled = (float(value) - low) / (high - low)
            out.append(min(1.0, max(0.0, scaled)))
        return out

    def scale(self, values: Mapping[str, float]) -> list[float]:
        """Raw readings by name -> the model's input row (scaled 0..1, clipped)."""
        return self.scale_row([values[name] for name in FEATURES])

    def to_json(self) -> list[dict[str, Any]]:
        """The manifest's `features` list: each spec with its p10 and p90."""
        return [
            {
                "name": spec.name,
                "unit": spec.unit,
                "low": spec.low,
                "high": spec.high,
                "p10": low,
                "p90": high,
            }
            for spec, low, high in zip(SPECS, self.p10, self.p90, strict=True)
        ]

    @classmethod
    def from_json(cls, data: object) -> Scaler:
        """Reads `to_json`'s list back; Invalid naming the entry when it is not the three
        features in order with this module's units and ranges."""
        if not isinstance(data, list) or len(data) != len(FEATURES):
            raise Invalid(
                f"features must be a list of {len(FEATURES)} entries {list(FEATURES)}",
                code="invalid_model_scaler",
            )
        p10: list[float] = []
        p90: list[float] = []
        for index, (spec, entry) in enumerate(zip(SPECS, data, strict=True)):
            where = f"features[{index}]"
            if not isinstance(entry, dict):
                raise Invalid(f"{where} must be an object", code="invalid_model_scaler")
            if set(entry) != {"name", "unit", "low", "high", "p10", "p90"}:
                raise Invalid(
                    f"{where} must have exactly name, unit, low, high, p10, p90",
                    code="invalid_model_scaler",
                )
            if entry["name"] != spec.name or entry["unit"] != spec.unit:
                raise Invalid(
                    f"{where} must be {spec.name} in {spec.unit}, got {entry['name']!r} "
                    f"in {entry['unit']!r}",
                    code="invalid_model_scaler",
                )
            for key, expected in (("low", spec.low), ("high", spec.high)):
                if entry[key] != expected:
                    raise Invalid(
                        f"{where}.{key} must be {expected}, got {entry[key]!r}",
                        code="invalid_model_scaler",
                    )
            for key, target in (("p10", p10), ("p90", p90)):
                value = entry[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise Invalid(f"{where}.{key} must be a number", code="invalid_model_scaler")
                target.append(float(value))
        return cls(p10=(p10[0], p10[1], p10[2]), p90=(p90[0], p90[1], p90[2]))
