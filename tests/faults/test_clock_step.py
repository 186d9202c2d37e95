"""fieldhub's wall clock steps an hour forward and back again while messages flow (the
machine's clock is untouched: libfaketime, for the fieldhub process only).

What must hold:
- readings with their device's own time are each stored once, at that time, whatever the
  clock says;
- receive times follow the clock: an hour ahead after the forward step, back to the real time
  after the backward one;
- presence does not flap: no device is offline, and every device that has sent since a step
  is online;
- no dead letter, and the counters agree with the rows.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from conftest import MosquittoFactory
from support.faults import (
    SteppedClock,
    assert_counters_equal_rows,
    assert_each_seq_once,
    find_libfaketime,
    rows,
    seq_messages,
    stored_seq,
)
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, now_ms, publish_all
from support.rabbitmq import in_ci

# Skipped without libfaketime, except in CI (scripts/test installs it), where it must run.
pytestmark = pytest.mark.skipif(
    find_libfaketime() is None and not in_ci(),
    reason="needs libfaketime (Debian's faketime: scripts/test)",
)

HOUR_S = 3600
# Messages per phase: before the step, an hour ahead, back again.
PER_PHASE = 1_000
DEVICES = 20
# How far a receive time may be from the (faked) clock around its phase: publishing, batching
# and a loaded machine.
SLACK_S = 5.0


def test_the_clock_stepped_an_hour_forward_and_back(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    """1,000 messages with their own time at each clock: real, +1 h, real again."""
    broker = mosquitto_factory()
    faked = SteppedClock(tmp_path / "faketime.rc")
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url, env=faked.env)
    fh.start()
    try:
        db = fh.db_path
        prefix = f"clk{uuid.uuid4().hex[:6]}"
        start_ms = now_ms() - 600_000
        publisher = connected_publisher(broker.url)
        windows: list[tuple[float, float, int]] = []
        for phase, offset_s in enumerate((0, HOUR_S, 0)):
            faked.step_to(offset_s)
            system = fh.get("/api/v1/system").json()
            assert abs(system["time_us"] / 1e6 - (time.time() + offset_s)) < SLACK_S, system
            began = time.time()
            first = phase * PER_PHASE
            messages = seq_messages(
                prefix, PER_PHASE, start_ms=start_ms, devices=DEVICES, offset=first
            )
            publish_all(publisher, messages)
            wait_until(
                lambda n=first + PER_PHASE: stored_seq(db, prefix) >= n, what=f"phase {phase}"
            )
            windows.append((began, time.time(), offset_s))

            # Every device sent since the step: all online, none offline or stale.
            fleet = fh.get("/api/v1/system").json()["fleet"]
            assert fleet == {
                "devices": DEVICES,
                "online": DEVICES,
                "offline": 0,
                "stale": 0,
            }, f"phase {phase}"
        publisher.stop()

        total = 3 * PER_PHASE
        assert_each_seq_once(db, prefix, total)
        # Each at its device's time (seq_messages: start_ms + n // DEVICES), not the clock's.
        at_own_time = rows(
            db,
            "SELECT count(*) FROM readings r JOIN metrics m ON m.id = r.metric_id "
            "WHERE m.name = 'seq' AND r.ts = (? + CAST(r.value AS INTEGER) / ?) * 1000",
            start_ms,
            DEVICES,
        )
        assert at_own_time == [(total,)]
        for phase, (began, ended, offset_s) in enumerate(windows):
            first, last = rows(
                db,
                "SELECT min(r.received_at), max(r.received_at) FROM readings r "
                "JOIN metrics m ON m.id = r.metric_id "
                "WHERE m.name = 'seq' AND r.value >= ? AND r.value < ?",
                phase * PER_PHASE,
                (phase + 1) * PER_PHASE,
            )[0]
            assert isinstance(first, int)
            assert isinstance(last, int)
            low, high = began + offset_s - SLACK_S, ended + offset_s + SLACK_S
            received = (
                f"phase {phase} (clock {offset_s:+d} s) received "
                f"{first / 1e6:.3f}..{last / 1e6:.3f}"
            )
            assert low <= first / 1e6, f"{received}, before {low:.3f}"
            assert last / 1e6 <= high, f"{received}, after {high:.3f}"
        assert rows(db, "SELECT count(*) FROM dead_letters") == [(0,)]
        assert rows(db, "SELECT count(*) FROM presence_events WHERE state = 'offline'") == [(0,)]
        assert_counters_equal_rows(fh, db)
        assert fh.stop() == 0
    finally:
        fh.stop()  # a failed assertion must not leave fieldhub running
