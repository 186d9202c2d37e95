"""What the store admits of what devices send: the bounds on what a message may create
(docs/limits.md). Pure: the writer's caches and the limits come in, verdicts go out.

- **New devices** come out of a budget (`InputLimits.new_devices_per_hour`, refilled
  continuously, the caller's token bucket): a message of a device the store does not know, past
  the budget, is refused (`device_limit`). A fleet that registers at once fits the hour's budget;
  random ids from a script do not grow the devices table, its caches or the dashboard.
- **Metrics per device**: a message that would give its device more than
  `max_metrics_per_device` series is refused (`metric_limit`); its raw bytes are kept as a dead
  letter, to be replayed after raising the limit.
- **Attributes** are metadata, so a message is never refused for them: a string value longer
  than `max_attribute_chars` is cut (ending in `…`), and keys past `max_attributes_per_device`
  are not stored (the write script applies that, `cap_attributes`). Both are counted.

The caches may lag behind another writer (ingest workers on PostgreSQL each have their own), so
with several writers the bounds hold per writer, not exactly in all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from fieldhub.protocol.messages import AttributeValue, Decoded
from fieldhub.store.plan import WriterCaches, cut

__all__ = ["MAX_ATTRIBUTES_PER_DEVICE", "Admission", "InputLimits", "admit", "cap_attributes"]

MAX_ATTRIBUTES_PER_DEVICE = 64
NONE_ADDED: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class InputLimits:
    """The bounds (settings `max_*`, `new_devices_per_hour`)."""

    new_devices_per_hour: float = 10_000.0
    max_metrics_per_device: int = 500
    max_attributes_per_device: int = MAX_ATTRIBUTES_PER_DEVICE
    max_attribute_chars: int = 256


@dataclass(slots=True)
class Admission:
    """The verdicts on one batch's decoded messages."""

    # Index in the batch's `decoded` -> (reason code, detail) of each message refused.
    refused: dict[int, tuple[str, str]] = field(default_factory=dict)
    new_devices: int = 0  # new devices admitted (the caller takes them from its budget)
    attributes_cut: int = 0  # string values cut to max_attribute_chars


def admit(
    decoded: Sequence[Decoded],
    caches: WriterCaches,
    limits: InputLimits,
    new_device_budget: float,
) -> Admission:
    """Which of `decoded` the store takes (see the module docstring); cuts long attribute
    values in place. `new_device_budget`: how many new devices may still come now."""
    out = Admission()
    devices = caches.devices
    metrics = caches.metrics
    series = caches.series
    counts = caches.series_count
    # What this batch itself adds before a message: new devices, new series per device.
    fresh: dict[str, int] = {}
    added: dict[str, set[str]] = {}
    budget = new_device_budget
    for index, item in enumerate(decoded):
        uid = item.device_id
        device_pk = devices.get(uid)
        if device_pk is None and uid not in fresh and budget < 1:
            out.refused[index] = (
                "device_limit",
                f"new devices are limited to {limits.new_devices_per_hour:g} an hour "
                "(FIELDHUB_NEW_DEVICES_PER_HOUR); this one is not stored",
            )
            continue
        new = _new_metrics(item, device_pk, metrics, series, added.get(uid, NONE_ADDED))
        if new:
            known = (0 if device_pk is None else counts.get(device_pk, 0)) + len(added.get(uid, ()))
            if known + len(new) > limits.max_metrics_per_device:
                out.refused[index] = (
                    "metric_limit",
                    f"device {uid!r} has {known} metrics; this message adds {len(new)} "
                    f"({', '.join(sorted(new)[:5])}) past the limit of "
                    f"{limits.max_metrics_per_device} (FIELDHUB_MAX_METRICS_PER_DEVICE)",
                )
                continue
            added.setdefault(uid, set()).update(new)
        if device_pk is None and uid not in fresh:
            fresh[uid] = index
            budget -= 1
            out.new_devices += 1
        if item.attributes:
            out.attributes_cut += _cut_values(item.attributes, limits.max_attribute_chars)
    return out


def _new_metrics(
    item: Decoded,
    device_pk: int | None,
    metrics: Mapping[str, int],
    series: set[tuple[int, int]],
    added: AbstractSet[str],
) -> set[str] | None:
    """The metric names of `item` its device has no series of yet (nor this batch gave it), or
    None when there are none: this runs for every message, and nearly always finds none, so it
    makes no set it does not fill."""
    new: set[str] | None = None
    for reading in item.readings:
        name = reading.metric
        metric_pk = metrics.get(name)
        if (
            device_pk is None or metric_pk is None or (device_pk, metric_pk) not in series
        ) and name not in added:
            if new is None:
                new = set()
            new.add(name)
    return new


def _cut_values(attributes: dict[str, AttributeValue], max_chars: int) -> int:
    cuts = 0
    for key, value in attributes.items():
        if isinstance(value, str) and len(value) > max_chars:
            attributes[key] = cut(value, max_chars)
            cuts += 1
    return cuts


def cap_attributes(
    stored_keys: frozenset[str], incoming: dict[str, object], max_keys: int
) -> tuple[dict[str, object], int]:
    """Of `incoming` attributes, those a device with `stored_keys` may keep: every key it has,
    and new keys (in sorted order, so a redelivery keeps the same ones) while it has fewer than
    `max_keys`; and how many were not kept. A null value (removing a key) is always kept."""
    room = max_keys - len(stored_keys)
    kept: dict[str, object] = {}
    dropped = 0
    for key in sorted(incoming):
        value = incoming[key]
        if key in stored_keys or value is None:
            kept[key] = value
        elif room > 0:
            kept[key] = value
            room -= 1
        else:
            dropped += 1
    return kept, dropped
