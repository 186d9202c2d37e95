"""Rules benchmark: ingest with 1,000 rules vs none, and reading -> webhook latency.

Issue 16's bar: 1,000 rules over 1,000 devices at 10,000 readings/s keep ingest throughput
within 10 % of no rules (same run, side by side), and a reading that crosses a threshold reaches
the rule's webhook within 50 ms (p99) at 1,000 readings/s. Run ``./scripts/bench rules`` (or
``--quick`` to smoke-test the bench); the result goes to ``bench/results/rules.json``.

Phase A, throughput: ``bench.ingest``'s measured run (fresh `fieldhub up`, ``bench.loadgen`` at
``--rate`` for ``--duration`` s from ``--devices`` connections, CPU sampled, every stored row
accounted for), interleaved without rules and with one cold-room rule per device put through
``PUT /api/v1/rules/{id}`` before the load. The rule engine's own metrics are scraped every
2 s during the load and until its evaluation count stops moving.

Phase B, latency: a fresh `fieldhub up` with one rule per device whose threshold the device's
readings cross on purpose, an alarm and a signed webhook to an HTTP server this process runs;
a publisher process sends ``--b-rate`` readings/s; each webhook's receive time minus the
reading's own time (stamped at publish) is publish -> webhook received.

Authentication is off (demo mode, FIELDHUB_AUTH=false) in both phases: it is not what is
measured here (bench.ingest measures its cost), and the rules API then needs no token.
See bench/README.md for the method and the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

from bench import ingest
from bench.common import (
    BenchError,
    Sampler,
    descendants,
    dig,
    free_port,
    is_mosquitto,
    machine_info,
    median_of,
    sample_sum,
    say,
    scrape,
    start_bench,
    start_fieldhub,
    stop_fieldhub,
    stop_process,
    tail,
    tidy_workdir,
    wait_healthy,
    write_result,
)
from bench.loadgen import DEFAULT_WINDOW, device_uid, id_width

# --- the bar -----------------------------------------------------------------------------------

BAR_RULES = 1000
BAR_DEVICES = 1000
BAR_RATE = 10_000.0
BAR_DURATION_S = 60.0
THROUGHPUT_TOLERANCE = 0.10
BAR_B_RATE = 1000.0
BAR_P99_MS = 50.0

# --- the rules ---------------------------------------------------------------------------------

HOOK_SECRET_ENV = "FIELDHUB_BENCH_HOOK_SECRET"
# Phase A: the cold-room rule of examples/rules/cold-room.yaml, one per device (each fridge its
# own rule, as a site with different goods per room has), at a level the loadgen's temperatures
# (17-25 degrees C) never reach: the engine evaluates every reading and the 1 s timer ticks
# every (rule, device) `for` state, but nothing fires, as in a cold room working normally.
A_ABOVE, A_CLEAR, A_FOR_S = 30.0, 28.0, 600
# Phase B: the publisher sends LOW until a device's turn, then HIGH, LOW, HIGH, ... so each of
# its readings crosses the level: fire, clear, fire, ... (for_s 0: fires at the reading).
B_ABOVE, B_CLEAR = 20.0, 10.0
B_HIGH, B_LOW = 30.0, 5.0

# --- timing ------------------------------------------------------------------------------------

ENGINE_SCRAPE_EVERY_S = 2.0
# After the rows settled: the engine has caught up once its evaluation count has not moved
# for this long.
ENGINE_QUIET_S = 3.0
ENGINE_SETTLE_TIMEOUT_S = 120.0
B_WARMUP_S = 2.0
# After the publisher is done: wait until no webhook arrived for this long (or every device's
# first fire is in).
B_QUIET_S = 3.0
B_SETTLE_TIMEOUT_S = 60.0
PUBLISH_TICK_S = 0.01

QUICK = {
    "rate": 2000.0,
    "duration": 10.0,
    "devices": 100,
    "repeats": 1,
    "b_rate": 100.0,
    "b_duration": 10.0,
    "b_repeats": 1,
}

A_MEDIAN_KEYS = (
    *ingest.MEDIAN_KEYS,
    "engine.lag_max_s",
    "engine.lag_median_s",
    "engine.evaluations_reading",
    "engine.evaluations_tick",
    "engine.caught_up_after_last_publish_s",
    "engine.put_rules_s",
)
B_MEDIAN_KEYS = (
    "committed_ms.p50",
    "committed_ms.p90",
    "committed_ms.p99",
    "committed_ms.max",
    "latency_ms.p50",
    "latency_ms.p90",
    "latency_ms.p99",
    "latency_ms.max",
    "engine_to_webhook_ms.p50",
    "engine_to_webhook_ms.p99",
    "publish_to_engine_ms.p50",
    "publish_to_engine_ms.p99",
    "ingest_lag.p50_s",
    "ingest_lag.p99_s",
    "samples",
    "offered_rate",
    "cpu.fieldhub.cpu_mean_percent",
    "cpu.mosquitto.cpu_mean_percent",
    "cpu.publisher.cpu_mean_percent",
    "cpu.others_cpu_mean_percent",
)

METHODS = {
    "auth": "authentication off (demo mode, FIELDHUB_AUTH=false) in both phases: the rules API "
    "takes writes without a token and devices connect anonymously; bench.ingest measures what "
    "authentication costs",
    "phase_a": "bench.ingest's measured run (see its methods) with and without rules, "
    "interleaved (no rules, rules, no rules, ...), each on a fresh `fieldhub up`. With rules: "
    f"before the load, one rule per device is PUT through /api/v1/rules/{{id}}: scope "
    f"{{device: <id>}}, threshold temperature above {A_ABOVE} clear below {A_CLEAR} for "
    f"{A_FOR_S} s, an alarm and a signed webhook (the cold-room example). The loadgen's "
    "temperatures stay 17-25, so every reading is evaluated and nothing fires",
    "ratio": "with-rules median / no-rules median of each figure; stored_rate is judged: "
    f"within {THROUGHPUT_TOLERANCE:.0%} means ratio >= {1 - THROUGHPUT_TOLERANCE}. With a paced "
    "load stored_rate is capped near the offered rate: a fieldhub that keeps up stores the same "
    "with or without rules, so the CPU figures and drain_s say what the rules cost",
    "engine": "fieldhub_rules_evaluation_lag_seconds (commit -> evaluation of the latest "
    f"batch, a gauge) scraped every {ENGINE_SCRAPE_EVERY_S:g} s from the load's start until the "
    "engine's fieldhub_rules_evaluations_total{by=reading} stopped moving for "
    f"{ENGINE_QUIET_S:g} s; caught_up_after_last_publish_s is when it last moved, after the "
    "last publish (a scrape's resolution)",
    "phase_b": "one rule per device (scope {device: <id>}), threshold temperature above "
    f"{B_ABOVE} clear below {B_CLEAR}, for_s 0, an alarm and a webhook signed with a secret "
    "(HMAC-SHA256, verified on receipt) to an HTTP server in the bench process. A publisher "
    "process (paho-mqtt, one QoS 1 connection publishing to every device's topic "
    "devices/<id>/telemetry) paces --b-rate readings/s round-robin over the devices, "
    '{"ts": <epoch us at publish>, "seq": n, "temperature": T}; device i sends '
    f"{B_LOW} until its turn (turns spread evenly over the run), then {B_HIGH}, {B_LOW}, "
    f"{B_HIGH}, ...: every reading from then on is an edge (fire, clear, ...). fieldhub's "
    "dispatcher sends a rule's first notification at once and folds those that follow within "
    "60 s into one digest per rule and target: each rule's first fire is a lone webhook, the "
    "rest become digests. So the samples are the lone webhooks (one per device, spread evenly "
    "over the run) while the engine evaluates every reading and handles every edge (alarm "
    "raised and cleared, notification submitted)",
    "committed_ms": "judged: webhook received (time.time() when the request's body has been "
    "read) minus the payload's stored_us (when fieldhub committed the reading that made the "
    "edge): the issue's reading committed -> webhook received",
    "latency_ms": "webhook received minus the payload's at_us (the edge's reading time = the "
    "publisher's clock at publish): publish -> webhook received, committed_ms plus ingest's "
    "share (ingest_lag: publish -> commit, fieldhub's histogram over the run)",
    "engine_to_webhook_ms": "received minus the notification's created_us (when the engine "
    "handed it to the dispatcher, after the commit): a lower bound of committed -> received",
    "patterns": "alternate (judged): from its turn on, a device's every reading is an edge, "
    "alarm raised or cleared and a notification submitted each time (up to 1,000 edges/s); "
    "once: from its turn on the device stays high, one fire per device (~devices / duration "
    "edges/s): the same 1,000 readings/s evaluated, the lone edge's latency without the "
    "others' alarm writes ahead of it. Interleaved alternate, once, alternate, ...",
    "publish_to_engine_ms": "created_us minus at_us: publish -> commit -> evaluation -> alarm "
    "raised -> notification created",
    "medians": "each figure is the median across repeats",
    "load": "os.getloadavg() before each run's fieldhub started and after it stopped",
}


# --- the rules API -------------------------------------------------------------------------------


def cold_room_rule(uid: str, hook_url: str) -> dict[str, Any]:
    """Phase A's rule for one device (never fires on the loadgen's temperatures)."""
    return {
        "id": f"bench-cold-{uid}",
        "name": f"Cold room {uid} above {A_ABOVE:g} for {A_FOR_S // 60} min",
        "scope": {"device": uid},
        "condition": {
            "threshold": {
                "metric": "temperature",
                "above": A_ABOVE,
                "clear_below": A_CLEAR,
                "for_s": A_FOR_S,
            }
        },
        "severity": "major",
        "actions": [{"alarm": {}}, {"webhook": {"url": hook_url, "secret_env": HOOK_SECRET_ENV}}],
        "repeat_every_s": 3600,
    }


def edge_rule(uid: str, hook_url: str) -> dict[str, Any]:
    """Phase B's rule for one device: every reading of the publisher crosses it."""
    return {
        "id": f"bench-edge-{uid}",
        "name": f"{uid} above {B_ABOVE:g}",
        "scope": {"device": uid},
        "condition": {
            "threshold": {"metric": "temperature", "above": B_ABOVE, "clear_below": B_CLEAR}
        },
        "severity": "major",
        "actions": [{"alarm": {}}, {"webhook": {"url": hook_url, "secret_env": HOOK_SECRET_ENV}}],
    }


