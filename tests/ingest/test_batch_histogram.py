"""The lag histogram observed a batch at a time reads exactly like prometheus_client's own."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from fieldhub.ingest.metrics import LATENCY_BUCKETS_S, BatchHistogram


def _exposition(registry: CollectorRegistry) -> tuple[list[str], float]:
    """The lines but `_created` (the library's histogram adds it) and `_sum`, and the sum: the
    sum of floats added in another order may differ in its last digit."""
    lines = generate_latest(registry).decode().splitlines()
    sums = [float(line.split()[1]) for line in lines if line.startswith("x_seconds_sum")]
    return [line for line in lines if "_created" not in line and "_sum" not in line], sums[0]


def test_batches_expose_what_one_observe_per_value_does() -> None:
    rng = random.Random(19)
    values = [rng.random() * 3 for _ in range(2_000)]
    values += [0.0, 0.001, 0.1, 59.9, 60.0, 120.0, *LATENCY_BUCKETS_S]  # bounds are "le"
    reference_registry, batch_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram(
        "x_seconds", "doc", buckets=LATENCY_BUCKETS_S, registry=reference_registry
    )
    batched = BatchHistogram("x_seconds", "doc", buckets=LATENCY_BUCKETS_S, registry=batch_registry)
    for value in values:
        reference.observe(value)
    for start in range(0, len(values), 333):
        batched.observe_many(values[start : start + 333])
    batched.observe_many([])
    lines, total = _exposition(batch_registry)
    reference_lines, reference_total = _exposition(reference_registry)
    assert lines == reference_lines
    assert total == pytest.approx(reference_total, rel=1e-12)
    assert f"x_seconds_count {float(len(values))}" in lines
