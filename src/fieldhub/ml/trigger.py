"""When the window loop decides on its own: the window-control backbone's rule, exactly.

From `mqtt_backbone/internal/services/inference_service.go` (public repository
ji-just-ji/ESP32): every `interval_s` (60 s), for each device, the mean of each feature over the
last `window_s` (120 s). The first time (no decision yet), decide at once (`first_inference`).
When the window at the last decision had no data, decide (`missing_last_data`). Otherwise

    z = (this window's mean - the last decision's window mean) / the feature's standard
        deviation over the last `baseline_s` (7 days), 0 when that deviation is 0,

and decide when any |z| >= `z_threshold` (1.5); the reason names each feature that crossed, in
the order temperature, humidity, sound, joined by commas: `temperature_zscore`,
`humidity_zscore`, `volume_zscore`. A window with no data at all is skipped.

The backbone skips the z-scores of a feature without data in a window (its SQL averages give
0 over no rows, which we do not copy): here a feature missing from either window gives no z
(None) and cannot trigger, while the others still can.

Pure: the means and deviations come in, a verdict goes out; `fieldhub.ml.loop` reads them from
the store (the deviation from the minute rollups, docs/ml.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

FEATURES = ("temperature", "humidity", "sound_volume")
# The backbone's names for each feature's crossing, in its order.
Z_REASONS = {
    "temperature": "temperature_zscore",
    "humidity": "humidity_zscore",
    "sound_volume": "volume_zscore",
}

Means = Mapping[str, float | None]


class TriggerParams(BaseModel):
    """The backbone's DefaultInferenceServiceConfig; settable per device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Off where a backbone of the old stack still asks (its requests are still answered).
    enabled: bool = True
    interval_s: float = Field(default=60.0, ge=1, le=86_400)
    window_s: float = Field(default=120.0, ge=1, le=86_400)
    baseline_s: float = Field(default=7 * 86_400.0, ge=60, le=90 * 86_400)
    z_threshold: float = Field(default=1.5, gt=0, le=100)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether to decide now, why, and the z-scores (None: not computed)."""

    fire: bool
    reason: str
    zscores: dict[str, float | None]


def zscore(current: float | None, last: float | None, std: float | None) -> float | None:
    """(current - last) / std; 0 for a zero (or unknown) deviation, as the backbone;
    None when either mean is missing."""
    if current is None or last is None:
        return None
    if not std:
        return 0.0
    return (current - last) / std


def evaluate(
    current: Means,
    last: Means | None,
    stds: Mapping[str, float | None],
    params: TriggerParams,
) -> Verdict:
    """The backbone's `checkDevice` for one device: `current` this window's means, `last` the
    window means of its last decision (None: it never had one), `stds` each feature's deviation
    over the baseline."""
    no_z: dict[str, float | None] = dict.fromkeys(FEATURES)
    if all(current.get(name) is None for name in FEATURES):
        return Verdict(False, "no_current_data", no_z)
    if last is None:
        return Verdict(True, "first_inference", no_z)
    if all(last.get(name) is None for name in FEATURES):
        return Verdict(True, "missing_last_data", no_z)
    zscores = {name: zscore(current.get(name), last.get(name), stds.get(name)) for name in FEATURES}
    crossed = [
        Z_REASONS[name]
        for name in FEATURES
        if (z := zscores[name]) is not None and abs(z) >= params.z_threshold
    ]
    return Verdict(bool(crossed), ",".join(crossed), zscores)