def put_rules(base_url: str, headers: dict[str, str], docs: list[dict[str, Any]]) -> float:
    """PUT every document to /api/v1/rules/{id} on one kept-alive connection; seconds taken."""
    host_port = base_url.removeprefix("http://")
    conn = http.client.HTTPConnection(host_port, timeout=30)
    t0 = time.monotonic()
    try:
        for doc in docs:
            body = json.dumps(doc).encode()
            conn.request(
                "PUT",
                f"/api/v1/rules/{doc['id']}",
                body=body,
                headers={"Content-Type": "application/json", **headers},
            )
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status not in (200, 201):
                raise BenchError(
                    f"PUT /api/v1/rules/{doc['id']} answered {resp.status}: {answer[:300]!r}"
                )
    finally:
        conn.close()
    return time.monotonic() - t0


def _loaded_rules(base_url: str, headers: dict[str, str]) -> float | None:
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        return sample_sum(scrape(f"{base_url}/metrics", headers), "fieldhub_rules_loaded")
    return None


# --- the webhook receiver -------------------------------------------------------------------------


class Receiver:
    """An HTTP server in a thread that records every POST: receive time, headers, body."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.posts: list[tuple[int, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: httpx reuses the connection

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                received_ns = time.time_ns()
                with receiver._lock:
                    receiver.posts.append((received_ns, dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self) -> int:
        with self._lock:
            return len(self.posts)

    def take(self) -> list[tuple[int, dict[str, str], bytes]]:
        with self._lock:
            posts, self.posts = self.posts, []
        return posts


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """fieldhub's own receiver check (signature over timestamp.body, 300 s tolerance)."""
    from fieldhub.notify.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

    lower = {k.lower(): v for k, v in headers.items()}
    ts = lower.get(TIMESTAMP_HEADER.lower())
    sig = lower.get(SIGNATURE_HEADER.lower())
    if ts is None or sig is None:
        return False
    return bool(verify_signature(secret, ts, body, sig))


