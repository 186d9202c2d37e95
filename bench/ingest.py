"""Ingest benchmark: QoS 1 MQTT publishes from many devices -> rows committed by ``fieldhub up``.

The bar (from the issue): >= 10,000 msg/s sustained for 60 s, QoS 1, 1,000 devices, zero loss,
publisher on the same 2-core machine; goal 20,000 msg/s. Run ``./scripts/bench ingest`` (or
``--quick`` to smoke-test the benchmark itself); the result goes to ``bench/results/ingest.json``.

Phases:

1. References, before any fieldhub (``--references-only``: only these):

   a. Generator capacity: a bare Mosquitto with no subscriber and ``bench.loadgen --max``. The
      generator must be able to offer at least twice the rate fieldhub is measured to store, or
      the measurement could be the generator's limit rather than fieldhub's.
   b. Broker-only ceiling: a bare Mosquitto with fieldhub's flow-control limits, Mosquitto's own
      C client ``mosquitto_sub`` subscribed at QoS 1 to the generator's topics (it acknowledges
      every message and does nothing else), and ``bench.loadgen --max``: what Mosquitto can
      deliver to an acknowledging subscriber on this machine, the limit no ingest can beat.
      Each median stored rate is reported as a fraction of it.
2. ``--repeats`` measured runs, each against a fresh ``fieldhub up`` (fresh data dir, free ports):
   paced load at ``--rate`` for ``--duration`` seconds from ``--devices`` connections, CPU and RSS
   of fieldhub and of its Mosquitto sampled once a second, then wait until the row count stops
   growing, stop fieldhub with SIGINT, and count what was stored in its SQLite file.
3. Medians across runs, the pass checks, and the JSON.

Authentication (``--auth``, default ``both``): ``off`` runs fieldhub in demo mode
(FIELDHUB_AUTH=false, devices connect with no credentials); ``on`` runs it as in production
(FIELDHUB_AUTH=true): before it starts, the bench creates its database, puts one device credential
per simulated device and a viewer API token in it, and every device logs in with its id and
secret while /metrics is scraped with the token. ``both`` interleaves the two (off, on, off, on,
...) so the machine's drift hits both alike, and reports each mode's medians and the ratio on/off.

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    BenchError,
    Sampler,
    bare_mosquitto,
    bucket_delta,
    descendants,
    dig,
    free_port,
    histogram_buckets,
    histogram_quantile,
    is_mosquitto,
    machine_info,
    median_of,
    read_loadgen_result,
    sample_sum,
    say,
    scrape,
    source_state,
    start_bench,
    start_fieldhub,
    start_loadgen,
    stop_fieldhub,
    stop_process,
    tail,
    tidy_workdir,
    wait_healthy,
    write_result,
)
from bench.loadgen import DEFAULT_WINDOW, device_uid, id_width
from fieldhub import clock
from fieldhub.broker.config import MAX_INFLIGHT_MESSAGES, MAX_QUEUED_MESSAGES
from fieldhub.broker.passwd import hash_password
from fieldhub.security.device_access import SECRET_BYTES, device_username
from fieldhub.security.roles import Role
from fieldhub.security.tokens import hash_secret, new_api_token
from fieldhub.store.open import open_store
from fieldhub.store.types import ApiTokenRow, DeviceCredentialRow

# --- the bar -----------------------------------------------------------------------------------

BAR_RATE = 10_000.0
GOAL_RATE = 20_000.0
BAR_DURATION_S = 60.0
BAR_DEVICES = 1000
# The issue asks that the generator be shown able to offer twice what is measured.
CAPACITY_FACTOR = 2.0
# "Sustained" = the generator kept its schedule and fieldhub kept up with it. The offered rate may
# sag 1 % (tick rounding, a GC pause) before we call the schedule missed.
SCHEDULE_TOLERANCE = 0.99
# Kept up = everything was committed within this long after the last publish. fieldhub's batch
# linger is milliseconds (at most ~1 s in any design we considered); 5 s allows a few hiccups,
# while a backlog that grew through a 60 s run at 10k msg/s would show up as tens of seconds.
KEPT_UP_DRAIN_S = 5.0
# Issue 19's stricter reading of "sustained", judged run by run instead of on the median: every
# run stored within 2 % of the offered rate and drained within 2 s. A perfect run at 20,000 x 60 s
# with a 1 s tail stores 19,672 msg/s by the stored_rate formula, 1.6 % below.
EVERY_RUN_RATE_FRACTION = 0.98
EVERY_RUN_DRAIN_S = 2.0
# The latency bar at 10,000 msg/s: publish -> commit p99 (median of the runs).
P99_BAR_S = 0.1
# Other processes using more than this (machine busy % before we start; % of one core during a
# run) make the figures suspect on a 2-core box: we say so in the result, we do not refuse.
OTHERS_CPU_WARN_PERCENT = 20.0

# --- timing ------------------------------------------------------------------------------------

# Quiet time between healthy and the first publish: lets the ingest subscription settle so the
# load does not race the subscriber's startup.
WARMUP_S = 2.0
# Sample CPU/RSS once a second; print progress (and count rows) every 5 s during the load.
SAMPLE_EVERY_S = 1.0
PROGRESS_EVERY_S = 5.0
# After the load, poll the row count faster: the time it stops growing is the last commit, and
# the poll interval is the resolution of the stored rate.
SETTLE_POLL_S = 0.5
# The count has stopped growing once it stayed the same this long: longer than any batch linger
# fieldhub might use (<= 1 s), so a pending batch is not mistaken for the end.
SETTLE_QUIET_S = 3.0
SETTLE_TIMEOUT_S = 60.0
# The loadgen must be done within its duration plus this (connect + drain + disconnect).
LOADGEN_OVERRUN_S = 120.0

# --- what we read from fieldhub ---------------------------------------------------------------

LAG_HISTOGRAM = "fieldhub_ingest_lag_seconds"
DUPLICATE_COUNTER_SAMPLE = "fieldhub_readings_duplicate_total"
SEQ_METRIC = "seq"
# The loadgen payload carries four numbers (seq, temperature, humidity, rssi) besides ts.
EXPECTED_ROWS_PER_MESSAGE = 4

AUTH_MODES = ("off", "on")
# The bar for authentication: ingest with it on within 5 % of it off.
AUTH_TOLERANCE = 0.05
# Figures compared on/off (ratios of the modes' medians). Higher is better for the rates, lower
# for the rest.
AUTH_COMPARED = (
    "stored_rate",
    "received_rate",
    "offered_rate",
    "drain_s",
    "latency.p50_s",
    "latency.p99_s",
    "cpu.fieldhub.cpu_mean_percent",
    "cpu.mosquitto.cpu_mean_percent",
    "cpu.loadgen.cpu_mean_percent",
    "cpu.machine_busy_mean_percent",
    "cpu.others_cpu_mean_percent",
    "cpu_per_message_us.fieldhub",
    "cpu_per_message_us.mosquitto",
    "cpu_per_message_us.total",
    "startup_s",
)

QUICK = {
    "rate": 2000.0,
    "duration": 10.0,
    "devices": 100,
    "repeats": 1,
    "capacity_duration": 5.0,
    "broker_only_duration": 5.0,
}

# --- the broker-only reference ------------------------------------------------------------------

# Mosquitto's own C client: it sends the PUBACK of a QoS 1 message itself, before printing it.
SUBSCRIBER_BIN = "mosquitto_sub"
MOSQUITTO_PUB_BIN = "mosquitto_pub"
# What the loadgen publishes to: devices/<device id>/telemetry (bench/loadgen.py).
TELEMETRY_FILTER = "devices/+/telemetry"
# A fixed client id, because the session is persistent (clean session off), as fieldhub's ingest
# subscription is (fieldhub/mqtt/subscriber.py); on a fresh broker it changes nothing on the
# message path, it only keeps the queue should the subscriber drop.
SUBSCRIBER_CLIENT_ID = "bench-broker-only"
# One line per message: its receive time (-F %U: epoch seconds with 9 decimals). mosquitto_sub
# flushes after every message, so the file's size counts the messages while it runs (each line
# is "1765000000.123456789\n"), and the times date the last delivery and the load window exactly.
RECEIPT_FORMAT = "%U"
RECEIPT_LINE_BYTES = 21
# A probe (one QoS 1 publish with mosquitto_pub on a topic the filter matches, before the load)
# shows that the subscription is in place: the load's first message cannot be missed.
PROBE_TOPIC = "devices/bench-probe/telemetry"
SUBSCRIBER_READY_TIMEOUT_S = 10.0
PROBE_WAIT_S = 1.0

# The per-run figures we take medians of (dotted paths into a run's dict).
MEDIAN_KEYS = (
    "offered",
    "offered_rate",
    "acked",
    "stored",
    "lost",
    "duplicates",
    "stored_rate",
    "received_rate",
    "drain_s",
    "latency.p50_s",
    "latency.p99_s",
    "cpu.fieldhub.cpu_mean_percent",
    "cpu.fieldhub.cpu_max_percent",
    "cpu.fieldhub.rss_max_mb",
    "cpu.mosquitto.cpu_mean_percent",
    "cpu.mosquitto.cpu_max_percent",
    "cpu.mosquitto.rss_max_mb",
    "cpu.loadgen.cpu_mean_percent",
    "cpu.machine_busy_mean_percent",
    "cpu.others_cpu_mean_percent",
    "cpu_per_message_us.fieldhub",
    "cpu_per_message_us.mosquitto",
    "cpu_per_message_us.total",
    "startup_s",
)

METHODS = {
    "offered": "publishes the load generator wrote to its sockets (QoS 1, one TCP connection "
    "per device, ts = epoch ms at publish, seq = per-device counter from 0)",
    "acked": "publishes the broker acknowledged with PUBACK (accepted by Mosquitto, not yet by "
    "fieldhub)",
    "stored": "rows of metric 'seq' for the benchmark's devices in readings (one per message), "
    "read from <data-dir>/fieldhub.db opened read-only after fieldhub exited",
    "lost": "acked (device, seq) pairs with no stored row: an exact per-device check that "
    "seq 0..acked-1 are all present, not just a difference of totals",
    "duplicates": "stored 'seq' rows beyond the distinct (device, seq) pairs; the primary key "
    "(device, metric, ts) should make this 0. duplicate_counter_delta is fieldhub's own "
    f"{DUPLICATE_COUNTER_SAMPLE} over the run (redeliveries the key absorbed, not data errors)",
    "stored_rate": "stored / (last commit - first publish). The last commit is the first poll "
    f"of the row count that saw its final value; polls run every {SAMPLE_EVERY_S:g} s during "
    f"the load and every {SETTLE_POLL_S:g} s after it, so this is a lower bound by at most one "
    "poll interval. With a paced load it cannot exceed the offered rate: see drain_s",
    "received_rate": "stored / (max(received_at) - first publish): when fieldhub had received "
    "(not committed) the last message",
    "drain_s": "last commit - last publish: how far behind the load fieldhub was when it ended",
    "latency": f"publish -> commit from fieldhub's {LAG_HISTOGRAM} histogram (commit time minus "
    "the reading's ts, stamped by the loadgen at publish on the same clock): bucket deltas "
    "between a scrape before the load and one after the count settled, quantiles by linear "
    "interpolation inside the bucket (as PromQL histogram_quantile); the true value lies in "
    "'bucket_s', whose width is the resolution",
    "cpu": "per-process CPU time deltas once a second over the load window (first to last "
    "publish); 100 = one full core. fieldhub = the `fieldhub up` process and its descendants "
    "except Mosquitto; mosquitto = its Mosquitto child; loadgen = the generator process; "
    "machine_busy: 100 = all cores busy, whoever used them; others_cpu = machine busy minus "
    "those three, in % of one core (neighbours, the kernel's own threads, this orchestrator)",
    "cpu_per_message_us": "CPU microseconds per stored message, from the first publish to the "
    "last commit: (cpu mean over the load x its length + cpu mean after it x the drain) / "
    "stored. It says what a message costs when the rate is capped by the pacing; it is not "
    "constant: a fieldhub that falls behind (neighbours taking the cores) writes bigger "
    "batches and spends less per message, so compare runs with similar others_cpu",
    "medians": "each figure is the median across repeats (runs that failed to produce it are "
    "skipped)",
    "generator_capacity": "bench.loadgen --max against a bare Mosquitto (no subscriber) on this "
    "machine: PUBACKs received within the duration / duration",
    "broker_only": "bench.loadgen --max (same devices) against a bare Mosquitto with fieldhub's "
    f"max_inflight_messages ({MAX_INFLIGHT_MESSAGES}) and max_queued_messages "
    f"({MAX_QUEUED_MESSAGES}), one `{SUBSCRIBER_BIN} -q 1 -t '{TELEMETRY_FILTER}' --nodelay -c` "
    "(MQTT 3.1.1, persistent session as fieldhub's ingest, TCP_NODELAY as fieldhub's client) "
    f"that acks and prints only each message's receive time (-F {RECEIPT_FORMAT}) to a file. "
    "rate = delivered / (last delivery - first publish), the stored_rate formula with the "
    "subscriber's receipts for fieldhub's commits; delivered = receipts from the first publish "
    "on (a probe published before the load shows the subscription was in place), counted "
    "exactly from the file after the subscriber exited; not_delivered = PUBACKed by the broker "
    "but never delivered (Mosquitto drops beyond max_queued_messages)",
    "stored_rate_vs_broker_only": "median stored_rate / references.broker_only.rate: the share "
    "of the broker-only ceiling fieldhub stored. A paced load caps it at about rate / ceiling",
}


# --- the SQLite store -------------------------------------------------------------------------


def _connect_ro(db: Path) -> sqlite3.Connection:
    # Read-only and a fresh connection per poll: we must never hold a read transaction open
    # against fieldhub's writer (it would stall WAL checkpoints and grow the WAL).
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)


class RowCounter:
    """Cheap progress count of ``readings`` rows while fieldhub writes.

    ``max(rowid)`` is an O(log n) lookup and, with inserts only, equals the row count; a
    WITHOUT ROWID table has no rowid, so we fall back to ``count(*)`` (~25 ms at 2.4M rows,
    measured, i.e. ~2.5 % of a core at one poll per second: CPU taken from the system under test).
    """

    def __init__(self, db: Path) -> None:
        self.db = db
        self.query = "SELECT max(rowid) FROM readings"

    def rows(self) -> int | None:
        if not self.db.exists():
            return None
        try:
            con = _connect_ro(self.db)
            try:
                try:
                    (n,) = con.execute(self.query).fetchone()
                except sqlite3.OperationalError as exc:
                    if "rowid" not in str(exc):
                        raise
                    self.query = "SELECT count(*) FROM readings"
                    (n,) = con.execute(self.query).fetchone()
            finally:
                con.close()
        except sqlite3.OperationalError:
            return None  # table not created yet, or locked for longer than the timeout
        return int(n or 0)


def count_stored(
    db: Path, device_prefix: str, per_device_acked: list[int], per_device_sent: list[int]
) -> dict[str, Any]:
    """Exact per-device accounting of what fieldhub stored for the benchmark's devices."""
    if not db.exists():
        raise BenchError(f"{db} does not exist: did fieldhub use another file name?")
    con = _connect_ro(db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"devices", "metrics", "readings"} <= tables:
            raise BenchError(
                f"{db} lacks devices/metrics/readings (has {sorted(tables)}): schema changed?"
            )
        width = id_width(len(per_device_acked))
        index_by_uid = {
            device_uid(device_prefix, i, width).lower(): i for i in range(len(per_device_acked))
        }
        dev_index: dict[int, int] = {}
        for dev_id, uid in con.execute("SELECT id, uid FROM devices"):
            i = index_by_uid.get(str(uid).lower())
            if i is not None:
                dev_index[dev_id] = i
        row = con.execute("SELECT id FROM metrics WHERE name = ?", (SEQ_METRIC,)).fetchone()
        seqs: list[set[int]] = [set() for _ in per_device_acked]
        stored = 0
        unexpected = 0
        if row is not None:
            for dev_id, value in con.execute(
                "SELECT device_id, value FROM readings WHERE metric_id = ?", (row[0],)
            ):
                i = dev_index.get(dev_id)
                if i is None:
                    continue
                stored += 1
                v = float(value)
                if v.is_integer() and 0 <= v < per_device_sent[i]:
                    seqs[i].add(int(v))
                else:
                    unexpected += 1
        rows_by_metric: dict[str, int] = {}
        ids = ",".join(str(d) for d in dev_index) or "NULL"
        for name, n in con.execute(
            "SELECT m.name, count(*) FROM readings r JOIN metrics m ON m.id = r.metric_id "
            f"WHERE r.device_id IN ({ids}) GROUP BY m.name"
        ):
            rows_by_metric[str(name)] = int(n)
        received = con.execute(
            f"SELECT min(received_at), max(received_at) FROM readings WHERE device_id IN ({ids})"
        ).fetchone()
    finally:
        con.close()

    missing = 0
    devices_missing = 0
    examples: list[str] = []
    stored_unacked = 0
    for i, acked in enumerate(per_device_acked):
        have = seqs[i]
        present = sum(1 for v in have if v < acked)
        stored_unacked += len(have) - present
        if present < acked:
            devices_missing += 1
            missing += acked - present
            if len(examples) < 5:
                gone = [s for s in range(acked) if s not in have][:5]
                examples.append(f"{device_uid(device_prefix, i, width)} seq {gone}")
    distinct = sum(len(s) for s in seqs)
    total_rows = sum(rows_by_metric.values())
    return {
        "devices_found": len(dev_index),
        "stored": stored,
        "distinct": distinct,
        "duplicates": stored - distinct - unexpected,
        "unexpected_seq_rows": unexpected,
        "lost": missing,
        "devices_with_loss": devices_missing,
        "loss_examples": examples,
        "stored_unacked": stored_unacked,
        "rows_by_metric": rows_by_metric,
        "rows_per_message": round(total_rows / stored, 3) if stored else None,
        # received_at is epoch microseconds (fieldhub's schema).
        "received_first_epoch": received[0] / 1e6 if received and received[0] else None,
        "received_last_epoch": received[1] / 1e6 if received and received[1] else None,
    }


