"""Building store input in tests: one decoded-message helper, the time constants, a shuffled
series with its reference aggregates, and the schema of an older fieldhub's database."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from fieldhub.protocol.messages import AttributeValue, Decoded, Presence, Reading
from fieldhub.store import Store, WriteBatch
from fieldhub.store.rollups import HOUR_US, MINUTE_US
from fieldhub.store.sqlite_schema import ROLLUP_PENDING_MIGRATION
from fieldhub.store.types import Aggregate

T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z in epoch microseconds
S = 1_000_000


def msg(
    device_id: str = "dev-1",
    received_us: int = T0,
    readings: Sequence[tuple[str, int, float]] = (),
    *,
    profile: str = "native",
    attributes: Mapping[str, AttributeValue] | None = None,
    presence: Presence | None = None,
) -> Decoded:
    """A decoded message; readings are (metric, ts_us, value)."""
    return Decoded(
        device_id=device_id,
        profile=profile,
        channel="telemetry",
        received_us=received_us,
        readings=[Reading(m, ts, v) for m, ts, v in readings],
        attributes=dict(attributes or {}),
        presence=presence,
    )


Migration = tuple[int, str, str]


def schema_before(migrations: list[Migration], at: int) -> list[Migration]:
    """The migrations a database made by an older fieldhub went through (those before index
    `at`), for tests that write such a database with today's store. Today's SQLite write path
    appends to the pending-rollups table whatever the schema, so it is kept: an older fieldhub
    had nothing pending there, and a database it closed holds nothing there either."""
    return [*migrations[:at], *(m for m in migrations[at:] if m == ROLLUP_PENDING_MIGRATION)]


# A start on an hour boundary, so the test picks aligned and unaligned ranges on purpose.
H0 = T0 - T0 % HOUR_US


def reference(
    readings: dict[int, float], start: int, end: int, interval: int, agg: Aggregate
) -> list[tuple[int, float, int]]:
    buckets: dict[int, list[tuple[int, float]]] = {}
    for ts, value in sorted(readings.items()):
        if start <= ts < end:
            buckets.setdefault(ts - ts % interval, []).append((ts, value))
    out = []
    for bucket, points in sorted(buckets.items()):
        values = [v for _, v in points]
        value = {
            "avg": sum(values) / len(values),
            "min": min(values),
            "max": max(values),
            "sum": sum(values),
            "count": float(len(values)),
            "first": values[0],
            "last": values[-1],
        }[agg]
        out.append((bucket, value, len(values)))
    return out


async def store_shuffled(store: Store, seed: int, fold_every: int = 0) -> dict[int, float]:
    """~3 hours of one series at irregular times, written in shuffled batches with some
    readings sent twice (a redelivery), so closed minutes and hours get late data. With
    `fold_every`, the rollups are brought up to date after every that many batches."""
    rng = random.Random(seed)
    readings: dict[int, float] = {}
    ts = H0 - 7 * MINUTE_US + rng.randrange(S)
    while ts < H0 + 3 * HOUR_US:
        readings[ts] = round(rng.uniform(-20, 40), 3)
        ts += rng.randrange(1, 90) * S + rng.randrange(S)
    items = list(readings.items())
    items += rng.sample(items, len(items) // 10)  # redelivered: must not count twice
    rng.shuffle(items)
    for number, start in enumerate(range(0, len(items), 37), 1):
        chunk = items[start : start + 37]
        await store.write_batch(
            WriteBatch(decoded=[msg("dev-1", T0, [("t", ts, value)]) for ts, value in chunk])
        )
        if fold_every and number % fold_every == 0:
            await store.fold_rollups()
    return readings