# --- phase A ------------------------------------------------------------------------------------


class EngineWatch(ingest.RunHooks):
    """Phase A's hooks: put the rules in (or not), scrape the engine during and after the load."""

    def __init__(self, with_rules: bool, devices: int, hook_url: str, prefix: str) -> None:
        self.with_rules = with_rules
        self.label = "rules" if with_rules else "no-rules"
        width = id_width(devices)
        self.docs = (
            [cold_room_rule(device_uid(prefix, i, width), hook_url) for i in range(devices)]
            if with_rules
            else []
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[tuple[float, float | None, float | None]] = []

    def before_load(self, base_url: str, headers: dict[str, str], run: dict[str, Any]) -> None:
        engine: dict[str, Any] = {"rules_put": len(self.docs)}
        if self.docs:
            say(f"  PUT {len(self.docs)} rules")
            try:
                engine["put_rules_s"] = round(put_rules(base_url, headers, self.docs), 2)
            except OSError as exc:
                raise BenchError(f"putting the rules: {exc}") from exc
            say(f"  {len(self.docs)} rules in {engine['put_rules_s']} s")
        engine["rules_loaded"] = _loaded_rules(base_url, headers)
        if self.docs and engine["rules_loaded"] != len(self.docs):
            raise BenchError(
                f"fieldhub_rules_loaded is {engine['rules_loaded']} after {len(self.docs)} PUTs"
            )
        run["engine"] = engine
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, args=(f"{base_url}/metrics", headers), daemon=True
        )
        self._thread.start()

    def _watch(self, url: str, headers: dict[str, str]) -> None:
        while not self._stop.wait(ENGINE_SCRAPE_EVERY_S):
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                text = scrape(url, headers)
                self._samples.append(
                    (
                        time.time(),
                        sample_sum(text, "fieldhub_rules_evaluation_lag_seconds"),
                        _evaluations(text, "reading"),
                    )
                )

    def after_settle(self, base_url: str, headers: dict[str, str], run: dict[str, Any]) -> None:
        # The rows are in; the engine may still be working through the bus: wait until its
        # evaluation count stops moving.
        deadline = time.monotonic() + ENGINE_SETTLE_TIMEOUT_S
        last_move = time.monotonic()
        last = self._samples[-1][2] if self._samples else None
        while time.monotonic() - last_move < ENGINE_QUIET_S:
            if time.monotonic() > deadline:
                run["notes"].append("the rule engine was still evaluating at the settle timeout")
                break
            time.sleep(0.5)
            current = self._samples[-1][2] if self._samples else None
            if current != last:
                last, last_move = current, time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        text = scrape(f"{base_url}/metrics", headers)
        engine = run.setdefault("engine", {})
        lags = [lag for _, lag, _ in self._samples if lag is not None]
        moves = [
            t
            for (t, _, ev), (_, _, prev) in zip(self._samples[1:], self._samples, strict=False)
            if ev != prev
        ]
        engine.update(
            lag_max_s=round(max(lags), 4) if lags else None,
            lag_median_s=round(statistics.median(lags), 4) if lags else None,
            lag_samples=[round(lag, 4) for lag in lags],
            evaluations_reading=_evaluations(text, "reading"),
            evaluations_tick=_evaluations(text, "tick"),
            edges=sample_sum(text, "fieldhub_rules_edges_total"),
            bus_dropped=sample_sum(text, "fieldhub_rules_bus_dropped_total"),
            alarms_open=sample_sum(text, "fieldhub_rules_alarms_open"),
            last_evaluation_move_epoch=moves[-1] if moves else None,
        )

    def finish(self, run: dict[str, Any]) -> None:
        """After the run: when the engine caught up, relative to the last publish."""
        engine = run.get("engine") or {}
        last_pub = dig(run, "load.last_publish_epoch")
        moved = engine.get("last_evaluation_move_epoch")
        if last_pub is not None and moved is not None:
            engine["caught_up_after_last_publish_s"] = round(max(0.0, moved - last_pub), 2)
        if self._thread is not None:
            self._stop.set()


