"""The SQLite database's disk fills up mid-stream and frees again: nothing is lost, nothing is
stored twice, nothing becomes a dead letter, /healthz says what is wrong (degraded, then 503),
and the counters agree with the rows.

The database lives on a small tmpfs the test mounts (root: CI runs as root); the data dir, the
log and the broker stay on the ordinary disk, so only the database's writes fail.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from conftest import MosquittoFactory
from support.faults import (
    assert_recovered,
    fill,
    seq_messages,
    tmpfs,
)
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, count_metric, now_ms, publish_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

DISK_MB = 24
BEFORE = 500
DURING = 3_000
# /healthz turns 503 after this long of failing writes (the setting, shortened for the test).
UNWRITABLE_503_S = 2


def test_a_full_disk_loses_nothing_and_health_says_so(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    broker = mosquitto_factory()
    with tmpfs(tmp_path / "disk", DISK_MB) as disk:
        db = disk / "fieldhub.db"
        fh = FieldhubProcess(
            data_dir=tmp_path / "fh",
            mqtt_url=broker.url,
            extra_args=["--db", f"sqlite:///{db}"],
            env={"FIELDHUB_STORE_UNWRITABLE_503_S": str(UNWRITABLE_503_S)},
        ).start()
        try:
            prefix = f"full{uuid.uuid4().hex[:6]}"
            start_ms = now_ms() - 600_000
            publisher = connected_publisher(broker.url)
            publish_all(publisher, seq_messages(prefix, BEFORE, start_ms=start_ms))
            wait_until(lambda: count_metric(db, prefix, "seq") >= BEFORE, what="the first readings")
            filler = fill(disk)

            # While the disk is full: every message waits on the broker, health says why.
            publish_all(
                publisher,
                seq_messages(prefix, DURING, start_ms=start_ms, offset=BEFORE),
                timeout_s=60,
            )

            def unwritable() -> dict[str, object] | None:
                health = fh.health()
                return health if health and health["store"] == "unwritable" else None

            health = wait_until(unwritable, timeout_s=30, what="/healthz to report failing writes")
            assert health["status"] == "degraded"
            assert any("database writes have failed" in p for p in health["problems"])  # type: ignore[union-attr]
            wait_until(
                lambda: fh.get("/healthz").status_code == 503,
                timeout_s=UNWRITABLE_503_S + 30,
                what="/healthz 503 once writes failed past the setting",
            )
            assert fh.metric("fieldhub_store_writes_failing_seconds") > 0
            assert fh.metric("fieldhub_dead_letters_total", {"reason": "store_rejected"}) == 0

            # Space again: everything published while full arrives, once.
            filler.unlink()
            publisher.stop()
            assert_recovered(fh, db, prefix, BEFORE + DURING)
            assert fh.stop() == 0
        finally:
            fh.stop()  # a failed assertion must not leave fieldhub running
