"""Publishing helpers for tests, built on fieldhub's own MQTT module."""

from __future__ import annotations

import sqlite3
import time
import uuid
from concurrent.futures import Future, wait
from pathlib import Path

from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.mqtt.publisher import MqttPublisher


def connected_publisher(url: str, *, client_id: str | None = None) -> MqttPublisher:
    """A started, connected publisher (fails the test after 10 s)."""
    publisher = MqttPublisher(
        endpoint=parse_mqtt_url(url), client_id=client_id or f"t-{uuid.uuid4().hex[:10]}"
    )
    publisher.start()
    assert publisher.wait_connected(10), f"publisher could not connect to {url}"
    return publisher


def publish_all(
    publisher: MqttPublisher,
    messages: list[tuple[str, bytes]],
    *,
    retain: bool = False,
    timeout_s: float = 60,
) -> None:
    """Publish QoS 1 and wait until the broker acknowledged every message."""
    futures: list[Future[None]] = [
        publisher.publish(t, p, qos=1, retain=retain) for t, p in messages
    ]
    done, pending = wait(futures, timeout=timeout_s)
    assert not pending, f"{len(pending)} publishes not acknowledged within {timeout_s} s"
    for future in done:
        future.result()


def count_rows(db: Path, sql: str, *params: object) -> int:
    """Run a counting query on the fieldhub database, read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(sql, params).fetchone()[0])
    finally:
        conn.close()


def count_metric(db: Path, device_prefix: str, metric: str) -> int:
    """Readings of `metric` stored for devices whose id starts with `device_prefix`."""
    if not db.exists():
        return 0
    try:
        return count_rows(
            db,
            "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device_id "
            "JOIN metrics m ON m.id = r.metric_id WHERE d.uid LIKE ? AND m.name = ?",
            device_prefix + "%",
            metric,
        )
    except sqlite3.OperationalError:
        return 0  # schema not created yet


def now_ms() -> int:
    return time.time_ns() // 1_000_000
