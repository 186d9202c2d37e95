"""Prometheus metrics of the ingest path, on a registry owned by the app (no globals)."""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Latency buckets from 1 ms to 1 min: commits take milliseconds when healthy, seconds when the
# disk stalls, and a minute means something is wrong. Fine steps below 100 ms where targets live.
LATENCY_BUCKETS_S = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class BatchHistogram(Collector):
    """A histogram observed a batch of values at a time: one bisect a value and one lock a
    batch. `Histogram.observe` takes a lock and walks the buckets for every value, 2 us a
    message for the per-message lag at 20,000 msg/s (bench/README.md, issue 19). Exposed like
    any histogram (`_bucket`, `_count`, `_sum`)."""

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = sorted(buckets)
        if self._bounds[-1] != math.inf:
            self._bounds.append(math.inf)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        bounds = self._bounds
        counts = [0] * len(bounds)
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self._bounds, counts, strict=True):
            running += count
            cumulative.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=cumulative, sum_value=total
        )


class IngestMetrics:
    """Counters, gauges and histograms the ingest pipeline updates."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "fieldhub_ingest_messages",
            "Messages handled by ingest, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "fieldhub_dead_letters",
            "Messages sent to dead letters, by reason",
            ["reason"],
            registry=registry,
        )
        self.readings_written = Counter(
            "fieldhub_readings_written", "Readings inserted", registry=registry
        )
        self.readings_duplicate = Counter(
            "fieldhub_readings_duplicate",
            "Readings already stored (same device, metric and time): redeliveries absorbed",
            registry=registry,
        )
        self.batch_size = Histogram(
            "fieldhub_ingest_batch_size",
            "Messages per committed batch",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "fieldhub_ingest_commit_seconds",
            "Time to write and commit one batch",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.commit_delay = Histogram(
            "fieldhub_ingest_commit_delay_seconds",
            "Commit time minus receive time of the oldest message in each batch",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.lag = BatchHistogram(
            "fieldhub_ingest_lag_seconds",
            "Commit time minus the device's own timestamp, per live message that carries one; "
            "with synced clocks this is publish -> commit latency",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "fieldhub_ingest_queue_depth",
            "Messages decoded and waiting for the writer",
            registry=registry,
        )
        self.queue_high_water = Gauge(
            "fieldhub_ingest_queue_high_water", "Largest queue depth seen", registry=registry
        )
        self.backpressure_waits = Counter(
            "fieldhub_ingest_backpressure_waits",
            "Times the network thread waited because the ingest queue was full",
            registry=registry,
        )
        self.write_errors = Counter(
            "fieldhub_ingest_write_errors",
            "Batch writes that failed and were retried",
            registry=registry,
        )
        self.limit_hits = Counter(
            "fieldhub_limit_hits",
            "Times a bound on what devices may create bit (docs/limits.md): a message refused "
            "(new_devices_per_hour, metrics_per_device: dead letters device_limit, "
            "metric_limit), an attribute key not stored (attributes_per_device) or an attribute "
            "value cut (attribute_chars)",
            ["limit"],
            registry=registry,
        )
        for limit in (
            "new_devices_per_hour",
            "metrics_per_device",
            "attributes_per_device",
            "attribute_chars",
        ):
            self.limit_hits.labels(limit)
        # Set by the pipeline as a function of its state (0 while writes succeed).
        self.writes_failing = Gauge(
            "fieldhub_store_writes_failing_seconds",
            "How long ingest's writes have been failing for a reason of the database's (disk "
            "full, I/O error, read-only, locked, unreachable); 0 while they succeed",
            registry=registry,
        )
        self.mqtt_connected = Gauge(
            "fieldhub_mqtt_connected",
            "1 while ingest is connected to the broker",
            registry=registry,
        )
        self.mqtt_connects = Counter(
            "fieldhub_mqtt_connects",
            "Successful connections of ingest to the broker",
            registry=registry,
        )
