"""No reading lost, none stored twice: bursts, kill -9 of fieldhub, broker restarts."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import httpx
import orjson

from conftest import MosquittoFactory
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, count_metric, count_rows, now_ms, publish_all

DEVICES = 100


def _messages(
    prefix: str, total: int, *, start_ms: int, offset: int = 0
) -> list[tuple[str, bytes]]:
    """`total` telemetry messages spread over DEVICES devices, each with its own ts and seq."""
    messages = []
    for n in range(offset, offset + total):
        device, seq = n % DEVICES, n // DEVICES
        payload = orjson.dumps({"ts": start_ms + seq, "seq": seq, "temperature": 20 + seq % 7})
        messages.append((f"devices/{prefix}-{device:03d}/telemetry", payload))
    return messages


def _assert_each_seq_once(db: Path, prefix: str, total: int) -> None:
    """Every (device, seq) published is stored exactly once."""
    stored = count_metric(db, prefix, "seq")
    distinct = count_rows(
        db,
        "SELECT count(*) FROM (SELECT DISTINCT r.device_id, r.value FROM readings r "
        "JOIN devices d ON d.id = r.device_id JOIN metrics m ON m.id = r.metric_id "
        "WHERE d.uid LIKE ? AND m.name = 'seq')",
        prefix + "%",
    )
    assert stored == total, f"stored {stored} of {total}"
    assert distinct == total, f"{total - distinct} seq values stored twice"


def test_burst_of_20000_qos1_messages_all_stored_once(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    """20,000 QoS 1 messages published as fast as the broker takes them: all stored, none twice."""
    broker = mosquitto_factory()
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url).start()
    prefix = f"burst{uuid.uuid4().hex[:6]}"
    publisher = connected_publisher(broker.url)
    publish_all(publisher, _messages(prefix, 20_000, start_ms=now_ms() - 60_000))
    wait_until(
        lambda: count_metric(fh.db_path, prefix, "seq") >= 20_000,
        timeout_s=60,
        what="20,000 readings",
    )
    _assert_each_seq_once(fh.db_path, prefix, 20_000)
    assert fh.metric("fieldhub_readings_duplicate_total") == 0
    assert fh.metric("fieldhub_ingest_messages_total", {"outcome": "stored"}) == 20_000
    publisher.stop()
    assert fh.stop() == 0


def test_kill_9_mid_stream_loses_nothing(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    """kill -9 of fieldhub while messages stream in; after a restart each is stored exactly once."""
    broker = mosquitto_factory()
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url).start()
    prefix = f"crash{uuid.uuid4().hex[:6]}"
    total = 30_000
    messages = _messages(prefix, total, start_ms=now_ms() - 600_000)
    publisher = connected_publisher(broker.url)
    done = threading.Event()

    def publish() -> None:
        # Chunks keep the stream going while the test kills fieldhub.
        for i in range(0, total, 1_000):
            publish_all(publisher, messages[i : i + 1_000])
        done.set()

    thread = threading.Thread(target=publish, name="test.publisher")
    thread.start()
    wait_until(
        lambda: count_metric(fh.db_path, prefix, "seq") >= 3_000, timeout_s=60, what="3,000 stored"
    )
    fh.kill9()
    at_kill = count_metric(fh.db_path, prefix, "seq")
    assert at_kill < total, "the stream ended before the kill: the test proves nothing"
    thread.join(120)
    assert done.is_set()
    fh.start()
    wait_until(
        lambda: count_metric(fh.db_path, prefix, "seq") >= total,
        timeout_s=90,
        what=f"{total} readings after the restart",
    )
    _assert_each_seq_once(fh.db_path, prefix, total)
    publisher.stop()
    assert fh.stop() == 0


def test_broker_restart_api_answers_and_ingest_resumes(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    """Broker stopped mid-stream: the API keeps answering; after its restart ingest resumes."""
    broker = mosquitto_factory()
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url).start()
    prefix = f"outage{uuid.uuid4().hex[:6]}"
    start = now_ms() - 60_000
    publisher = connected_publisher(broker.url)
    publish_all(publisher, _messages(prefix, 2_000, start_ms=start))
    publisher.stop()
    wait_until(lambda: count_metric(fh.db_path, prefix, "seq") >= 2_000, what="first 2,000")

    broker.stop()
    health = wait_until(
        lambda: (h := fh.health()) is not None and not h["mqtt_connected"] and h,
        what="fieldhub to notice the broker is gone",
    )
    assert health["status"] == "degraded"
    for _ in range(10):
        response = httpx.get(f"{fh.base_url}/api/v1/devices", params={"search": prefix}, timeout=5)
        assert response.status_code == 200
        assert response.json()["count"] == DEVICES

    restarted = mosquitto_factory(data_dir=broker.data_dir, port=broker.port)
    wait_until(
        lambda: (h := fh.health()) is not None and h["mqtt_connected"],
        timeout_s=30,
        what="ingest to reconnect",
    )
    publisher = connected_publisher(restarted.url)
    publish_all(publisher, _messages(prefix, 2_000, start_ms=start, offset=2_000))
    wait_until(
        lambda: count_metric(fh.db_path, prefix, "seq") >= 4_000, timeout_s=30, what="all 4,000"
    )
    _assert_each_seq_once(fh.db_path, prefix, 4_000)
    publisher.stop()
    assert fh.stop() == 0
