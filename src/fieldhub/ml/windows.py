"""A device's window means: what the loop decides from and what a manual command is labelled
with (the backbone's GetCurrentWindowAggregates: the mean of each feature over a window)."""

from __future__ import annotations

from dataclasses import dataclass

from fieldhub.clock import US_PER_S
from fieldhub.ml.trigger import FEATURES
from fieldhub.store.base import Store

# Readings read for one device's window (a 120 s window of 1-s readings of 3 features is 360).
WINDOW_READINGS = 10_000


@dataclass(frozen=True, slots=True)
class WindowMeans:
    """Each feature's mean over the window (None: no reading) and its newest reading's age."""

    values: dict[str, float | None]
    ages_s: dict[str, float | None]


async def window_means(store: Store, device_id: str, end_us: int, window_s: float) -> WindowMeans:
    """The means of the device's features over the `window_s` up to `end_us`."""
    rows = await store.query_readings(
        device_id,
        metrics=list(FEATURES),
        start_us=end_us - round(window_s * US_PER_S),
        end_us=end_us + 1,
        limit=WINDOW_READINGS,
        after=None,
        descending=False,
    )
    seen: dict[str, list[float]] = {name: [] for name in FEATURES}
    newest: dict[str, int] = {}
    for row in rows:
        seen[row.metric].append(row.value)
        newest[row.metric] = max(newest.get(row.metric, row.ts_us), row.ts_us)
    return WindowMeans(
        values={name: (sum(v) / len(v) if v else None) for name, v in seen.items()},
        ages_s={
            name: (end_us - newest[name]) / US_PER_S if name in newest else None
            for name in FEATURES
        },
    )