def _evaluations(text: str, by: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "fieldhub_rules_evaluations_total" and s.labels.get("by") == by:
                return float(s.value)
    return None


def phase_a(args: argparse.Namespace, workdir: Path, hook_url: str) -> list[dict[str, Any]]:
    """Interleaved no-rules / rules runs of bench.ingest's measured run."""
    runs: list[dict[str, Any]] = []
    for k in range(1, args.repeats + 1):
        for with_rules in (False, True):
            hooks = EngineWatch(with_rules, args.devices, hook_url, args.device_prefix)
            say(f"phase A: run {k}/{args.repeats} {hooks.label}")
            run = ingest.measured_run(k, args.repeats, args, workdir, "off", hooks)
            hooks.finish(run)
            run["rules"] = args.devices if with_rules else 0
            if not args.timeline:
                run.pop("timeline", None)
            runs.append(run)
    return runs


def summarize_a(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, Any] = {}
    for label, n_rules in (("no_rules", False), ("rules", True)):
        mine = [r for r in runs if bool(r["rules"]) == n_rules]
        by[label] = {"runs": [r["run"] for r in mine], "median": median_of(mine, A_MEDIAN_KEYS)}
    ratios = {
        key: _ratio(by["rules"]["median"].get(key), by["no_rules"]["median"].get(key))
        for key in (
            "stored_rate",
            "received_rate",
            "drain_s",
            "latency.p50_s",
            "latency.p99_s",
            "cpu.fieldhub.cpu_mean_percent",
            "cpu_per_message_us.fieldhub",
            "cpu_per_message_us.total",
        )
    }
    pairs = []
    for r_no in (r for r in runs if not r["rules"]):
        r_yes = next((r for r in runs if r["rules"] and r["run"] == r_no["run"]), None)
        if r_yes is None:
            continue
        pairs.append(
            {
                "run": r_no["run"],
                "stored_rate": [r_no.get("stored_rate"), r_yes.get("stored_rate")],
                "ratio": _ratio(r_yes.get("stored_rate"), r_no.get("stored_rate")),
                "fieldhub_cpu": [
                    dig(r_no, "cpu.fieldhub.cpu_mean_percent"),
                    dig(r_yes, "cpu.fieldhub.cpu_mean_percent"),
                ],
                "others_cpu": [
                    dig(r_no, "cpu.others_cpu_mean_percent"),
                    dig(r_yes, "cpu.others_cpu_mean_percent"),
                ],
            }
        )
    return {"by_rules": by, "ratio_rules_no_rules": ratios, "pairs": pairs}


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, 3)


# --- phase B ------------------------------------------------------------------------------------


def first_turn(index: int, devices: int, readings_per_device: int) -> int:
    """The reading number from which device ``index`` crosses: turns spread over the run."""
    return index * readings_per_device // devices


PATTERNS = ("alternate", "once")


def b_value(index: int, n: int, devices: int, readings_per_device: int, pattern: str) -> float:
    """Device ``index``'s ``n``-th temperature: low before its turn, then high, low, high, ...
    (``alternate``: every reading an edge) or high from then on (``once``: one fire)."""
    turn = first_turn(index, devices, readings_per_device)
    if n < turn:
        return B_LOW
    if pattern == "once":
        return B_HIGH
    return B_HIGH if (n - turn) % 2 == 0 else B_LOW


