"""The SQLite database's file system turns read-only mid-stream and writable again: nothing is
lost, nothing is stored twice, nothing becomes a dead letter, /healthz says `unwritable` (then
503) and `ok` again, and the counters agree with the rows.

Linux refuses `mount -o remount,ro` while the database is open for writing, so the file system
cannot be flipped under a running fieldhub; `read_only_writes` (tests/support/faults.py) gives
fieldhub's database writes the file system's answer instead (EROFS), then takes it away.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from conftest import MosquittoFactory
from support.faults import (
    assert_recovered,
    read_only_writes,
    seq_messages,
    stored_seq,
)
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, now_ms, publish_all
from support.rabbitmq import in_ci

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="attaching strace to fieldhub needs root"),
    # Skipped without strace, except in CI (scripts/test installs it), where it must run.
    pytest.mark.skipif(
        shutil.which("strace") is None and not in_ci(), reason="needs strace (scripts/test)"
    ),
]

BEFORE = 500
DURING = 3_000
# /healthz turns 503 after this long of failing writes (the setting, shortened for the test).
UNWRITABLE_503_S = 2


def test_a_read_only_database_loses_nothing_and_health_says_so(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    """3,500 messages, 3,000 of them sent while the database cannot be written."""
    broker = mosquitto_factory()
    fh = FieldhubProcess(
        data_dir=tmp_path / "fh",
        mqtt_url=broker.url,
        env={"FIELDHUB_STORE_UNWRITABLE_503_S": str(UNWRITABLE_503_S)},
    ).start()
    try:
        db = fh.db_path
        assert fh.proc is not None
        prefix = f"ro{uuid.uuid4().hex[:6]}"
        start_ms = now_ms() - 600_000
        publisher = connected_publisher(broker.url)
        publish_all(publisher, seq_messages(prefix, BEFORE, start_ms=start_ms))
        wait_until(lambda: stored_seq(db, prefix) >= BEFORE, what="the first readings")

        with read_only_writes(fh.proc.pid):
            # Read-only: every message waits on the broker, health says why.
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
            problems = health["problems"]
            assert isinstance(problems, list)
            assert any("database writes have failed" in p for p in problems), problems
            assert any("read-only" in p or "I/O" in p for p in problems), problems
            wait_until(
                lambda: fh.get("/healthz").status_code == 503,
                timeout_s=UNWRITABLE_503_S + 30,
                what="/healthz 503 once writes failed past the setting",
            )
            assert stored_seq(db, prefix) == BEFORE
            assert fh.metric("fieldhub_store_writes_failing_seconds") > 0
            assert fh.metric("fieldhub_dead_letters_total") == 0

        # Writable again: everything published meanwhile arrives, once.
        publisher.stop()
        assert_recovered(fh, db, prefix, BEFORE + DURING)
        assert fh.stop() == 0
    finally:
        fh.stop()  # a failed assertion must not leave fieldhub running
