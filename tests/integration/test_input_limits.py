"""Hostile input cannot grow a device or the fleet without bound: a real `fieldhub up` with
small limits, fed over Mosquitto what the hostile-input probe sent (docs/limits.md). Each bound
bites with its counter, what it refuses is a dead letter with its raw bytes, and the counters
agree with the rows."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson

from conftest import MosquittoFactory
from support.faults import assert_counters_equal_rows
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, count_rows, publish_all

NEW_DEVICES_PER_HOUR = 20
MAX_METRICS = 10
MAX_ATTRIBUTES = 8
MAX_ATTRIBUTE_CHARS = 64


def test_each_bound_bites_with_its_counter(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    broker = mosquitto_factory()
    fh = FieldhubProcess(
        data_dir=tmp_path / "fh",
        mqtt_url=broker.url,
        env={
            "FIELDHUB_NEW_DEVICES_PER_HOUR": str(NEW_DEVICES_PER_HOUR),
            "FIELDHUB_MAX_METRICS_PER_DEVICE": str(MAX_METRICS),
            "FIELDHUB_MAX_ATTRIBUTES_PER_DEVICE": str(MAX_ATTRIBUTES),
            "FIELDHUB_MAX_ATTRIBUTE_CHARS": str(MAX_ATTRIBUTE_CHARS),
        },
    ).start()
    tag = uuid.uuid4().hex[:6]
    publisher = connected_publisher(broker.url)

    # 50 messages of one device, each with a 60 KB string under a new key (the probe made one
    # device 3 MB over the API this way).
    attrs = f"attrs-{tag}"
    publish_all(
        publisher,
        [
            (
                f"devices/{attrs}/telemetry",
                orjson.dumps({"t": n, f"note{n:02d}": "x" * 60_000}),
            )
            for n in range(50)
        ],
    )
    # 15 metrics in three messages of five: the third would pass the limit of 10.
    metrics = f"metrics-{tag}"
    publish_all(
        publisher,
        [
            (
                f"devices/{metrics}/telemetry",
                orjson.dumps({f"m{k * 5 + i:02d}": i for i in range(5)}),
            )
            for k in range(3)
        ],
    )
    # 60 devices nobody knew, one message each: the hour's budget (20, less the two above) in.
    publish_all(
        publisher,
        [(f"devices/rnd-{tag}-{n:03d}/telemetry", b'{"t": 1}') for n in range(60)],
    )
    publisher.stop()
    total = 50 + 3 + 60
    wait_until(
        lambda: (
            fh.metric("fieldhub_ingest_messages_total", {"outcome": "stored"})
            + fh.metric("fieldhub_ingest_messages_total", {"outcome": "dead_letter"})
            >= total
        ),
        timeout_s=60,
        what=f"{total} messages handled",
    )

    # Attributes: at most 8 keys, each string cut to 64 characters; the device stays small.
    device = fh.get(f"/api/v1/devices/{attrs}")
    assert device.status_code == 200
    attributes = device.json()["attributes"]
    assert len(attributes) == MAX_ATTRIBUTES
    assert all(len(v) <= MAX_ATTRIBUTE_CHARS for v in attributes.values() if isinstance(v, str))
    assert len(device.content) < 4_000
    assert fh.metric("fieldhub_limit_hits_total", {"limit": "attribute_chars"}) == 50
    assert fh.metric("fieldhub_limit_hits_total", {"limit": "attributes_per_device"}) == 50 - 8
    readings = fh.get(f"/api/v1/devices/{attrs}/readings", metric="t", limit=100).json()["data"]
    assert len(readings) == 50  # its readings are all stored

    # Metrics: the third message is a dead letter with its raw bytes.
    db = fh.db_path
    assert fh.metric("fieldhub_limit_hits_total", {"limit": "metrics_per_device"}) == 1
    letters = fh.get("/api/v1/dead-letters", reason="metric_limit").json()["data"]
    assert [letter["device_id"] for letter in letters] == [metrics]
    assert "past the limit of 10" in letters[0]["detail"]
    summaries = fh.get(f"/api/v1/devices/{metrics}").json()["metrics"]
    assert len(summaries) == MAX_METRICS

    # New devices: 20 an hour in all (2 above), the rest dead letters device_limit.
    stored_random = count_rows(db, "SELECT count(*) FROM devices WHERE uid LIKE ?", f"rnd-{tag}%")
    refused = count_rows(db, "SELECT count(*) FROM dead_letters WHERE reason = 'device_limit'")
    assert stored_random == NEW_DEVICES_PER_HOUR - 2
    assert refused == 60 - stored_random
    assert fh.metric("fieldhub_limit_hits_total", {"limit": "new_devices_per_hour"}) == refused
    assert count_rows(db, "SELECT count(*) FROM devices") == NEW_DEVICES_PER_HOUR

    system = fh.get("/api/v1/system").json()
    assert system["limits"]["devices"] == {
        "new_devices_per_hour": NEW_DEVICES_PER_HOUR,
        "max_metrics_per_device": MAX_METRICS,
        "max_attributes_per_device": MAX_ATTRIBUTES,
        "max_attribute_chars": MAX_ATTRIBUTE_CHARS,
    }
    assert_counters_equal_rows(fh, db)
    assert fh.stop() == 0