# --- authentication on: what a production fieldhub needs before it starts --------------------


def provision_auth(
    db_url: str, devices: int, device_prefix: str, password_file: Path
) -> dict[str, Any]:
    """Create fieldhub's database at ``db_url`` and put in it what auth-on runs need.

    One device credential per simulated device (a random secret, stored as its Mosquitto hash,
    as ``DeviceAccess.issue`` does) and a viewer API token for /metrics (stored as its sha256,
    as ``AuthService.create_token`` does), both through the store fieldhub itself opens, with
    fieldhub's own functions: nothing is hashed here. The secrets go to ``password_file``
    (JSON {device id: secret}, 0600) for ``bench.loadgen --password-file``. Returns the token.
    """
    width = id_width(devices)
    passwords: dict[str, str] = {}
    for i in range(devices):
        uid = device_uid(device_prefix, i, width)
        if device_username(uid) != uid:
            raise BenchError(f"device id {uid!r} is not its own broker username")
        passwords[uid] = secrets.token_urlsafe(SECRET_BYTES)

    async def put() -> str:
        store = open_store(db_url)
        await store.open()  # creates the database and runs the migrations, as fieldhub does
        try:
            now = clock.now_us()
            for uid, password in passwords.items():
                await store.put_device_credential(
                    DeviceCredentialRow(
                        device_id=uid,
                        password_hash=hash_password(password),
                        created_us=now,
                        rotated_us=now,
                    )
                )
            token_id, token = new_api_token()
            await store.insert_api_token(
                ApiTokenRow(
                    token_id=token_id,
                    name="bench-ingest",
                    token_hash=hash_secret(token),
                    role=Role.VIEWER.value,
                    created_by="bench",
                    created_us=now,
                    expires_us=None,
                )
            )
            return token
        finally:
            await store.close()

    t0 = time.monotonic()
    token = asyncio.run(put())
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(passwords, f)
    return {"token": token, "setup_s": round(time.monotonic() - t0, 2)}


