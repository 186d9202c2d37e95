"""MQTT subscriber candidates side by side: QoS 1 msg/s each can receive and acknowledge.

Issue 19 asks to measure the candidate ingest transports before choosing one. Each candidate is
one subscriber process (bench/mqtt_client_sub.py, or Mosquitto's C client ``mosquitto_sub`` as
the floor) on its own fresh bare Mosquitto with fieldhub's flow-control limits, under the same
``bench.loadgen --max`` load from ``--devices`` connections for ``--duration`` seconds:

* ``paho-plain``: paho-mqtt (the installed version), MQTT 5, manual_ack, ``client.ack`` in
  on_message, loop_start thread.
* ``fieldhub``: fieldhub's MqttSubscriber (paho with fieldhub's fast paths), tokens acked in
  batches every 5 ms from another thread, as the writer acks after a commit.
* ``fieldhub+decode``: the same, each message also through fieldhub's MessageDecoder in the
  network thread (as Ingest.on_message does).
* ``gmqtt``: gmqtt, MQTT 5, sync on_message (gmqtt sends the PUBACK before calling it).
* ``gmqtt-async``: gmqtt, MQTT 5, async on_message, PUBACK after the coroutine returns (what
  ack-after-commit would need).
* ``aiomqtt``: aiomqtt, MQTT 5, its message iterator (acks on receipt, before the iterator).
* ``mosquitto_sub``: the broker-only reference of bench/ingest.py (``measure_broker_only``).

Rounds run the candidates interleaved (a, b, c, ..., a, b, c, ...) so a drift of the shared
machine hits all alike; each figure is the median across rounds, and each candidate's median
rate is also given as a ratio to mosquitto_sub's. Result: bench/results/mqtt_clients.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    BenchError,
    JsonLinesChild,
    Sampler,
    bare_mosquitto,
    dig,
    git,
    machine_info,
    median_of,
    say,
    say_notes_and_errors,
    start_bench,
    stop_process,
    tail,
    tidy_workdir,
    write_result,
)
from bench.ingest import (
    LOADGEN_FIGURES,
    SAMPLE_EVERY_S,
    SETTLE_POLL_S,
    SETTLE_QUIET_S,
    SUBSCRIBER_READY_TIMEOUT_S,
    _max_load,
    measure_broker_only,
)
from bench.mqtt_client_sub import CLIENTS, TELEMETRY_FILTER
from fieldhub.broker.config import MAX_INFLIGHT_MESSAGES, MAX_QUEUED_MESSAGES

REFERENCE = "mosquitto_sub"
CANDIDATES = (*CLIENTS, REFERENCE)
# What each candidate needs beyond fieldhub's own dependencies (the `bench` extra).
EXTRA_MODULES = {"gmqtt": "gmqtt", "gmqtt-async": "gmqtt", "aiomqtt": "aiomqtt"}
INSTALL_HINT = ".venv/bin/pip install -e '.[bench]'"

DEVICES = 1000
# 8 s, not the 10 s of bench/ingest.py's reference: the slow candidates drain a backlog of
# hundreds of thousands of messages after each load, and 3 rounds of 7 candidates must fit in
# about 10 minutes.
DURATION_S = 8.0
REPEATS = 3
QUICK = {"devices": 100, "duration": 3.0, "repeats": 1}
# The subscriber's "done" line follows SIGTERM at once; this only bounds a hang.
DONE_TIMEOUT_S = 30.0
# A subscriber still receiving this long after the last publish is stopped there: it has been
# receiving flat out from a backlog for the whole window, so its rate is measured, and a slow
# one (minutes of backlog) must not stretch the run. Its not_delivered then counts what was
# still queued.
DRAIN_LIMIT_S = 30.0

MEDIAN_KEYS = (
    "rate",
    "delivered",
    "accepted",
    "not_delivered",
    "drain_s",
    "cpu.subscriber.cpu_mean_percent",
    "cpu.subscriber.cpu_max_percent",
    "cpu.subscriber.rss_max_mb",
    "cpu.mosquitto.cpu_mean_percent",
    "cpu.loadgen.cpu_mean_percent",
    "cpu.others_cpu_mean_percent",
    "cpu_per_message_us.subscriber",
    "cpu_per_message_us.mosquitto",
    "loadgen.acked_rate_within_duration",
)

METHODS = {
    "load": "bench.loadgen --max: every device keeps its window of unacknowledged QoS 1 "
    "publishes full for the duration (MQTT 3.1.1, one TCP connection per device, ~90-byte JSON "
    "payload on devices/bench-NNNN/telemetry)",
    "broker": "a fresh bare Mosquitto per run with fieldhub's max_inflight_messages "
    f"({MAX_INFLIGHT_MESSAGES}) and max_queued_messages ({MAX_QUEUED_MESSAGES}), no persistence",
    "subscriber": f"one subscriber process per run, QoS 1 on {TELEMETRY_FILTER}; Python "
    "candidates (bench/mqtt_client_sub.py) subscribe with MQTT 5 and a clean session and say "
    "'ready' at SUBACK, before the load starts; they count each message and note its epoch time "
    f"in memory. {REFERENCE} is bench/ingest.py's broker-only reference (MQTT 3.1.1, persistent "
    "session, --nodelay, one receive time a line to a file, a probe before the load)",
    "rate": "delivered / (last delivery - first publish): the rate the subscriber received and "
    "acknowledged; while it is slower than the load the broker queues, and the drain after the "
    "last publish counts in",
    "delivered": "messages the subscriber received from the first publish on; accepted = the "
    "broker's PUBACKs to the loadgen; not_delivered = accepted - delivered (Mosquitto drops "
    f"beyond max_queued_messages; for a run with drain_cut, a subscriber still receiving "
    f"{DRAIN_LIMIT_S:g} s after the last publish and stopped there, also what was still queued)",
    "cpu": "per-process CPU time deltas once a second from the first to the last publish "
    "(Sampler); 100 = one full core; others_cpu = the machine's busy time minus subscriber, "
    "Mosquitto and loadgen, in % of one core",
    "cpu_per_message_us": "CPU microseconds per delivered message from the first publish to the "
    "last delivery (mean CPU over the load x its length + mean CPU after it x the drain)",
    "order": "rounds of every candidate in turn (interleaved), medians per candidate across "
    "rounds; ratio_to_mosquitto_sub = a candidate's median rate / mosquitto_sub's",
}


# --- one run of a Python candidate -------------------------------------------------------------


def _latest_progress(child: JsonLinesChild, wait_s: float) -> dict[str, Any] | None:
    """The newest progress line that arrives within `wait_s` (older ones are skipped)."""
    latest = None
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        event = child.next_event(left)
        if event is not None and event.get("event") == "progress":
            latest = event
    return latest


def _settle(child: JsonLinesChild, accepted: int, sampler: Sampler) -> bool:
    """Wait until the subscriber has every message the broker accepted, or its count stopped
    growing for SETTLE_QUIET_S (then what is missing shows as not_delivered); False if it was
    still receiving after DRAIN_LIMIT_S."""
    deadline = time.monotonic() + DRAIN_LIMIT_S
    last_n, last_change = -1, time.monotonic()
    next_sample = time.monotonic() + SAMPLE_EVERY_S
    while True:
        progress = _latest_progress(child, SETTLE_POLL_S)
        now = time.monotonic()
        if progress is not None:
            if progress["received"] >= accepted:
                return True
            if progress["received"] != last_n:
                last_n, last_change = progress["received"], now
        if now - last_change >= SETTLE_QUIET_S:
            return True
        if now > deadline:
            return False
        if now >= next_sample:
            sampler.sample()
            next_sample += SAMPLE_EVERY_S


def measure_client(client: str, devices: int, duration_s: float, workdir: Path) -> dict[str, Any]:
    """loadgen --max -> fresh Mosquitto -> one bench.mqtt_client_sub process; its figures."""
    tag = client.replace("+", "_")
    out, log = workdir / f"{tag}-load.json", workdir / f"{tag}-load.log"
    with bare_mosquitto(
        max_queued_messages=MAX_QUEUED_MESSAGES, max_inflight_messages=MAX_INFLIGHT_MESSAGES
    ) as broker:
        child = JsonLinesChild(
            "bench.mqtt_client_sub",
            ["--client", client, "--port", str(broker.port)],
            workdir / f"{tag}-sub.log",
            name=client,
        )
        try:
            child.wait_for("ready", SUBSCRIBER_READY_TIMEOUT_S)
            sampler = Sampler()
            mq, sp = psutil.Process(broker.proc.pid), psutil.Process(child.proc.pid)
            sampler.add("mosquitto", lambda: [mq])
            sampler.add("subscriber", lambda: [sp] if sp.is_running() else [])
            load = _max_load(broker.port, devices, duration_s, out, log, sampler, client)
            drained = _settle(child, load["acked"], sampler)
            sampler.sample()
            child.proc.send_signal(signal.SIGTERM)
            done = child.wait_for("done", DONE_TIMEOUT_S)
        finally:
            stop_process(child.proc)
    if broker.proc.returncode not in (0, None):
        raise BenchError(f"mosquitto exited {broker.proc.returncode}:\n{tail(broker.log)}")
    return {**client_figures(load, done, sampler), "drain_cut": not drained}


def _cpu_per_message(
    cpu: dict[str, Any], cpu_after: dict[str, Any], load_s: float, drain_s: float, delivered: int
) -> dict[str, float | None]:
    """CPU µs per delivered message of each group, over the load and the drain after it."""
    out: dict[str, float | None] = {}
    for group in ("subscriber", "mosquitto"):
        during = dig(cpu, f"{group}.cpu_mean_percent")
        after = dig(cpu_after, f"{group}.cpu_mean_percent") or 0.0
        if during is None or not delivered:
            out[group] = None
            continue
        cpu_s = during / 100 * load_s + after / 100 * drain_s
        out[group] = round(cpu_s / delivered * 1e6, 2)
    return out


def client_figures(load: dict[str, Any], done: dict[str, Any], sampler: Sampler) -> dict[str, Any]:
    """A Python candidate's figures, with the keys of bench.ingest's broker_only_figures."""
    first_pub, last_pub = load["first_publish_epoch"], load["last_publish_epoch"]
    delivered = done["received"]
    end = done["last_epoch"] or last_pub
    cpu = sampler.summary(first_pub, last_pub)
    cpu_after = sampler.summary(last_pub, end)
    return {
        "rate": round(delivered / (end - first_pub), 1) if delivered else None,
        "delivered": delivered,
        "accepted": load["acked"],
        "not_delivered": load["acked"] - delivered,
        "drain_s": round(end - last_pub, 3),
        "devices": load["devices"],
        "loadgen": {k: load[k] for k in LOADGEN_FIGURES},
        "cpu": cpu,
        "cpu_after_load": cpu_after,
        "cpu_per_message_us": _cpu_per_message(
            cpu, cpu_after, last_pub - first_pub, end - last_pub, delivered
        ),
        "subscriber_report": {k: v for k, v in done.items() if k != "event"},
    }


# --- rounds --------------------------------------------------------------------------------------


def run_one(client: str, k: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One measured run of `client` in round `k`; a failure is recorded, not raised."""
    say(f"round {k}/{args.repeats}: {client}, {args.devices} devices, {args.duration:g}s")
    run: dict[str, Any] = {"client": client, "round": k, "loadavg_before": _loadavg()}
    try:
        if client == REFERENCE:
            figures = measure_broker_only(args.devices, args.duration, workdir)
        else:
            figures = measure_client(client, args.devices, args.duration, workdir)
        run.update(figures)
        run["error"] = None
        run["notes"] = _run_notes(figures)
        cpu = figures["cpu"]
        say(
            f"  {client}: {figures['rate'] or 0:,.0f} msg/s ({figures['delivered']:,} of "
            f"{figures['accepted']:,} accepted, drain {figures['drain_s']} s); subscriber "
            f"{cpu['subscriber']['cpu_mean_percent']}% cpu "
            f"{figures['cpu_per_message_us']['subscriber']} µs/msg, mosquitto "
            f"{cpu['mosquitto']['cpu_mean_percent']}%, loadgen "
            f"{cpu['loadgen']['cpu_mean_percent']}%, others {cpu['others_cpu_mean_percent']}%"
        )
    except (BenchError, RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        run["error"] = f"{client} round {k}: {exc}"
        say(f"  {client} failed: {str(exc).splitlines()[0]}")
    run["loadavg_after"] = _loadavg()
    return run


def _run_notes(figures: dict[str, Any]) -> list[str]:
    if figures.get("drain_cut"):
        return [
            f"still receiving {DRAIN_LIMIT_S:g} s after the last publish: stopped there; "
            f"not_delivered ({figures['not_delivered']:,}) counts what was still queued"
        ]
    if figures["not_delivered"]:
        return [
            f"{figures['not_delivered']:,} messages the broker accepted were never delivered "
            "(Mosquitto drops beyond max_queued_messages)"
        ]
    return []


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summarize(clients: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per client and each median rate's ratio to mosquitto_sub's."""
    by_client: dict[str, Any] = {}
    for client in clients:
        good = [r for r in runs if r["client"] == client and r["error"] is None]
        by_client[client] = {"runs": len(good), "median": median_of(good, MEDIAN_KEYS)}
    floor = dig(by_client, f"{REFERENCE}.median.rate")
    for figures in by_client.values():
        rate = figures["median"]["rate"]
        figures["ratio_to_mosquitto_sub"] = round(rate / floor, 3) if rate and floor else None
    return by_client


def _missing_modules(clients: list[str]) -> list[str]:
    needed = {EXTRA_MODULES[c] for c in clients if c in EXTRA_MODULES}
    return sorted(m for m in needed if importlib.util.find_spec(m) is None)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.mqtt_clients",
        description="QoS 1 msg/s each MQTT subscriber candidate receives and acknowledges; "
        "writes bench/results/mqtt_clients.json.",
    )
    p.add_argument("--devices", type=int, default=DEVICES, help="simulated devices")
    p.add_argument("--duration", type=float, default=DURATION_S, help="seconds of load per run")
    p.add_argument("--repeats", type=int, default=REPEATS, help="rounds (medians are reported)")
    p.add_argument(
        "--clients",
        default=",".join(CANDIDATES),
        help=f"comma-separated candidates, in round order (default: {','.join(CANDIDATES)})",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 100 devices, 3 s, 1 round")
    p.add_argument("--keep", action="store_true", help="keep the work dir and its logs")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [c for c in args.clients if c not in CANDIDATES]
    if unknown:
        p.error(f"unknown client(s) {unknown}; known: {', '.join(CANDIDATES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every candidate in interleaved rounds and write bench/results/mqtt_clients.json."""
    args = _parse_args(argv)
    missing = _missing_modules(args.clients)
    if missing:
        print(
            f"error: {', '.join(missing)} not installed (the bench extra); run: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    bench = start_bench("mqtt_clients", "the subscribers, Mosquitto and the generator")
    loadavg_start = _loadavg()
    say(
        f"mqtt_clients bench: {', '.join(args.clients)}; {args.devices} devices, "
        f"{args.duration:g}s each, {args.repeats} round(s){' (quick)' if args.quick else ''}; "
        f"load average {loadavg_start}; work dir {bench.workdir}"
    )
    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        for k in range(1, args.repeats + 1):
            for client in args.clients:
                runs.append(run_one(client, k, args, bench.workdir))
    except KeyboardInterrupt:
        errors.append("interrupted")
        say("interrupted: writing what we have")
    errors += [r["error"] for r in runs if r["error"]]
    notes = bench.notes + [
        f"{r['client']} round {r['round']}: {n}" for r in runs for n in r.get("notes", [])
    ]
    by_client = summarize(args.clients, runs)
    loadavg_end = _loadavg()
    result = {
        "bench": "mqtt_clients",
        "started_at": bench.started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "config": {
            "clients": args.clients,
            "devices": args.devices,
            "duration_s": args.duration,
            "repeats": args.repeats,
            "quick": args.quick,
            "qos": 1,
            "filter": TELEMETRY_FILTER,
            "machine": {**machine_info(), "background_busy_percent": bench.background_percent},
        },
        "load_average": {"start": loadavg_start, "end": loadavg_end},
        "by_client": by_client,
        "runs": runs,
        "methods": METHODS,
        "notes": notes,
        "errors": errors,
    }
    path = write_result("mqtt_clients", result)
    say(f"wrote {path}")
    _print_table(by_client)
    say(f"load average: start {loadavg_start}, end {loadavg_end}")
    say_notes_and_errors(result)
    tidy_workdir(bench.workdir, keep=bool(errors) or args.keep)
    return 2 if errors else 0


def _print_table(by_client: dict[str, Any]) -> None:
    say(f"{'client':<16} {'msg/s':>8} {'x floor':>8} {'sub cpu%':>9} {'µs/msg':>7} {'runs':>5}")
    for client, figures in by_client.items():
        m = figures["median"]
        say(
            f"{client:<16} {_fmt(m['rate'], ',.0f'):>8} "
            f"{_fmt(figures['ratio_to_mosquitto_sub'], '.2f'):>8} "
            f"{_fmt(m['cpu.subscriber.cpu_mean_percent'], '.1f'):>9} "
            f"{_fmt(m['cpu_per_message_us.subscriber'], '.1f'):>7} {figures['runs']:>5}"
        )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    sys.exit(main())
