"""PostgreSQL stops (as if it crashed) and starts again while messages flow: nothing is lost,
nothing is stored twice, nothing becomes a dead letter, /healthz says the store is in trouble
while it is down and `ok` after, and the counters agree with the rows.

The cluster is the test's own (`durable=True`), never the session's: other tests use that one,
and it commits without waiting for its WAL, which an immediate stop could lose.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MosquittoFactory
from fieldhub.mqtt.publisher import MqttPublisher
from support.faults import (
    assert_recovered,
    seq_messages,
    stored_seq,
)
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, now_ms, publish_all
from support.postgres import PostgresServer, PostgresUnavailable
from support.rabbitmq import in_ci

BEFORE = 500
DURING = 3_000
# DURING goes out in chunks this size, one every PACE_S (~6 s in all), so messages still flow
# when the server stops and while it is down.
CHUNK = 100
PACE_S = 0.2
# The server stays down until ingest's writes failed this often (retries after 0.5, 1, 2 s).
OUTAGE_WRITE_ERRORS = 3


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A private cluster of this test's own, which it may stop and start."""
    try:
        server = PostgresServer(durable=True)
    except PostgresUnavailable as exc:
        if in_ci():
            pytest.fail(f"{exc}; CI must run the PostgreSQL tests")
        pytest.skip(str(exc))
    server.start()
    yield server
    server.stop()


def publish_paced(publisher: MqttPublisher, messages: list[tuple[str, bytes]]) -> threading.Thread:
    """Publish `messages` in the background, CHUNK every PACE_S (join the thread to wait)."""

    def run() -> None:
        for first in range(0, len(messages), CHUNK):
            publish_all(publisher, messages[first : first + CHUNK], timeout_s=30)
            time.sleep(PACE_S)

    thread = threading.Thread(target=run, name="publish-paced", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_postgres_restarted_mid_stream_loses_nothing(
    mosquitto_factory: MosquittoFactory, postgres: PostgresServer, tmp_path: Path, mode: str
) -> None:
    """3,500 messages with their own time; the server stops (`mode`) a third of the way into the
    last 3,000, stays down until /healthz says so, and starts again."""
    broker = mosquitto_factory()
    db = postgres.new_database()
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url, extra_args=["--db", db])
    fh.start()
    try:
        prefix = f"pg{uuid.uuid4().hex[:6]}"
        start_ms = now_ms() - 600_000
        publisher = connected_publisher(broker.url)
        publish_all(publisher, seq_messages(prefix, BEFORE, start_ms=start_ms))
        wait_until(lambda: stored_seq(db, prefix) >= BEFORE, what="the first readings")

        flow = publish_paced(
            publisher, seq_messages(prefix, DURING, start_ms=start_ms, offset=BEFORE)
        )
        wait_until(
            lambda: stored_seq(db, prefix) >= BEFORE + DURING // 3, what="a third of the stream"
        )
        with postgres.stopped(mode=mode):

            def in_trouble() -> dict[str, object] | None:
                health = fh.health()
                return health if health and health["store"] != "ok" else None

            health = wait_until(in_trouble, timeout_s=30, what="/healthz to see the outage")
            # A server that does not answer is `error` and 503 at once (not `unwritable`, which
            # is a database that answers but cannot write: api/routes/health.py).
            assert health["status"] == "degraded"
            assert health["store"] == "error"
            assert fh.get("/healthz").status_code == 503
            # Messages go on arriving: ingest's writes fail, and health says so too.
            health = wait_until(
                lambda: (h := fh.health()) and h["store_writes_failing_s"] > 0 and h,
                timeout_s=30,
                what="ingest to report failing writes",
            )
            problems = health["problems"]
            assert isinstance(problems, list)
            assert "the database does not answer" in problems, problems
            assert any("database writes have failed" in p for p in problems), problems
            # Down long enough for several retries: past the second failure, a batch whose
            # trouble is not the store's is written message by message (ingest/pipeline.py).
            wait_until(
                lambda: fh.metric("fieldhub_ingest_write_errors_total") >= OUTAGE_WRITE_ERRORS,
                timeout_s=30,
                what=f"{OUTAGE_WRITE_ERRORS} failed writes",
            )
            assert fh.metric("fieldhub_dead_letters_total") == 0
        flow.join(60)
        assert not flow.is_alive(), "the publisher did not finish"

        publisher.stop()
        assert_recovered(fh, db, prefix, BEFORE + DURING)
        assert fh.stop() == 0
    finally:
        fh.stop()  # a failed assertion must not leave fieldhub running