def publish_main(argv: list[str]) -> int:
    """``python -m bench.rules publish ...``: phase B's paced publisher (its own process)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    p = argparse.ArgumentParser(prog="python -m bench.rules publish")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--prefix", default="bench")
    p.add_argument("--pattern", choices=PATTERNS, default="alternate")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    width = id_width(a.devices)
    topics = [f"devices/{device_uid(a.prefix, i, width)}/telemetry" for i in range(a.devices)]
    per_device = max(1, round(a.rate * a.duration / a.devices))
    acked = 0
    lock = threading.Lock()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-rules-publisher", clean_session=True
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", a.port, keepalive=60)
    client.loop_start()
    total = round(a.rate * a.duration)
    counts = [0] * a.devices
    sent = 0
    t0 = time.monotonic()
    first_epoch: float | None = None
    last_epoch = 0.0
    behind_max = 0.0
    while sent < total:
        due = min(total, int((time.monotonic() - t0) * a.rate) + 1)
        while sent < due:
            i = sent % a.devices
            n = counts[i]
            counts[i] += 1
            ts_us = time.time_ns() // 1000
            value = b_value(i, n, a.devices, per_device, a.pattern)
            payload = f'{{"ts":{ts_us},"seq":{n},"temperature":{value}}}'
            client.publish(topics[i], payload, qos=1)
            if first_epoch is None:
                first_epoch = ts_us / 1e6
            last_epoch = ts_us / 1e6
            sent += 1
        behind_max = max(behind_max, time.monotonic() - t0 - sent / a.rate)
        time.sleep(PUBLISH_TICK_S)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if acked >= sent:
                break
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    span = max(a.duration, last_epoch - (first_epoch or last_epoch))
    a.out.write_text(
        json.dumps(
            {
                "sent": sent,
                "acked": acked,
                "first_publish_epoch": first_epoch,
                "last_publish_epoch": last_epoch,
                "offered_rate": round(sent / span, 1),
                "readings_per_device": per_device,
                "behind_schedule_max_s": round(behind_max, 3),
                "cpu_s": round(sum(os.times()[:2]), 2),
            }
        )
    )
    return 0


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    v = sorted(values)

    def q(p: float) -> float:
        return round(v[min(len(v) - 1, max(0, round(p * len(v)) - 1))], 2)

    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": round(v[-1], 2), "n": len(v)}


def latency_run(k: int, args: argparse.Namespace, workdir: Path, pattern: str) -> dict[str, Any]:
    """One fresh fieldhub with edge rules, one paced publisher, the webhooks timed."""
    tag = f"B run {k}/{args.b_repeats} ({pattern})"
    rundir = workdir / f"b-run-{k}-{pattern}"
    data_dir = rundir / "data"
    data_dir.mkdir(parents=True)
    for d in (workdir, rundir, data_dir):
        d.chmod(0o755)
    mqtt_port, http_port = free_port(), free_port()
    fh_log, pub_out, pub_log = rundir / "fieldhub.log", rundir / "pub.json", rundir / "pub.log"
    secret = secrets.token_urlsafe(24)
    run: dict[str, Any] = {
        "run": k,
        "pattern": pattern,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "errors": [],
        "notes": [],
    }
    width = id_width(args.devices)
    engine_lags: list[float] = []
    uids = [device_uid(args.device_prefix, i, width) for i in range(args.devices)]
    with Receiver(secret) as receiver:
        proc = start_fieldhub(
            args.fieldhub,
            data_dir,
            mqtt_port,
            http_port,
            fh_log,
            args.fieldhub_arg,
            env={"FIELDHUB_AUTH": "false", HOOK_SECRET_ENV: secret},
        )
        mosq_pids: list[int] = []
        pub: subprocess.Popen[bytes] | None = None
        try:
            ready = wait_healthy(proc, fh_log, http_port, mqtt_port)
            http_port, mqtt_port = ready["http_port"], ready["mqtt_port"]
            base = f"http://127.0.0.1:{http_port}"
            root = psutil.Process(proc.pid)
            mosq_pids = [p.pid for p in descendants(root) if is_mosquitto(p)]
            run["put_rules_s"] = round(
                put_rules(base, {}, [edge_rule(uid, receiver.url) for uid in uids]), 2
            )
            loaded = _loaded_rules(base, {})
            if loaded != len(uids):
                raise BenchError(f"fieldhub_rules_loaded is {loaded} after {len(uids)} PUTs")
            say(f"  {tag}: {len(uids)} rules in {run['put_rules_s']} s")
            time.sleep(B_WARMUP_S)
            before = scrape(f"{base}/metrics")
            sampler = Sampler()
            sampler.add(
                "fieldhub", lambda: [root, *(p for p in descendants(root) if not is_mosquitto(p))]
            )
            sampler.add("mosquitto", lambda: [p for p in descendants(root) if is_mosquitto(p)])
            sampler.sample()
            cmd = [
                sys.executable,
                "-m",
                "bench.rules",
                "publish",
                "--port",
                str(mqtt_port),
                "--devices",
                str(args.devices),
                "--rate",
                str(args.b_rate),
                "--duration",
                str(args.b_duration),
                "--prefix",
                args.device_prefix,
                "--pattern",
                pattern,
                "--out",
                str(pub_out),
            ]
            say(f"  {tag}: publishing {args.b_rate:,.0f} readings/s x {args.b_duration:g}s")
            with open(pub_log, "wb") as f:
                pub = subprocess.Popen(
                    cmd,
                    cwd=Path(__file__).resolve().parent.parent,
                    stdout=subprocess.DEVNULL,
                    stderr=f,
                    start_new_session=True,
                )
            pp = psutil.Process(pub.pid)
            sampler.add("publisher", lambda: [pp] if pp.is_running() else [])
            t0 = time.monotonic()
            next_show = t0 + 5.0
            while pub.poll() is None:
                if time.monotonic() > t0 + args.b_duration + 60:
                    raise BenchError(f"publisher overran:\n{tail(pub_log)}")
                time.sleep(1.0)
                s = sampler.sample()
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    lag = sample_sum(
                        scrape(f"{base}/metrics"), "fieldhub_rules_evaluation_lag_seconds"
                    )
                    if lag is not None:
                        engine_lags.append(round(lag, 4))
                if time.monotonic() >= next_show:
                    next_show += 5.0
                    say(
                        f"  {tag} {time.monotonic() - t0:5.1f}s webhooks={receiver.count()} "
                        f"fieldhub {s['fieldhub']['cpu']}% cpu, machine {s['machine_busy']}% busy"
                    )
            if pub.returncode != 0 or not pub_out.exists():
                raise BenchError(f"publisher exited {pub.returncode}:\n{tail(pub_log)}")
            load = json.loads(pub_out.read_text())
            # Every device's first fire is a lone webhook: wait for them, or for quiet.
            deadline = time.monotonic() + B_SETTLE_TIMEOUT_S
            last_n, last_move = receiver.count(), time.monotonic()
            while time.monotonic() - last_move < B_QUIET_S and time.monotonic() < deadline:
                time.sleep(0.25)
                if (n := receiver.count()) != last_n:
                    last_n, last_move = n, time.monotonic()
            after = scrape(f"{base}/metrics")
        except (BenchError, RuntimeError, OSError) as exc:
            run["errors"].append(str(exc))
            if pub is not None and pub.poll() is None:
                stop_process(pub)
            run["shutdown"] = stop_fieldhub(proc, mosq_pids)
            run["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            run["logs"] = str(rundir)
            say(f"  {tag} failed: {str(exc).splitlines()[0]} (logs in {rundir})")
            return run
        except BaseException:
            if pub is not None and pub.poll() is None:
                stop_process(pub)
            stop_fieldhub(proc, mosq_pids)
            raise
        run["shutdown"] = stop_fieldhub(proc, mosq_pids)
        run["errors"] += run["shutdown"].pop("errors")
        run["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        posts = receiver.take()

    lat: list[float] = []
    committed: list[float] = []
    engine_to_hook: list[float] = []
    pub_to_engine: list[float] = []
    digests = digested_items = bad_sig = 0
    lone_events: dict[str, int] = {}
    devices_seen: set[str] = set()
    for received_ns, headers, body in posts:
        if not verify(secret, headers, body):
            bad_sig += 1
        doc = json.loads(body)
        payload = doc.get("payload") or {}
        if "digest" in payload:
            digests += 1
            digested_items += int(payload["digest"].get("count", 0))
            continue
        event = str(payload.get("event"))
        lone_events[event] = lone_events.get(event, 0) + 1
        at_us, created_us = payload.get("at_us"), doc.get("created_us")
        devices_seen.add(str(payload.get("device_id")))
        received_us = received_ns / 1000
        stored_us = payload.get("stored_us")
        if isinstance(stored_us, int):
            committed.append((received_us - stored_us) / 1000)
        if isinstance(at_us, int):
            lat.append((received_us - at_us) / 1000)
            if isinstance(created_us, int):
                pub_to_engine.append((created_us - at_us) / 1000)
        if isinstance(created_us, int):
            engine_to_hook.append((received_us - created_us) / 1000)
    cpu = sampler.summary(load["first_publish_epoch"], load["last_publish_epoch"])
    ingest_lag = ingest._latency(before, after) or {}
    run.update(
        offered=load["sent"],
        acked=load["acked"],
        offered_rate=load["offered_rate"],
        publisher=load,
        samples=len(lat),
        expected_samples=args.devices,
        devices_with_lone_webhook=len(devices_seen),
        lone_webhooks_by_event=lone_events,
        digests=digests,
        digested_items=digested_items,
        bad_signatures=bad_sig,
        committed_ms=_percentiles(committed),
        latency_ms=_percentiles(lat),
        engine_to_webhook_ms=_percentiles(engine_to_hook),
        publish_to_engine_ms=_percentiles(pub_to_engine),
        ingest_lag={"p50_s": ingest_lag.get("p50_s"), "p99_s": ingest_lag.get("p99_s")},
        engine={
            "edges": _delta(before, after, "fieldhub_rules_edges_total"),
            "evaluations_reading": (_evaluations(after, "reading") or 0)
            - (_evaluations(before, "reading") or 0),
            "actions": {
                key: _delta(before, after, key)
                for key in (
                    "fieldhub_rules_actions_total",
                    "fieldhub_notify_queued_total",
                    "fieldhub_notify_delivered_total",
                    "fieldhub_notify_digested_total",
                    "fieldhub_notify_dropped_total",
                    "fieldhub_notify_failed_total",
                )
            },
            "bus_dropped": _delta(before, after, "fieldhub_rules_bus_dropped_total"),
            "evaluation_lag_s_each_second": engine_lags,
            "evaluation_lag_max_s": max(engine_lags) if engine_lags else None,
        },
        cpu=cpu,
    )
    if bad_sig:
        run["errors"].append(f"{bad_sig} webhooks failed fieldhub's signature check")
    if len(lat) < args.devices:
        run["notes"].append(
            f"{args.devices - len(lat)} of {args.devices} devices' first fire never arrived as a "
            "lone webhook"
        )
    others = cpu.get("others_cpu_mean_percent")
    if others is not None and others > ingest.OTHERS_CPU_WARN_PERCENT:
        run["notes"].append(f"other processes used {others}% of a core during the load")
    m, c = run["latency_ms"], run["committed_ms"]
    say(
        f"  {tag}: {len(lat)} lone webhooks ({digests} digests), committed -> webhook p50 "
        f"{c['p50']} ms p99 {c['p99']} ms max {c['max']} ms; publish -> webhook p50 "
        f"{m['p50']} ms p99 {m['p99']} ms; engine -> webhook p99 "
        f"{run['engine_to_webhook_ms']['p99']} ms"
    )
    if not run["errors"] and not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return run


def _delta(before: str, after: str, sample: str) -> float | None:
    a, b = sample_sum(after, sample), sample_sum(before, sample)
    return None if a is None else a - (b or 0.0)


# --- main -----------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.rules",
        description="Rule engine benchmark of `fieldhub up`; writes bench/results/rules.json.",
    )
    p.add_argument("--rate", type=float, default=BAR_RATE, help="phase A msg/s (default 10000)")
    p.add_argument("--duration", type=float, default=BAR_DURATION_S, help="phase A seconds")
    p.add_argument("--devices", type=int, default=BAR_DEVICES, help="devices = rules (1000)")
    p.add_argument("--repeats", type=int, default=3, help="phase A runs per mode (default 3)")
    p.add_argument("--b-rate", type=float, default=BAR_B_RATE, help="phase B readings/s")
    p.add_argument("--b-duration", type=float, default=30.0, help="phase B seconds (30)")
    p.add_argument("--b-repeats", type=int, default=3, help="phase B runs (default 3)")
    p.add_argument(
        "--b-pattern",
        choices=(*PATTERNS, "both"),
        default="both",
        help="alternate: every reading from a device's turn on is an edge (judged); once: one "
        "fire per device; both (default): interleaved",
    )
    p.add_argument("--phase", choices=("a", "b", "both"), default="both")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test: A 2000 msg/s x 10 s, B 100/s x 10 s, 100 devices, 1 run each",
    )
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help=argparse.SUPPRESS)
    p.add_argument(
        "--fieldhub",
        default=str(Path(sys.executable).parent / "fieldhub"),
        help="the fieldhub executable (default: the venv's)",
    )
    p.add_argument("--fieldhub-arg", action="append", default=[], help="extra `fieldhub up` arg")
    p.add_argument("--device-prefix", default="bench", help=argparse.SUPPRESS)
    p.add_argument("--timeline", action="store_true", help="keep phase A's per-second timeline")
    p.add_argument("--keep", action="store_true", help="keep data dirs and logs of good runs")
    p.add_argument("--output", type=Path, default=None, help="result file (default results/)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the rules benchmark and write bench/results/rules.json."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["publish"]:
        return publish_main(argv[1:])
    args = _parse_args(argv)
    bench = start_bench("rules", "fieldhub, the generator and the webhook receiver")
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    say(
        f"rules bench: A {args.rate:,.0f} msg/s x {args.duration:g}s, {args.devices} devices, "
        f"0 vs {args.devices} rules x {args.repeats}; B {args.b_rate:,.0f} readings/s x "
        f"{args.b_duration:g}s x {args.b_repeats}{' (quick)' if args.quick else ''}; "
        f"load average {loadavg_start}"
    )
    errors: list[str] = []
    a_runs: list[dict[str, Any]] = []
    b_runs: list[dict[str, Any]] = []
    # Phase A's rules point their (never fired) webhook at a receiver that is up all along.
    with Receiver(secrets.token_urlsafe(16)) as idle_receiver:
        try:
            if args.phase in ("a", "both"):
                a_runs = phase_a(args, bench.workdir, idle_receiver.url)
            if args.phase in ("b", "both"):
                patterns = PATTERNS if args.b_pattern == "both" else (args.b_pattern,)
                for k in range(1, args.b_repeats + 1):
                    for pattern in patterns:
                        say(f"phase B: run {k}/{args.b_repeats} ({pattern})")
                        b_runs.append(latency_run(k, args, bench.workdir, pattern))
        except KeyboardInterrupt:
            errors.append("interrupted")
            say("interrupted: writing what we have")
        a_hooks = idle_receiver.count()
    if a_hooks:
        bench.notes.append(f"phase A's rules sent {a_hooks} webhooks (expected none)")

    a = summarize_a(a_runs) if a_runs else None
    b_by_pattern = {
        pattern: median_of([r for r in b_runs if r["pattern"] == pattern], B_MEDIAN_KEYS)
        for pattern in PATTERNS
        if any(r["pattern"] == pattern for r in b_runs)
    }
    judged = "alternate" if "alternate" in b_by_pattern else next(iter(b_by_pattern), None)
    b_median = b_by_pattern[judged] if judged else None
    stored_ratio = a["ratio_rules_no_rules"]["stored_rate"] if a else None
    p99 = b_median.get("committed_ms.p99") if b_median else None
    bar_config_a = (
        args.rate >= BAR_RATE
        and args.duration >= BAR_DURATION_S
        and args.devices >= BAR_DEVICES
        and args.repeats >= 3
    )
    bar_config_b = args.b_rate >= BAR_B_RATE and args.devices >= BAR_RULES and args.b_repeats >= 3
    checks = {
        "throughput_within_10_percent": {
            "ok": bar_config_a
            and stored_ratio is not None
            and stored_ratio >= 1 - THROUGHPUT_TOLERANCE
            and all(not r["errors"] for r in a_runs),
            "value": stored_ratio,
            "how": "median stored_rate with rules / without, same session, interleaved",
            "config_meets_bar": bar_config_a,
        },
        "webhook_p99_le_50ms": {
            "ok": bar_config_b
            and p99 is not None
            and p99 <= BAR_P99_MS
            and all(not r["errors"] for r in b_runs),
            "value_ms": p99,
            "pattern": judged,
            "how": "median over runs of reading committed -> webhook received p99 (the "
            "payload's stored_us to receipt), the alternate pattern's runs when measured",
            "config_meets_bar": bar_config_b,
        },
    }
    result: dict[str, Any] = {
        "bench": "rules",
        "started_at": bench.started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "auth": "off (demo mode, FIELDHUB_AUTH=false)",
            "quick": args.quick,
            "devices": args.devices,
            "rules": args.devices,
            "phase_a": {
                "rate": args.rate,
                "duration_s": args.duration,
                "repeats_per_mode": args.repeats,
                "order": "interleaved: no rules, rules, no rules, rules, ...",
                "rule_example": cold_room_rule(
                    device_uid(args.device_prefix, 0, id_width(args.devices)),
                    "http://127.0.0.1:<port>/hook",
                ),
            },
            "phase_b": {
                "rate": args.b_rate,
                "duration_s": args.b_duration,
                "repeats": args.b_repeats,
                "patterns": args.b_pattern,
                "rule_example": edge_rule(
                    device_uid(args.device_prefix, 0, id_width(args.devices)),
                    "http://127.0.0.1:<port>/hook",
                ),
            },
            "fieldhub": args.fieldhub,
            "fieldhub_args": args.fieldhub_arg,
            "machine": {**machine_info(), "background_busy_percent": bench.background_percent},
        },
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
        "phase_a": a,
        "phase_b": {"judged_pattern": judged, "by_pattern": b_by_pattern}
        if b_median is not None
        else None,
        "load_average": {
            "start": loadavg_start,
            "end": [round(x, 2) for x in os.getloadavg()],
            "note": "os.getloadavg() (1, 5, 15 min); each run has loadavg_before/after. The "
            "bench's own processes count in it",
        },
        "runs": {"phase_a": a_runs, "phase_b": b_runs},
        "methods": {**METHODS, "ingest": ingest.METHODS},
        "notes": bench.notes
        + [f"A run {r['run']} {r['rules']} rules: {n}" for r in a_runs for n in r["notes"]]
        + [f"B run {r['run']} {r['pattern']}: {n}" for r in b_runs for n in r["notes"]],
        "errors": errors
        + [f"A run {r['run']} {r['rules']} rules: {e}" for r in a_runs for e in r["errors"]]
        + [f"B run {r['run']} {r['pattern']}: {e}" for r in b_runs for e in r["errors"]],
    }
    path = write_result("rules", result, args.output)
    say(f"wrote {path}")
    _print_summary(result)
    tidy_workdir(bench.workdir, keep=bool(result["errors"]) or args.keep)
    return 2 if result["errors"] else 0


def _print_summary(result: dict[str, Any]) -> None:
    a = result["phase_a"]
    if a:
        for label, fig in a["by_rules"].items():
            m = fig["median"]
            say(
                f"A {label}: stored {m['stored_rate']} msg/s, drain {m['drain_s']} s, "
                f"p99 {m['latency.p99_s']} s, fieldhub {m['cpu.fieldhub.cpu_mean_percent']}% "
                f"cpu, {m['cpu_per_message_us.fieldhub']} us/msg, engine lag max "
                f"{m['engine.lag_max_s']} s, others {m['cpu.others_cpu_mean_percent']}%"
            )
        say(f"A ratio rules/no rules: {a['ratio_rules_no_rules']}")
    b = result["phase_b"]
    for pattern, m in (b or {}).get("by_pattern", {}).items():
        say(
            f"B {pattern}: committed -> webhook p50 {m['committed_ms.p50']} ms, "
            f"p99 {m['committed_ms.p99']} ms; publish -> webhook p50 {m['latency_ms.p50']} ms, "
            f"p99 {m['latency_ms.p99']} ms "
            f"(engine -> webhook p99 {m['engine_to_webhook_ms.p99']} ms, publish -> engine p99 "
            f"{m['publish_to_engine_ms.p99']} ms), {m['samples']} samples/run"
        )
    for name, c in result["checks"].items():
        say(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {c.get('value', c.get('value_ms'))}")
    say(f"load average: {result['load_average']['start']} -> {result['load_average']['end']}")
    for e in result["errors"]:
        say(f"error: {e.splitlines()[0]}")


if __name__ == "__main__":
    sys.exit(main())