class RunHooks:
    """Work another bench does inside a ``measured_run``, against the same `fieldhub up`.

    ``before_load`` runs once fieldhub is healthy and warmed up, before the first /metrics
    scrape and the load (bench.rules puts its rules in here); ``after_settle`` once the row
    count has settled, before fieldhub is stopped. Both get the HTTP base URL, the headers
    /metrics needs, and the run's dict to add figures, notes or errors to; raising
    ``BenchError`` fails the run like any other error."""

    label: str = "hooks"

    def before_load(self, base_url: str, headers: dict[str, str], run: dict[str, Any]) -> None:
        """Called before the load."""

    def after_settle(self, base_url: str, headers: dict[str, str], run: dict[str, Any]) -> None:
        """Called after the row count settled."""


# --- phases -------------------------------------------------------------------------------------


def _max_load(
    port: int,
    devices: int,
    duration_s: float,
    out: Path,
    log: Path,
    sampler: Sampler,
    what: str,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``bench.loadgen --max`` against ``port`` until it exits, sampling ``sampler`` once a
    second (the loadgen's own group added as "loadgen"); its full result."""
    proc = start_loadgen(
        port=port,
        devices=devices,
        duration_s=duration_s,
        out=out,
        log=log,
        max_mode=True,
        extra=extra,
    )
    lg = psutil.Process(proc.pid)
    sampler.add("loadgen", lambda: [lg] if lg.is_running() else [])
    sampler.sample()
    deadline = time.monotonic() + duration_s + LOADGEN_OVERRUN_S
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise BenchError(f"{what} loadgen overran its deadline:\n{tail(log)}")
            time.sleep(SAMPLE_EVERY_S)
            sampler.sample()
    finally:
        # It runs in its own session (a Ctrl-C here does not reach it): stop it ourselves.
        stop_process(proc)
    return read_loadgen_result(proc, out, log)


LOADGEN_FIGURES = (
    "sent",
    "acked",
    "offered_rate",
    "acked_rate",
    "acked_rate_within_duration",
    "puback_rtt_p50_ms",
    "puback_rtt_p99_ms",
    "disconnects",
    "cpu_percent",
    "connect_s",
)


def measure_capacity(devices: int, duration_s: float, workdir: Path) -> dict[str, Any]:
    """Generator capacity: loadgen --max against a bare Mosquitto with no subscriber."""
    say(f"phase 1a: generator capacity, loadgen --max, {devices} devices, {duration_s:g}s")
    out, log = workdir / "capacity-load.json", workdir / "capacity-load.log"
    with bare_mosquitto() as broker:
        sampler = Sampler()
        mq = psutil.Process(broker.proc.pid)
        sampler.add("mosquitto", lambda: [mq])
        result = _max_load(broker.port, devices, duration_s, out, log, sampler, "capacity")
    cpu = sampler.summary(result["first_publish_epoch"], result["first_publish_epoch"] + duration_s)
    capacity = result["acked_rate_within_duration"]
    say(
        f"  generator capacity: {capacity:,.0f} msg/s "
        f"(loadgen {cpu['loadgen']['cpu_mean_percent']}% cpu, "
        f"mosquitto {cpu['mosquitto']['cpu_mean_percent']}% cpu)"
    )
    return {
        "msg_per_s": capacity,
        "duration_s": duration_s,
        "devices": devices,
        "window": result["window"],
        "broker": "bare mosquitto, no subscriber",
        "loadgen": {k: result[k] for k in LOADGEN_FIGURES},
        "cpu": cpu,
    }


def _receipts(path: Path) -> int:
    """Messages the subscriber has printed so far (fixed-length lines, flushed one by one)."""
    try:
        return path.stat().st_size // RECEIPT_LINE_BYTES
    except FileNotFoundError:
        return 0


def _wait_subscribed(port: int, sub: subprocess.Popen[bytes], receipts: Path, log: Path) -> int:
    """Publish probes until the subscriber prints one; the number of probe lines it printed."""
    deadline = time.monotonic() + SUBSCRIBER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if sub.poll() is not None:
            raise BenchError(f"{SUBSCRIBER_BIN} exited with {sub.returncode}:\n{tail(log)}")
        subprocess.run(
            [MOSQUITTO_PUB_BIN, "-p", str(port), "-q", "1", "-t", PROBE_TOPIC, "-m", "probe"],
            check=False,
            capture_output=True,
            timeout=10,
        )
        t_probe = time.monotonic() + PROBE_WAIT_S
        while time.monotonic() < t_probe:
            if _receipts(receipts):
                # A probe published before the SUBSCRIBE took effect is lost, not late; give a
                # queued one the same time to arrive, so the count before the load is final.
                time.sleep(PROBE_WAIT_S)
                return _receipts(receipts)
            time.sleep(0.05)
    raise BenchError(
        f"{SUBSCRIBER_BIN} received no probe within {SUBSCRIBER_READY_TIMEOUT_S:g}s:\n{tail(log)}"
    )


def measure_broker_only(devices: int, duration_s: float, workdir: Path) -> dict[str, Any]:
    """Broker-only ceiling: loadgen --max against a bare Mosquitto (fieldhub's flow-control
    limits) delivering to one ``mosquitto_sub`` that does nothing but acknowledge."""
    say(
        f"phase 1b: broker-only ceiling, loadgen --max -> mosquitto -> {SUBSCRIBER_BIN} -q 1, "
        f"{devices} devices, {duration_s:g}s"
    )
    for binary in (SUBSCRIBER_BIN, MOSQUITTO_PUB_BIN):
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} not found: apt-get install mosquitto-clients")
    out, log = workdir / "broker-only-load.json", workdir / "broker-only-load.log"
    receipts, sub_log = workdir / "broker-only-receipts.txt", workdir / "broker-only-sub.log"
    settle_error: str | None = None
    with bare_mosquitto(
        max_queued_messages=MAX_QUEUED_MESSAGES, max_inflight_messages=MAX_INFLIGHT_MESSAGES
    ) as broker:
        cmd = [
            SUBSCRIBER_BIN,
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            TELEMETRY_FILTER,
            "-c",
            "-i",
            SUBSCRIBER_CLIENT_ID,
            "--nodelay",
            "-F",
            RECEIPT_FORMAT,
        ]
        with open(receipts, "wb") as rf, open(sub_log, "wb") as lf:
            sub = subprocess.Popen(cmd, stdout=rf, stderr=lf, start_new_session=True)
        try:
            probes = _wait_subscribed(broker.port, sub, receipts, sub_log)
            sampler = Sampler()
            mq, sp = psutil.Process(broker.proc.pid), psutil.Process(sub.pid)
            sampler.add("mosquitto", lambda: [mq])
            sampler.add("subscriber", lambda: [sp] if sp.is_running() else [])
            result = _max_load(
                broker.port, devices, duration_s, out, log, sampler, "broker-only", ("--timeline",)
            )
            # Until the subscriber has every message the broker accepted, or its count stopped.
            accepted = result["acked"]
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            last_n, last_change = _receipts(receipts), time.monotonic()
            next_sample = time.monotonic() + SAMPLE_EVERY_S
            while (n := _receipts(receipts)) - probes < accepted:
                now = time.monotonic()
                if n != last_n:
                    last_n, last_change = n, now
                elif now - last_change >= SETTLE_QUIET_S:
                    break  # not everything arrives: the result says how much did not
                if now > deadline:
                    settle_error = f"still receiving {SETTLE_TIMEOUT_S:.0f}s after the load ended"
                    break
                if sub.poll() is not None:
                    settle_error = f"{SUBSCRIBER_BIN} exited with {sub.returncode}"
                    break
                if now >= next_sample:
                    sampler.sample()
                    next_sample += SAMPLE_EVERY_S
                time.sleep(SETTLE_POLL_S)
            sampler.sample()
        finally:
            # SIGTERM: mosquitto_sub disconnects and exits; it flushed every line already.
            stop_process(sub)
    if settle_error is not None:
        raise BenchError(f"broker-only subscriber {settle_error}:\n{tail(sub_log)}")
    return broker_only_figures(result, receipts, sampler, duration_s)


def broker_only_figures(
    load: dict[str, Any], receipts: Path, sampler: Sampler, duration_s: float
) -> dict[str, Any]:
    """The broker-only reference from the loadgen's result and the subscriber's receipt times."""
    first_pub, last_pub = load["first_publish_epoch"], load["last_publish_epoch"]
    times = [float(line) for line in receipts.read_bytes().split()]
    received = [t for t in times if t >= first_pub]  # earlier lines are the probes
    delivered = len(received)
    last_delivery = max(received) if received else None
    within = sum(1 for t in received if t <= first_pub + duration_s)
    per_second = [0] * (int((last_delivery or first_pub) - first_pub) + 1)
    for t in received:
        per_second[int(t - first_pub)] += 1
    cpu = sampler.summary(first_pub, last_pub)
    cpu_after = sampler.summary(last_pub, last_delivery or last_pub)
    end = last_delivery or last_pub
    rate = round(delivered / (end - first_pub), 1) if delivered and end > first_pub else None
    cpu_us: dict[str, float | None] = {}
    for group in ("mosquitto", "subscriber"):
        during, after = (
            dig(cpu, f"{group}.cpu_mean_percent"),
            dig(cpu_after, f"{group}.cpu_mean_percent"),
        )
        cpu_s = (during or 0.0) / 100 * (last_pub - first_pub) + (after or 0.0) / 100 * (
            end - last_pub
        )
        cpu_us[group] = (
            round(cpu_s / delivered * 1e6, 2) if delivered and during is not None else None
        )
    figures = {
        "rate": rate,
        "delivered": delivered,
        "accepted": load["acked"],
        "not_delivered": load["acked"] - delivered,
        "delivered_rate_within_duration": round(within / duration_s, 1),
        "accepted_rate_within_duration": load["acked_rate_within_duration"],
        "drain_s": round(end - last_pub, 3),
        "duration_s": duration_s,
        "devices": load["devices"],
        "window": load["window"],
        "broker": "bare mosquitto, max_inflight_messages "
        f"{MAX_INFLIGHT_MESSAGES}, max_queued_messages {MAX_QUEUED_MESSAGES} (fieldhub's), "
        "no persistence",
        "subscriber": f"{SUBSCRIBER_BIN} -q 1 -t {TELEMETRY_FILTER} -c -i {SUBSCRIBER_CLIENT_ID} "
        f"--nodelay -F {RECEIPT_FORMAT} (MQTT 3.1.1, persistent session)",
        "loadgen": {k: load[k] for k in LOADGEN_FIGURES},
        "cpu": cpu,
        "cpu_after_load": cpu_after,
        "cpu_per_message_us": cpu_us,
        "per_second_sent": load.get("per_second_sent"),
        "per_second_delivered": per_second,
    }
    say(
        f"  broker-only ceiling: {rate:,.0f} msg/s delivered to {SUBSCRIBER_BIN} "
        f"({delivered:,} of {load['acked']:,} accepted, drain {figures['drain_s']} s; "
        f"mosquitto {cpu['mosquitto']['cpu_mean_percent']}% cpu, subscriber "
        f"{cpu['subscriber']['cpu_mean_percent']}%, loadgen {cpu['loadgen']['cpu_mean_percent']}%)"
        if rate is not None
        else f"  broker-only: the subscriber received nothing of {load['acked']:,} accepted"
    )
    return figures


def measured_run(
    k: int,
    n: int,
    args: argparse.Namespace,
    workdir: Path,
    auth: str = "off",
    hooks: RunHooks | None = None,
) -> dict[str, Any]:
    """One fresh `fieldhub up`, one paced load, one accounting. Errors go into the dict.

    ``auth`` "on": fieldhub with FIELDHUB_AUTH=true, its database prepared by
    ``provision_auth``, devices logging in and /metrics scraped with the token.
    ``hooks``: what another bench (bench.rules) does around the load on the same run; its
    ``label`` names the run's directory and progress lines instead of the auth mode."""
    label = hooks.label if hooks is not None else f"auth {auth}"
    tag = f"run {k}/{n} ({label})"
    rundir = workdir / f"run-{k}-{label.replace(' ', '-')}"
    data_dir = rundir / "data"
    data_dir.mkdir(parents=True)
    # fieldhub's Mosquitto may drop to user `mosquitto` (when we are root): let it read the dir.
    for d in (workdir, rundir, data_dir):
        d.chmod(0o755)
    mqtt_port, http_port = free_port(), free_port()
    while http_port == mqtt_port:
        http_port = free_port()
    fh_log, lg_log, lg_out = rundir / "fieldhub.log", rundir / "load.log", rundir / "load.json"
    run: dict[str, Any] = {
        "run": k,
        "auth": auth,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "errors": [],
        "notes": [],
    }
    headers: dict[str, str] = {}
    loadgen_extra = ["--window", str(args.window)]
    if auth == "on":
        password_file = rundir / "device-passwords.json"
        # The database fieldhub would use for this data dir (Settings.db_url's default).
        db_url = f"sqlite:///{(data_dir / 'fieldhub.db').absolute()}"
        try:
            prepared = provision_auth(db_url, args.devices, args.device_prefix, password_file)
        except Exception as exc:  # the store's errors, a bad id: the run cannot be measured
            run["errors"].append(f"preparing authentication: {type(exc).__name__}: {exc}")
            return run
        run["auth_setup_s"] = prepared["setup_s"]
        say(
            f"  {tag}: {args.devices} device credentials and a viewer token in the database "
            f"({prepared['setup_s']}s)"
        )
        headers = {"Authorization": f"Bearer {prepared['token']}"}
        loadgen_extra += ["--password-file", str(password_file)]
    say(f"phase 2: {tag}: fieldhub up (mqtt {mqtt_port}, http {http_port})")
    proc = start_fieldhub(
        args.fieldhub,
        data_dir,
        mqtt_port,
        http_port,
        fh_log,
        args.fieldhub_arg,
        env={"FIELDHUB_AUTH": "true" if auth == "on" else "false"},
    )
    loadgen: subprocess.Popen[bytes] | None = None
    mosq_pids: list[int] = []
    try:
        ready = wait_healthy(proc, fh_log, http_port, mqtt_port)
        http_port, mqtt_port = ready["http_port"], ready["mqtt_port"]
        run.update(startup_s=ready["startup_s"], ports={"mqtt": mqtt_port, "http": http_port})
        say(f"  {tag}: healthy after {ready['startup_s']}s")
        root = psutil.Process(proc.pid)
        mosq_pids = [p.pid for p in descendants(root) if is_mosquitto(p)]
        if not mosq_pids:
            run["notes"].append("no mosquitto child process found: mosquitto cpu not sampled")
        time.sleep(WARMUP_S)
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        if hooks is not None:
            hooks.before_load(f"http://127.0.0.1:{http_port}", headers, run)
        before = _scrape_or_note(metrics_url, run, headers)

        db = data_dir / "fieldhub.db"
        counter = RowCounter(db)
        sampler = Sampler()
        sampler.add(
            "fieldhub", lambda: [root, *(p for p in descendants(root) if not is_mosquitto(p))]
        )
        sampler.add("mosquitto", lambda: [p for p in descendants(root) if is_mosquitto(p)])
        # [seconds since load start, rows or None, fieldhub cpu %, mosquitto cpu %] per sample.
        timeline: list[list[Any]] = []
        # (epoch, rows) of every row count we took: the last commit is read off these.
        polls: list[tuple[float, int]] = []

        def count_rows() -> int | None:
            rows = counter.rows()
            if rows is not None:
                polls.append((time.time(), rows))
            return rows

        def sample(phase: str, rows: int | None, show: bool) -> None:
            s = sampler.sample()
            elapsed = s["t"] - t_load
            timeline.append([round(elapsed, 2), rows, s["fieldhub"]["cpu"], s["mosquitto"]["cpu"]])
            if show:
                say(
                    f"  {tag} {phase} {elapsed:5.1f}s  rows={rows}  "
                    f"fieldhub {s['fieldhub']['cpu']}% cpu {s['fieldhub']['rss'] / 2**20:.0f} MiB  "
                    f"mosquitto {s['mosquitto']['cpu']}% cpu  machine {s['machine_busy']}% busy"
                )

        sampler.sample()
        say(
            f"  {tag}: load {args.rate:,.0f} msg/s x {args.duration:g}s from {args.devices} devices"
        )
        t_load = time.time()
        loadgen = start_loadgen(
            port=mqtt_port,
            devices=args.devices,
            duration_s=args.duration,
            out=lg_out,
            log=lg_log,
            rate=args.rate,
            extra=loadgen_extra,
        )
        lg = psutil.Process(loadgen.pid)
        sampler.add("loadgen", lambda: [lg] if lg.is_running() else [])
        t0 = time.monotonic()
        overrun_at = t0 + args.duration + LOADGEN_OVERRUN_S
        # From a second before the schedule can end, count rows every SETTLE_POLL_S: the first
        # count that sees the final value dates the last commit, whether or not the loadgen has
        # finished its own drain and exit yet.
        fast_from = t0 + args.duration - 1.0
        next_sample = t0 + SAMPLE_EVERY_S
        next_show = t0 + PROGRESS_EVERY_S
        load: dict[str, Any] | None = None
        settle_deadline = math.inf
        last_rows: int | None = None
        last_change = t0
        while True:
            time.sleep(SETTLE_POLL_S)
            now_m = time.monotonic()
            if load is None and loadgen.poll() is not None:
                load = read_loadgen_result(loadgen, lg_out, lg_log)
                if loadgen.returncode != 0:
                    run["errors"].append(
                        f"loadgen exited {loadgen.returncode}:\n{tail(lg_log, 10)}"
                    )
                say(
                    f"  {tag}: load done (sent {load['sent']:,}, acked {load['acked']:,}); "
                    "waiting for the row count to settle"
                )
                settle_deadline = now_m + SETTLE_TIMEOUT_S
            if load is None and now_m > overrun_at:
                raise BenchError(f"loadgen overran its deadline:\n{tail(lg_log)}")
            is_sample = now_m >= next_sample
            show = is_sample and now_m >= next_show
            # The row count scans the table (~45 ms at 2.4M rows, WITHOUT ROWID): until the
            # end is near take it only with the progress line, so we steal ~1 % of a core.
            rows = count_rows() if show or now_m >= fast_from else None
            if rows is not None and rows != last_rows:
                last_rows, last_change = rows, now_m
            if is_sample:
                next_sample += SAMPLE_EVERY_S
                if show:
                    next_show += PROGRESS_EVERY_S
                sample("load" if load is None else "settle", rows, show)
            if load is not None:
                if now_m - last_change >= SETTLE_QUIET_S:
                    break
                if now_m > settle_deadline:
                    run["errors"].append(
                        f"row count still growing {SETTLE_TIMEOUT_S:.0f}s after the load ended"
                    )
                    break
        assert load is not None  # the loop only ends once the loadgen's result is in
        final_rows = last_rows
        t_last_commit = next((t for t, r in polls if r == final_rows), time.time())
        say(f"  {tag}: settled at rows={final_rows}")
        after = _scrape_or_note(metrics_url, run, headers)
        if hooks is not None:
            hooks.after_settle(f"http://127.0.0.1:{http_port}", headers, run)
    except (BenchError, RuntimeError) as exc:
        run["errors"].append(str(exc))
        return _finish_failed(run, proc, loadgen, mosq_pids, rundir)
    except BaseException:
        # Ctrl-C or a bug in this file: never leave fieldhub and its broker running.
        run["errors"].append("interrupted")
        _finish_failed(run, proc, loadgen, mosq_pids, rundir)
        raise

    run["shutdown"] = stop_fieldhub(proc, mosq_pids)
    run["errors"] += run["shutdown"].pop("errors")
    run["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    say(
        f"  {tag}: fieldhub stopped (exit {run['shutdown']['exit_code']} "
        f"in {run['shutdown']['exit_s']}s)"
    )

    try:
        counts = count_stored(
            db, args.device_prefix, load["per_device_acked"], load["per_device_sent"]
        )
    except (BenchError, sqlite3.Error) as exc:
        run["errors"].append(f"counting stored rows: {exc}")
        counts = {}
    rows_at_exit = RowCounter(db).rows()
    if rows_at_exit is not None and final_rows is not None and rows_at_exit > final_rows:
        run["notes"].append(
            f"{rows_at_exit - final_rows} rows were committed at shutdown, after the count had "
            "settled: the last commit time is taken as the shutdown time"
        )
        t_last_commit = time.time()

    first_pub = load["first_publish_epoch"]
    stored = counts.get("stored")
    run.update(
        offered=load["sent"],
        offered_rate=load["offered_rate"],
        acked=load["acked"],
        unacked=load["unacked"],
        stored=stored,
        lost=counts.get("lost"),
        acked_minus_stored=load["acked"] - stored if stored is not None else None,
        duplicates=counts.get("duplicates"),
        duplicate_counter_delta=_delta(before, after, DUPLICATE_COUNTER_SAMPLE),
        stored_rate=round(stored / (t_last_commit - first_pub), 1) if stored else None,
        received_rate=(
            round(stored / (counts["received_last_epoch"] - first_pub), 1)
            if stored and counts.get("received_last_epoch")
            else None
        ),
        drain_s=round(t_last_commit - load["last_publish_epoch"], 2),
        last_commit_epoch=t_last_commit,
        latency=_latency(before, after),
        cpu=sampler.summary(first_pub, load["last_publish_epoch"]),
        cpu_after_load=sampler.summary(load["last_publish_epoch"], t_last_commit),
        store=counts,
        load={k: v for k, v in load.items() if not k.startswith("per_device")},
        timeline=timeline,
    )
    run["cpu_per_message_us"] = cpu_per_message(run)
    if counts and counts["rows_per_message"] not in (None, EXPECTED_ROWS_PER_MESSAGE):
        run["notes"].append(
            f"{counts['rows_per_message']} rows per message, expected "
            f"{EXPECTED_ROWS_PER_MESSAGE} (seq, temperature, humidity, rssi)"
        )
    others = run["cpu"].get("others_cpu_mean_percent")
    if others is not None and others > OTHERS_CPU_WARN_PERCENT:
        run["notes"].append(
            f"other processes used {others}% of a core during the load: figures are perturbed"
        )
    if counts and counts["devices_found"] < args.devices:
        run["errors"].append(
            f"only {counts['devices_found']} of {args.devices} devices in the devices table"
        )
    lat = run["latency"] or {}
    say(
        f"  {tag}: stored {stored} of {load['acked']} acked, lost {run['lost']}, "
        f"dup {run['duplicates']}, stored rate {run['stored_rate']} msg/s, "
        f"p50 {lat.get('p50_s')} s, p99 {lat.get('p99_s')} s"
    )
    if not run["errors"] and not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return run


def cpu_per_message(run: dict[str, Any]) -> dict[str, float | None]:
    """CPU us per stored message of fieldhub and of its Mosquitto over first publish -> last
    commit, from the sampled means over the load and over the drain after it."""
    load, stored = run.get("load") or {}, run.get("stored")
    first, last = load.get("first_publish_epoch"), load.get("last_publish_epoch")
    end = run.get("last_commit_epoch")
    out: dict[str, float | None] = {}
    for group in ("fieldhub", "mosquitto"):
        during = dig(run, f"cpu.{group}.cpu_mean_percent")
        after = dig(run, f"cpu_after_load.{group}.cpu_mean_percent")
        if not stored or first is None or last is None or end is None or during is None:
            out[group] = None
            continue
        cpu_s = during / 100.0 * (last - first) + (after or 0.0) / 100.0 * max(0.0, end - last)
        out[group] = round(cpu_s / stored * 1e6, 1)
    fh, mq = out["fieldhub"], out["mosquitto"]
    out["total"] = round(fh + mq, 1) if fh is not None and mq is not None else None
    return out


def _finish_failed(
    run: dict[str, Any],
    proc: subprocess.Popen[bytes],
    loadgen: subprocess.Popen[bytes] | None,
    mosq_pids: list[int],
    rundir: Path,
) -> dict[str, Any]:
    if loadgen is not None and loadgen.poll() is None:
        stop_process(loadgen)
    shutdown = stop_fieldhub(proc, mosq_pids)
    run["errors"] += [e for e in shutdown.pop("errors") if "already exited" not in e]
    run["shutdown"] = shutdown
    run["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    run["logs"] = str(rundir)
    say(f"  run {run['run']} failed: {run['errors'][0].splitlines()[0]} (logs in {rundir})")
    return run


def _scrape_or_note(url: str, run: dict[str, Any], headers: dict[str, str]) -> str | None:
    try:
        return scrape(url, headers)
    except (OSError, RuntimeError, ValueError) as exc:
        run["notes"].append(f"cannot scrape {url}: {exc}")
        return None


def _delta(before: str | None, after: str | None, sample: str) -> float | None:
    if before is None or after is None:
        return None
    a, b = sample_sum(after, sample), sample_sum(before, sample)
    if a is None:
        return None
    return a - (b or 0.0)


def _latency(before: str | None, after: str | None) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    delta = bucket_delta(
        histogram_buckets(before, LAG_HISTOGRAM), histogram_buckets(after, LAG_HISTOGRAM)
    )
    if not delta:
        return {"error": f"no {LAG_HISTOGRAM} histogram in /metrics"}
    p50, p99 = histogram_quantile(delta, 0.50), histogram_quantile(delta, 0.99)
    return {
        "p50_s": round(p50["value_s"], 6) if p50 else None,
        "p99_s": round(p99["value_s"], 6) if p99 else None,
        "p50_bucket_s": p50["bucket_s"] if p50 else None,
        "p99_bucket_s": p99["bucket_s"] if p99 else None,
        "p99_above_last_bucket": bool(p99 and p99["above_last_bucket"]),
        "observations": max(delta.values()) if delta else 0,
        "bucket_bounds_s": [le for le in delta if le != float("inf")],
    }


# --- verdict ----------------------------------------------------------------------------------


def checks_for(
    bar_rate: float,
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    median: dict[str, Any],
    capacity: dict[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """Each condition of the bar with the value it was judged on."""
    ok_runs = [r for r in runs if not r["errors"]]
    stored_rate = median.get("stored_rate")
    cap = capacity["msg_per_s"] if capacity else None
    return {
        "config_meets_bar": {
            "ok": args.rate >= bar_rate
            and args.duration >= BAR_DURATION_S
            and args.devices >= BAR_DEVICES,
            "value": {"rate": args.rate, "duration_s": args.duration, "devices": args.devices},
        },
        "all_runs_completed": {
            "ok": bool(runs) and len(ok_runs) == len(runs),
            "value": f"{len(ok_runs)}/{len(runs)}",
        },
        "generator_kept_schedule": {
            "ok": median.get("offered_rate") is not None
            and median["offered_rate"] >= SCHEDULE_TOLERANCE * args.rate,
            "value": median.get("offered_rate"),
        },
        "zero_loss": {
            "ok": bool(runs) and all(r.get("lost") == 0 for r in runs),
            "value": [r.get("lost") for r in runs],
        },
        "zero_duplicates": {
            "ok": bool(runs) and all(r.get("duplicates") == 0 for r in runs),
            "value": [r.get("duplicates") for r in runs],
        },
        "kept_up": {
            "ok": median.get("drain_s") is not None and median["drain_s"] <= KEPT_UP_DRAIN_S,
            "value": median.get("drain_s"),
            "limit_s": KEPT_UP_DRAIN_S,
        },
        "every_run_kept_up": {
            "ok": bool(runs) and all(_run_kept_up(r, args.rate) for r in runs),
            "value": [[r.get("stored_rate"), r.get("drain_s")] for r in runs],
            "limits": {
                "stored_rate_min": EVERY_RUN_RATE_FRACTION * args.rate,
                "drain_s_max": EVERY_RUN_DRAIN_S,
            },
        },
        "generator_capacity_2x": {
            "ok": cap is not None
            and stored_rate is not None
            and cap >= CAPACITY_FACTOR * stored_rate,
            "value": round(cap / stored_rate, 2) if cap and stored_rate else None,
        },
        **_p99_at_bar(bar_rate, median),
    }


def _p99_at_bar(bar_rate: float, median: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The 10,000 msg/s bar's latency: publish -> commit p99 (median of the runs) within
    P99_BAR_S, no standing queue. The 20,000 msg/s goal has no latency bar."""
    if bar_rate != BAR_RATE:
        return {}
    p99 = median.get("latency.p99_s")
    ok = p99 is not None and p99 <= P99_BAR_S
    return {"p99_at_bar": {"ok": ok, "value": p99, "limit_s": P99_BAR_S}}


def _run_kept_up(run: dict[str, Any], rate: float) -> bool:
    stored, drain = run.get("stored_rate"), run.get("drain_s")
    return (
        stored is not None
        and drain is not None
        and stored >= EVERY_RUN_RATE_FRACTION * rate
        and drain <= EVERY_RUN_DRAIN_S
    )


def _ratio(on: Any, off: Any) -> float | None:
    if not isinstance(on, int | float) or not isinstance(off, int | float) or not off:
        return None
    return round(on / off, 3)


def compare_auth(by_auth: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Authentication on against off: ratios on/off of the modes' medians, and of each
    interleaved pair (run k off, run k on) for the stored rate and the latency percentiles."""
    on, off = by_auth["on"]["median"], by_auth["off"]["median"]
    ratios = {key: _ratio(on.get(key), off.get(key)) for key in AUTH_COMPARED}
    pairs: list[dict[str, Any]] = []
    for r_off in (r for r in runs if r["auth"] == "off"):
        r_on = next((r for r in runs if r["auth"] == "on" and r["run"] == r_off["run"]), None)
        if r_on is None:
            continue
        pairs.append(
            {
                "run": r_off["run"],
                **{
                    key: _ratio(dig(r_on, key), dig(r_off, key))
                    for key in (
                        "stored_rate",
                        "latency.p50_s",
                        "latency.p99_s",
                        "cpu_per_message_us.total",
                    )
                },
            }
        )
    stored = ratios["stored_rate"]
    p50, p99 = ratios["latency.p50_s"], ratios["latency.p99_s"]
    return {
        "ratio_on_off": ratios,
        "pairs": pairs,
        "stored_rate_within_5_percent": stored is not None and stored >= 1 - AUTH_TOLERANCE,
        "cpu_per_message_within_5_percent": (cpu := ratios["cpu_per_message_us.total"]) is not None
        and cpu <= 1 + AUTH_TOLERANCE,
        "latency_p50_within_5_percent": p50 is not None and p50 <= 1 + AUTH_TOLERANCE,
        "latency_p99_within_5_percent": p99 is not None and p99 <= 1 + AUTH_TOLERANCE,
        "how": "ratio of the auth-on median to the auth-off median of each figure (> 1: "
        "bigger with authentication). Rates: higher is better; latency, drain and CPU: lower "
        "is better. A paced load caps the stored rate at about rate x duration / (duration + "
        "drain): when both modes keep up, the cost of authentication shows in CPU and latency "
        "rather than in the stored rate. Neighbours move every figure: a starved fieldhub falls "
        "behind (rates down, latency up) and writes bigger batches (CPU per message down), so "
        "read the pairs with their runs' others_cpu_mean_percent",
    }


# --- main -----------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="MQTT ingest benchmark of `fieldhub up`; writes bench/results/ingest.json.",
    )
    p.add_argument("--rate", type=float, default=BAR_RATE, help="msg/s offered (default 10000)")
    p.add_argument("--duration", type=float, default=BAR_DURATION_S, help="seconds of load")
    p.add_argument("--devices", type=int, default=BAR_DEVICES, help="simulated devices")
    p.add_argument(
        "--repeats", type=int, default=3, help="measured runs per auth mode (medians are reported)"
    )
    p.add_argument(
        "--auth",
        choices=("off", "on", "both"),
        default="both",
        help="fieldhub without authentication (demo mode), with it (device credentials, API "
        "token), or both interleaved off, on, off, on, ... with the ratio on/off (default)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test the bench: rate 2000, 10 s, 100 devices, 1 run per auth mode, "
        "references 5 s each",
    )
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="unacked QoS 1 per device")
    p.add_argument(
        "--capacity-duration",
        type=float,
        default=10.0,
        help="seconds of loadgen --max for the capacity check",
    )
    p.add_argument(
        "--broker-only-duration",
        type=float,
        default=10.0,
        help="seconds of loadgen --max for the broker-only ceiling",
    )
    p.add_argument("--skip-capacity", action="store_true", help="skip phase 1a")
    p.add_argument("--skip-broker-only", action="store_true", help="skip phase 1b")
    p.add_argument("--capacity-only", action="store_true", help="only phase 1a (no fieldhub)")
    p.add_argument(
        "--references-only",
        action="store_true",
        help="only the references: generator capacity and broker-only ceiling (no fieldhub)",
    )
    p.add_argument(
        "--fieldhub",
        default=str(Path(sys.executable).parent / "fieldhub"),
        help="the fieldhub executable (default: the venv's)",
    )
    p.add_argument(
        "--fieldhub-arg",
        action="append",
        default=[],
        help="extra argument for `fieldhub up` (repeatable)",
    )
    p.add_argument("--device-prefix", default="bench", help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep data dirs and logs of good runs")
    p.add_argument("--output", type=Path, default=None, help="result file (default results/)")
    p.add_argument("--require-pass", action="store_true", help="exit 1 unless passed_10k (for CI)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the ingest benchmark and write bench/results/ingest.json."""
    args = _parse_args(argv)
    bench = start_bench("ingest", "fieldhub and the generator")
    started, workdir, notes = bench.started, bench.workdir, bench.notes
    background = bench.background_percent
    modes = list(AUTH_MODES) if args.auth == "both" else [args.auth]
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    say(
        f"ingest bench: rate {args.rate:,.0f} msg/s, {args.duration:g}s, {args.devices} devices, "
        f"{args.repeats} repeat(s) x auth {'/'.join(modes)}"
        f"{' (quick)' if args.quick else ''}"
        f"{' (references only)' if args.references_only else ''}; load average {loadavg_start}; "
        f"work dir {workdir}"
    )
    errors: list[str] = []
    capacity: dict[str, Any] | None = None
    broker_only: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = []
    try:
        if not args.skip_capacity:
            try:
                capacity = measure_capacity(args.devices, args.capacity_duration, workdir)
            except (BenchError, RuntimeError, OSError) as exc:
                errors.append(f"capacity check: {exc}")
                say(f"capacity check failed: {exc}")
        if not args.skip_broker_only and not args.capacity_only:
            try:
                broker_only = measure_broker_only(args.devices, args.broker_only_duration, workdir)
                if broker_only["not_delivered"]:
                    notes.append(
                        f"broker-only: {broker_only['not_delivered']:,} messages Mosquitto "
                        f"accepted were not delivered to {SUBSCRIBER_BIN} (dropped beyond "
                        "max_queued_messages): the ceiling is what it delivered"
                    )
            except (
                BenchError,
                RuntimeError,
                OSError,
                ValueError,
                subprocess.SubprocessError,
            ) as exc:
                errors.append(f"broker-only ceiling: {exc}")
                say(f"broker-only ceiling failed: {exc}")
        if not args.capacity_only and not args.references_only:
            if not Path(args.fieldhub).exists() and shutil.which(args.fieldhub) is None:
                errors.append(f"{args.fieldhub} not found: pip install -e . in the venv first")
            else:
                # Interleaved (off, on, off, on, ...): a drift of the machine hits both modes.
                for k in range(1, args.repeats + 1):
                    for mode in modes:
                        runs.append(measured_run(k, args.repeats, args, workdir, mode))
    except KeyboardInterrupt:
        errors.append("interrupted")
        say("interrupted: writing what we have")

    by_auth: dict[str, dict[str, Any]] = {}
    ceiling = broker_only["rate"] if broker_only else None
    for mode in modes:
        mode_runs = [r for r in runs if r["auth"] == mode]
        mode_median = median_of(mode_runs, MEDIAN_KEYS)
        stored_median = mode_median.get("stored_rate")
        mode_median["stored_rate_vs_broker_only"] = (
            round(stored_median / ceiling, 3) if stored_median and ceiling else None
        )
        mode_checks = checks_for(BAR_RATE, args, mode_runs, mode_median, capacity)
        by_auth[mode] = {
            "runs": [r["run"] for r in mode_runs],
            "median": mode_median,
            "checks": mode_checks,
            "passed_10k": all(c["ok"] for c in mode_checks.values()),
            "passed_20k": all(
                c["ok"]
                for c in checks_for(GOAL_RATE, args, mode_runs, mode_median, capacity).values()
            ),
        }
    # The headline figures are fieldhub's default configuration (authentication on) when it
    # was measured; by_auth has both.
    headline = "on" if "on" in by_auth else "off"
    median = by_auth[headline]["median"]
    checks = by_auth[headline]["checks"]
    comparison = compare_auth(by_auth, runs) if len(by_auth) == 2 and runs else None
    if capacity is not None:
        cap = capacity["msg_per_s"]
        stored = median.get("stored_rate")
        capacity["ratio_to_median_stored_rate"] = round(cap / stored, 2) if stored else None
        capacity["ratio_to_target_rate"] = round(cap / args.rate, 2)
        capacity["at_least_2x_measured"] = checks["generator_capacity_2x"]["ok"]
    result: dict[str, Any] = {
        "bench": "ingest",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "rate": args.rate,
            "duration_s": args.duration,
            "devices": args.devices,
            "repeats": args.repeats,
            "auth": args.auth,
            "auth_order": "interleaved: off, on, off, on, ..." if len(modes) == 2 else modes[0],
            "headline_auth": headline,
            "quick": args.quick,
            "references_only": args.references_only,
            "qos": 1,
            "window": args.window,
            "payload": '{"ts":<epoch ms>,"seq":<n>,"temperature":21.53,"humidity":45.1,'
            '"rssi":-61} on devices/bench-NNNN/telemetry',
            "fieldhub": args.fieldhub,
            "fieldhub_args": args.fieldhub_arg,
            "fieldhub_source": source_state(),
            "machine": {**machine_info(), "background_busy_percent": background},
        },
        "references": {"generator_capacity": capacity, "broker_only": broker_only},
        # Also here, where results before the references section have it.
        "generator_capacity": capacity,
        "median": median,
        "checks": checks,
        "passed_10k": by_auth[headline]["passed_10k"],
        "passed_20k": by_auth[headline]["passed_20k"],
        "by_auth": by_auth,
        "auth_comparison": comparison,
        "load_average": {
            "start": loadavg_start,
            "end": [round(x, 2) for x in os.getloadavg()],
            "note": "os.getloadavg() (1, 5, 15 min) at the bench's start and end; each run "
            "has loadavg_before (before its fieldhub started) and loadavg_after (after it "
            "stopped). The bench's own processes count in it: one run keeps ~1.5-2 busy",
        },
        "runs": runs,
        "methods": METHODS,
        "notes": notes
        + [f"run {r['run']} auth {r['auth']}: {n}" for r in runs for n in r["notes"]],
        "errors": errors
        + [f"run {r['run']} auth {r['auth']}: {e}" for r in runs for e in r["errors"]],
    }
    path = write_result("ingest", result, args.output)
    say(f"wrote {path}")
    _print_summary(result)
    tidy_workdir(workdir, keep=bool(result["errors"]) or args.keep)
    if result["errors"]:
        return 2
    return 1 if args.require_pass and not result["passed_10k"] else 0


def _print_summary(result: dict[str, Any]) -> None:
    cap = result["references"]["generator_capacity"]
    if cap:
        say(
            f"generator capacity {cap['msg_per_s']:,.0f} msg/s "
            f"(x{cap.get('ratio_to_median_stored_rate')} the median stored rate)"
        )
    broker = result["references"]["broker_only"]
    if broker and broker["rate"] is not None:
        cpu = broker["cpu"]
        say(
            f"broker-only ceiling {broker['rate']:,.0f} msg/s delivered to {SUBSCRIBER_BIN} "
            f"({broker['not_delivered']:,} accepted but not delivered, drain {broker['drain_s']} "
            f"s; mosquitto {cpu['mosquitto']['cpu_mean_percent']}% cpu, subscriber "
            f"{cpu['subscriber']['cpu_mean_percent']}%, loadgen "
            f"{cpu['loadgen']['cpu_mean_percent']}%, others {cpu['others_cpu_mean_percent']}%)"
        )
    for mode, figures in result["by_auth"].items():
        m = figures["median"]
        if not figures["runs"]:
            continue
        say(
            f"auth {mode} median: offered {m['offered_rate']} msg/s, stored {m['stored_rate']} "
            f"msg/s, lost {m['lost']}, dup {m['duplicates']}, drain {m['drain_s']} s, "
            f"p50 {m['latency.p50_s']} s, p99 {m['latency.p99_s']} s, "
            f"fieldhub {m['cpu.fieldhub.cpu_mean_percent']}% cpu "
            f"{m['cpu.fieldhub.rss_max_mb']} MiB, "
            f"mosquitto {m['cpu.mosquitto.cpu_mean_percent']}% cpu"
        )
        if m["stored_rate_vs_broker_only"] is not None:
            say(
                f"  auth {mode}: median stored rate = {m['stored_rate_vs_broker_only']:.1%} of "
                "the broker-only ceiling"
            )
        for name, c in figures["checks"].items():
            say(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {c['value']}")
        say(
            f"  auth {mode}: passed_10k {figures['passed_10k']}  passed_20k {figures['passed_20k']}"
        )
    comparison = result["auth_comparison"]
    if comparison:
        ratios = comparison["ratio_on_off"]
        say(
            f"auth on/off: stored rate x{ratios['stored_rate']}, p50 x{ratios['latency.p50_s']}, "
            f"p99 x{ratios['latency.p99_s']}, fieldhub cpu "
            f"x{ratios['cpu.fieldhub.cpu_mean_percent']}, mosquitto cpu "
            f"x{ratios['cpu.mosquitto.cpu_mean_percent']}, cpu per message "
            f"x{ratios['cpu_per_message_us.total']}; stored rate within "
            f"{AUTH_TOLERANCE:.0%}: {comparison['stored_rate_within_5_percent']}"
        )
    lavg = result["load_average"]
    say(f"load average: start {lavg['start']}, end {lavg['end']}")
    say(
        f"passed_10k (auth {result['config']['headline_auth']}): {result['passed_10k']}  "
        f"passed_20k: {result['passed_20k']}"
    )
    for e in result["errors"]:
        say(f"error: {e.splitlines()[0]}")


if __name__ == "__main__":
    sys.exit(main())
