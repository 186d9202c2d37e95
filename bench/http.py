"""HTTP floor: GET /healthz at 100 connections from wrk (the server alone) against the httpx client.

The commands bench found about 504 requests/s for ``GET /healthz`` with 100 requests in flight
from its Python client (httpx on uvloop, bench/commands.py), on the same 2 cores as fieldhub. Is
that floor fieldhub's or the client's? This bench puts a C load generator, wrk, in the client's
place. Run ``./scripts/bench http`` (``--quick``: 1 round of 3 s phases); the result goes to
``bench/results/http.json``; bench/README.md, "http", has the method and the figures.

One ``fieldhub up`` (auth off, as every bench; ``--repeats`` rounds against it, interleaved):

(a) ``wrk -t1 -c100 -d10s --latency http://127.0.0.1:PORT/healthz``: requests/s, latency
    percentiles, non-2xx/3xx answers and socket errors from wrk's output;
(b) the commands bench's own floor client (``bench.commands.run_concurrent`` against
    ``FLOOR_PATH``: rounds of 100 requests from 100 one-connection ``httpx.AsyncClient``s) in a
    process of its own (``python -m bench.http _httpx``) for about as long;
(c) wrk as in (a) on ``GET /api/v1/devices`` (a page of ``SEED_DEVICES`` devices stored through
    ``POST /api/v1/ingest/native`` first): a real read endpoint's ceiling.

CPU of fieldhub (``fieldhub up`` and its descendants except Mosquitto), its Mosquitto, the client
and the rest of the machine is sampled once a second by this process (``bench.common.Sampler``)
while each client runs. If fieldhub uses close to a full core under wrk, the server is CPU-bound
there; wrk's requests/s against httpx's says whose ceiling the 504 requests/s was.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.commands import (
    DEFAULT_WAIT_S,
    FLOOR_PATH,
    WARMUP_ROUNDS,
    dist,
    phase_figures,
    run_concurrent,
)
from bench.common import (
    BenchError,
    JsonLinesChild,
    Sampler,
    descendants,
    dig,
    free_port,
    http_get,
    is_mosquitto,
    machine_info,
    median_of,
    say,
    say_notes_and_errors,
    source_state,
    start_bench,
    start_fieldhub,
    stop_fieldhub,
    stop_process,
    tail,
    tidy_workdir,
    wait_healthy,
    write_result,
)

# --- configuration ------------------------------------------------------------------------------

WRK_BIN = "/usr/bin/wrk"  # Debian's wrk package
WRK_THREADS = 1
DEFAULT_CONNECTIONS = 100
DEFAULT_DURATION_S = 10
DEFAULT_REPEATS = 3
QUICK: dict[str, Any] = {"duration": 3, "repeats": 1}
# The real read endpoint of phase (c), and how many devices its page lists.
API_PATH = "/api/v1/devices"
SEED_DEVICES = 20
SEED_PREFIX = "httpbench-"

# Rounds the httpx client runs first to time one round, so that its measured part lasts about
# as long as a wrk phase (rounds = duration / round time).
CALIBRATION_ROUNDS = 3
# CPU is sampled this often while a client runs; sampling stops this long before the client's
# planned end so no sample falls after the client exited (its CPU would then read 0).
SAMPLE_EVERY_S = 1.0
SAMPLE_STOP_BEFORE_END_S = 0.5
# Pause between phases: the previous client's connections close, fieldhub's loop drains.
SETTLE_S = 2.0
SETTLE_AFTER_HEALTHY_S = 2.0
# wrk gets this long past its duration before we kill it; the httpx client as long past its
# planned time (plus the calibration).
CLIENT_GRACE_S = 30.0
HTTPX_START_TIMEOUT_S = 60.0

# fieldhub using at least this much of one core under wrk: the server is CPU-bound there (its
# event loop is one thread; what is left of the core is the rest of the process).
SERVER_BOUND_CPU_PERCENT = 85.0
# wrk this many times faster than httpx on the same endpoint: the httpx figure is the client's.
CLIENT_BOUND_RATIO = 1.2
# The whole machine at least this busy (100 = both cores): fieldhub could not have had a core.
MACHINE_SATURATED_PERCENT = 90.0
# Other processes using more than this (% of one core) during a phase make its figures suspect.
OTHERS_CPU_WARN_PERCENT = 20.0

PHASES = ("wrk_healthz", "httpx_healthz", "wrk_api")
PHASE_FIGURES = (
    "requests_per_s",
    "latency.p50_ms",
    "latency.p90_ms",
    "latency.p99_ms",
    "cpu.fieldhub_percent",
    "cpu.fieldhub_max_percent",
    "cpu.mosquitto_percent",
    "cpu.client_percent",
    "cpu.others_percent",
    "cpu.machine_busy_percent",
    "fieldhub_cpu_ms_per_request",
    "client_cpu_ms_per_request",
    "fieldhub_requests_per_core_s",
    "client_requests_per_core_s",
)
MEDIAN_KEYS = (
    *(f"{phase}.{fig}" for phase in PHASES for fig in PHASE_FIGURES),
    "ratios.requests_per_s_wrk_over_httpx",
    "ratios.fieldhub_cpu_wrk_over_httpx",
    "ratios.client_cpu_ms_per_request_httpx_over_wrk",
    "ratios.requests_per_s_api_over_healthz",
)

METHODS = {
    "fieldhub": "one `fieldhub up --data-dir <tmp> --mqtt-port <free> --http-port <free>` for "
    "the whole bench (embedded Mosquitto, authentication off: FIELDHUB_AUTH=false, and "
    "FIELDHUB_RUN_AS=root when run as root, as bench.common.fieldhub_env sets for every bench)",
    "rounds": "--repeats rounds, each running the three phases in the order wrk_healthz, "
    "httpx_healthz, wrk_api with a 2 s pause between phases, so slow drift of the machine "
    "spreads over all three",
    "wrk": "wrk -t1 -cN -dDs --latency URL (Debian's wrk 4.1, C, one epoll thread, N "
    "keep-alive connections each sending its next request as soon as its answer arrived). "
    "requests_per_s is wrk's Requests/sec; latency p50/p75/p90/p99 from its --latency "
    "distribution, mean/max from its thread stats; non_2xx_3xx and socket errors (connect, "
    "read, write, timeout: no answer within wrk's default 2 s) from its output",
    "httpx": "bench.commands.run_concurrent against GET /healthz, the commands bench's "
    "concurrent floor: N httpx.AsyncClients with one keep-alive connection each, on uvloop "
    "when installed; rounds of N requests sent at once, the next round when every answer of "
    "this one arrived. It runs in a process of its own (python -m bench.http _httpx): first "
    f"{CALIBRATION_ROUNDS} rounds to time a round (not measured), then one warm-up round and "
    "as many rounds as fill the phase's duration. requests_per_s = requests / sum of round "
    "times, as in the commands bench; latency is nearest rank over every request",
    "api": f"GET {API_PATH} after {SEED_DEVICES} devices were stored through "
    "POST /api/v1/ingest/native (one reading each): a page of 20 devices with presence, a "
    "count query and pydantic serialisation: a real read endpoint, viewer role (the demo "
    "principal with authentication off)",
    "cpu": "bench.common.Sampler once a second while a client runs: CPU time per process group "
    "between samples, 100 = one core. fieldhub = `fieldhub up` and its descendants except "
    "Mosquitto; client = the wrk or httpx process; others = the whole machine minus fieldhub, "
    "mosquitto and the client (this orchestrating process included). Figures are the mean "
    "of the per-second samples in the phase; sampling stops 0.5 s before the client's planned "
    "end. client_total_cpu_s: the client's whole CPU time from the kernel (RUSAGE_CHILDREN), "
    "start-up included (for httpx: interpreter start, imports and calibration too)",
    "per_request": "fieldhub_cpu_ms_per_request = fieldhub CPU % / 100 * 1000 / requests_per_s "
    "(ms of fieldhub CPU per answered request); client_cpu_ms_per_request the same for the "
    "client. *_requests_per_core_s = 1000 / that: the requests/s one full core would serve at "
    "that cost, a linear extrapolation (useful when the machine is saturated and fieldhub could "
    "not get a whole core)",
    "verdict": f"fieldhub >= {SERVER_BOUND_CPU_PERCENT:g} % of a core under wrk on /healthz: "
    "the server is CPU-bound at wrk's rate (server_cpu_bound_under_wrk). wrk's requests/s >= "
    f"{CLIENT_BOUND_RATIO:g} x httpx's on the same endpoint: the httpx floor is the client's; "
    "else, with the server CPU-bound, the floor is the server's",
    "medians": "each figure's median across rounds",
}


# --- wrk ------------------------------------------------------------------------------------------

_TIME_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_BYTES = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_TOTAL = re.compile(
    r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read", re.M
)
_WRK_PERCENTILE = re.compile(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_WRK_LATENCY = re.compile(
    r"^\s+Latency\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)", re.M
)
_WRK_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)


def _ms(value: str, unit: str) -> float:
    return round(float(value) * _TIME_MS[unit], 3)


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk's report (with --latency) as figures; raise BenchError if it has no Requests/sec."""
    rps = _WRK_RPS.search(text)
    total = _WRK_TOTAL.search(text)
    if rps is None or total is None:
        raise BenchError(f"cannot read wrk's output:\n{text[-1500:]}")
    percentiles = {f"p{m[1]}_ms": _ms(m[2], m[3]) for m in _WRK_PERCENTILE.finditer(text)}
    latency: dict[str, Any] = {
        "p50_ms": percentiles.get("p50_ms"),
        "p75_ms": percentiles.get("p75_ms"),
        "p90_ms": percentiles.get("p90_ms"),
        "p99_ms": percentiles.get("p99_ms"),
        "mean_ms": None,
        "max_ms": None,
    }
    if lat := _WRK_LATENCY.search(text):
        latency["mean_ms"] = _ms(lat[1], lat[2])
        latency["max_ms"] = _ms(lat[5], lat[6])
    sock = _WRK_SOCKET.search(text)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if sock:
        socket_errors = dict(zip(socket_errors, map(int, sock.groups()), strict=True))
    non_2xx = _WRK_NON_2XX.search(text)
    return {
        "requests": int(total[1]),
        "duration_s": round(_ms(total[2], total[3]) / 1000.0, 3),
        "read_bytes": round(float(total[4]) * _BYTES[total[5]]),
        "requests_per_s": float(rps[1]),
        "latency": latency,
        "non_2xx_3xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": socket_errors,
    }


def wrk_version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    first = (out.stdout or out.stderr).splitlines()[:1]
    return first[0].split(" [")[0].strip() if first else None


# --- the httpx client (a process of its own) -----------------------------------------------------


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def httpx_main(argv: list[str]) -> int:
    """``python -m bench.http _httpx ...``: the commands bench's floor client for ~``--seconds``.

    Prints JSON lines: ``measuring`` (calibration done, the measured rounds start now, about
    ``expected_s`` long), then ``result``. Progress lines of the client go to stdout too (not
    JSON); the parent writes them to a log.
    """
    p = argparse.ArgumentParser(prog="python -m bench.http _httpx")
    p.add_argument("--base-url", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--in-flight", type=int, required=True)
    args = p.parse_args(argv)

    _, _, cal_s = run_concurrent(
        args.base_url,
        [],
        CALIBRATION_ROUNDS,
        args.in_flight,
        WARMUP_ROUNDS,
        None,
        DEFAULT_WAIT_S,
        "httpx",
        "calibration",
    )
    round_s = statistics.fmean(cal_s)
    rounds = max(1, math.ceil(args.seconds / round_s))
    _emit({"event": "measuring", "rounds": rounds, "expected_s": round(rounds * round_s, 3)})
    t0, cpu0 = time.perf_counter(), time.process_time()
    _, samples, rounds_s = run_concurrent(
        args.base_url,
        [],
        rounds,
        args.in_flight,
        WARMUP_ROUNDS,
        None,
        DEFAULT_WAIT_S,
        "httpx",
        "floor concurrent",
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    fig = phase_figures(samples, sum(rounds_s), commands=False)
    ok = sorted(s.client_ms for s in samples if s.problem is None)
    p90 = round(ok[max(0, math.ceil(0.9 * len(ok)) - 1)], 2) if ok else None
    _emit(
        {
            "event": "result",
            "figures": fig,
            "p90_ms": p90,
            "rounds": len(rounds_s),
            "round_ms": dist([s * 1000 for s in rounds_s]),
            "calibration_round_ms": round(round_s * 1000, 1),
            "wall_s": round(wall, 3),
            "self_cpu_percent": round(100.0 * cpu / wall, 1) if wall > 0 else None,
        }
    )
    return 0


class HttpxProc(JsonLinesChild):
    """The httpx client's process: its JSON lines, read in a thread; other lines go to a log."""

    def __init__(self, base_url: str, seconds: float, in_flight: int, log: Path) -> None:
        args = ["_httpx", "--base-url", base_url, "--seconds", str(seconds)]
        args += ["--in-flight", str(in_flight)]
        super().__init__("bench.http", args, log, name="httpx client")


# --- one phase ---------------------------------------------------------------------------------


class Watch:
    """fieldhub, its Mosquitto and the current client, sampled by one Sampler."""

    def __init__(self, root: psutil.Process) -> None:
        self.client: list[psutil.Process] = []
        self.sampler = Sampler()
        self.sampler.add(
            "fieldhub", lambda: [root, *(p for p in descendants(root) if not is_mosquitto(p))]
        )
        self.sampler.add("mosquitto", lambda: [p for p in descendants(root) if is_mosquitto(p)])
        self.sampler.add("client", lambda: list(self.client))

    def start(self, pid: int) -> float:
        """Watch client ``pid`` from now on; the baseline sample's time."""
        self.client = [psutil.Process(pid)]
        t: float = self.sampler.sample()["t"]
        return t

    def sample_until(
        self, t_end: float, tag: str, stop: Callable[[float], bool] | None = None
    ) -> None:
        """Sample every SAMPLE_EVERY_S until ``t_end`` (monotonic) or ``stop(wait)`` says so.

        ``stop(seconds)`` waits up to that long for the client and says if it is done.
        """
        nxt = time.monotonic() + SAMPLE_EVERY_S
        while nxt <= t_end:
            wait = nxt - time.monotonic()
            if stop is not None:
                if stop(wait):
                    return
            elif wait > 0:
                time.sleep(wait)
            s = self.sampler.sample()
            say(
                f"    {tag}: fieldhub {s['fieldhub']['cpu']}%, client {s['client']['cpu']}%, "
                f"others {s['others_cpu']}% of a core"
            )
            nxt += SAMPLE_EVERY_S

    def cpu(self, t_from: float) -> dict[str, Any]:
        """Mean CPU per group over the samples after the baseline taken at ``t_from``."""
        summary = self.sampler.summary(t_from + 1e-6, time.time())
        self.client = []
        return {
            "fieldhub_percent": summary["fieldhub"]["cpu_mean_percent"],
            "fieldhub_max_percent": summary["fieldhub"]["cpu_max_percent"],
            "mosquitto_percent": summary["mosquitto"]["cpu_mean_percent"],
            "client_percent": summary["client"]["cpu_mean_percent"],
            "others_percent": summary["others_cpu_mean_percent"],
            "machine_busy_percent": summary["machine_busy_mean_percent"],
            "fieldhub_rss_max_mb": summary["fieldhub"]["rss_max_mb"],
            "samples": summary["samples"],
        }


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _per_request(fig: dict[str, Any]) -> None:
    rps = fig.get("requests_per_s")
    for who in ("fieldhub", "client"):
        cpu = dig(fig, f"cpu.{who}_percent")
        ms = round(cpu / 100.0 * 1000.0 / rps, 3) if cpu and rps else None
        fig[f"{who}_cpu_ms_per_request"] = ms
        # What one full core would serve at that cost (linear: no contention, no batching gain).
        fig[f"{who}_requests_per_core_s"] = round(1000.0 / ms) if ms else None


def run_wrk(
    args: argparse.Namespace, url: str, watch: Watch, tag: str, out_path: Path
) -> dict[str, Any]:
    """One wrk phase against ``url`` with CPU sampling; its figures."""
    cmd = [
        args.wrk,
        f"-t{WRK_THREADS}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        url,
    ]
    say(f"  {tag}: {' '.join(cmd)}")
    cpu_before = _children_cpu_s()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            t0 = watch.start(proc.pid)
            start = time.monotonic()
            watch.sample_until(start + args.duration - SAMPLE_STOP_BEFORE_END_S, tag)
            cpu = watch.cpu(t0)
            try:
                proc.wait(timeout=args.duration + CLIENT_GRACE_S)
            except subprocess.TimeoutExpired:
                raise BenchError(f"wrk did not finish within {CLIENT_GRACE_S:.0f}s") from None
        finally:
            stop_process(proc)
    text = out_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk exited {proc.returncode}:\n{text[-1500:]}")
    fig: dict[str, Any] = {"client": "wrk", "url": url, "command": cmd, **parse_wrk(text)}
    fig["cpu"] = cpu
    fig["client_total_cpu_s"] = round(_children_cpu_s() - cpu_before, 3)
    _per_request(fig)
    fig["output"] = text.splitlines()
    return fig


def run_httpx(
    args: argparse.Namespace, base_url: str, watch: Watch, tag: str, log: Path
) -> dict[str, Any]:
    """The commands bench's floor client against /healthz for ~duration s, with CPU sampling."""
    say(f"  {tag}: httpx, {args.connections} in flight, GET {FLOOR_PATH} for ~{args.duration}s")
    cpu_before = _children_cpu_s()
    client = HttpxProc(base_url, float(args.duration), args.connections, log)
    try:
        deadline = time.monotonic() + HTTPX_START_TIMEOUT_S
        measuring = None
        while measuring is None:
            if time.monotonic() > deadline:
                raise BenchError(f"httpx client not measuring after {HTTPX_START_TIMEOUT_S:.0f}s")
            event = client.next_event(0.5)
            if event is not None and event.get("event") == "measuring":
                measuring = event
        t0 = watch.start(client.proc.pid)
        start = time.monotonic()
        expected_s = float(measuring["expected_s"])
        got: list[dict[str, Any]] = []

        def done(wait: float) -> bool:
            event = client.next_event(wait)
            if event is not None and event.get("event") == "result":
                got.append(event)
                return True
            return False

        watch.sample_until(start + expected_s - SAMPLE_STOP_BEFORE_END_S, tag, done)
        cpu = watch.cpu(t0)
        end = time.monotonic() + expected_s + CLIENT_GRACE_S
        while not got:
            if time.monotonic() > end:
                raise BenchError(f"httpx client gave no result:\n{tail(log, 15)}")
            done(0.5)
        client.proc.wait(timeout=CLIENT_GRACE_S)
    finally:
        stop_process(client.proc)
    result = got[0]
    f = result["figures"]
    fig: dict[str, Any] = {
        "client": "httpx",
        "url": base_url + FLOOR_PATH,
        "requests": f["requests"],
        "ok": f["ok"],
        "errors": f["errors"],
        "error_kinds": f["error_kinds"],
        "http_statuses": f["http_statuses"],
        "duration_s": f["duration_s"],
        "requests_per_s": f["requests_per_s"],
        "latency": {
            "p50_ms": f["client"]["p50_ms"],
            "p90_ms": result["p90_ms"],
            "p95_ms": f["client"]["p95_ms"],
            "p99_ms": f["client"]["p99_ms"],
            "mean_ms": f["client"]["mean_ms"],
            "max_ms": f["client"]["max_ms"],
        },
        "rounds": result["rounds"],
        "round_ms": result["round_ms"],
        "calibration_round_ms": result["calibration_round_ms"],
        "wall_s": result["wall_s"],
        "cpu": {**cpu, "client_self_percent": result["self_cpu_percent"]},
        "client_total_cpu_s": round(_children_cpu_s() - cpu_before, 3),
    }
    _per_request(fig)
    return fig


def _say_phase(tag: str, name: str, fig: dict[str, Any]) -> None:
    lat, cpu = fig["latency"], fig["cpu"]
    errors = (
        f"non-2xx/3xx {fig['non_2xx_3xx']}, socket errors {fig['socket_errors']}"
        if fig["client"] == "wrk"
        else f"errors {fig['errors']} {fig['error_kinds'] or ''}".rstrip()
    )
    say(
        f"  {tag} {name}: {fig['requests_per_s']} requests/s, p50 {lat['p50_ms']} / p90 "
        f"{lat['p90_ms']} / p99 {lat['p99_ms']} ms; fieldhub {cpu['fieldhub_percent']}%, client "
        f"{cpu['client_percent']}%, others {cpu['others_percent']}% of a core; {errors}"
    )


# --- the bench ------------------------------------------------------------------------------------


def _seed_devices(base_url: str) -> dict[str, Any]:
    """Store one reading for each of SEED_DEVICES devices over HTTP; check GET API_PATH."""
    now_ms = int(time.time() * 1000)
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        for i in range(SEED_DEVICES):
            topic = f"devices/{SEED_PREFIX}{i:02d}/telemetry"
            body = json.dumps({"ts": now_ms, "temperature": 20.0 + i / 10, "humidity": 45.0})
            r = client.post("/api/v1/ingest/native", params={"topic": topic}, content=body)
            if r.status_code != 201:
                raise BenchError(f"POST /api/v1/ingest/native returned {r.status_code}: {r.text}")
        deadline = time.monotonic() + 10.0
        while True:
            r = client.get(API_PATH)
            if r.status_code != 200:
                raise BenchError(f"GET {API_PATH} returned {r.status_code}: {r.text[:300]}")
            count = r.json().get("count")
            if count == SEED_DEVICES or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    if count != SEED_DEVICES:
        raise BenchError(f"GET {API_PATH} lists {count} devices, {SEED_DEVICES} were stored")
    return {"devices": count, "response_bytes": len(r.content)}


def _judge(run: dict[str, Any]) -> None:
    for phase in PHASES:
        fig = run.get(phase)
        if not fig:
            continue
        if fig["client"] == "wrk":
            if fig["non_2xx_3xx"]:
                run["errors"].append(f"{phase}: {fig['non_2xx_3xx']} answers were not 2xx/3xx")
            if any(fig["socket_errors"].values()):
                run["notes"].append(f"{phase}: wrk socket errors {fig['socket_errors']}")
        elif fig["errors"]:
            run["errors"].append(f"{phase}: {fig['errors']} requests failed: {fig['error_kinds']}")
        others = dig(fig, "cpu.others_percent")
        if others is not None and others > OTHERS_CPU_WARN_PERCENT:
            run["notes"].append(
                f"{phase}: other processes used {others}% of a core: the machine was busy, "
                "figures are perturbed"
            )


def _ratios(run: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: str, b: str) -> float | None:
        x, y = dig(run, a), dig(run, b)
        return (
            round(x / y, 2)
            if isinstance(x, int | float) and isinstance(y, int | float) and y
            else None
        )

    return {
        "requests_per_s_wrk_over_httpx": ratio(
            "wrk_healthz.requests_per_s", "httpx_healthz.requests_per_s"
        ),
        "fieldhub_cpu_wrk_over_httpx": ratio(
            "wrk_healthz.cpu.fieldhub_percent", "httpx_healthz.cpu.fieldhub_percent"
        ),
        "client_cpu_ms_per_request_httpx_over_wrk": ratio(
            "httpx_healthz.client_cpu_ms_per_request", "wrk_healthz.client_cpu_ms_per_request"
        ),
        "requests_per_s_api_over_healthz": ratio(
            "wrk_api.requests_per_s", "wrk_healthz.requests_per_s"
        ),
    }


def verdict(median: dict[str, Any]) -> dict[str, Any]:
    """Server or client: whose ceiling the httpx /healthz floor is, from the medians."""
    fh_cpu = median.get("wrk_healthz.cpu.fieldhub_percent")
    wrk_rps = median.get("wrk_healthz.requests_per_s")
    httpx_rps = median.get("httpx_healthz.requests_per_s")
    ratio = median.get("ratios.requests_per_s_wrk_over_httpx")
    httpx_fh = median.get("httpx_healthz.cpu.fieldhub_percent")
    httpx_client = median.get("httpx_healthz.cpu.client_percent")
    if fh_cpu is None or wrk_rps is None or httpx_rps is None or ratio is None:
        return {"floor": None, "server_cpu_bound_under_wrk": None, "text": "not measured"}
    bound = fh_cpu >= SERVER_BOUND_CPU_PERCENT
    busy = median.get("wrk_healthz.cpu.machine_busy_percent")
    others = median.get("wrk_healthz.cpu.others_percent")
    per_core = median.get("wrk_healthz.fieldhub_requests_per_core_s")
    if bound:
        server_text = (
            f"under wrk fieldhub used {fh_cpu:g}% of a core (>= {SERVER_BOUND_CPU_PERCENT:g}%): "
            f"the server is CPU-bound at {wrk_rps:g} requests/s, its own ceiling for GET /healthz"
        )
    elif busy is not None and busy >= MACHINE_SATURATED_PERCENT:
        server_text = (
            f"under wrk fieldhub got only {fh_cpu:g}% of a core because the machine was "
            f"saturated ({busy:g}% busy, other processes {others}% of a core): its ceiling was "
            f"not reached; at its CPU cost per request one full core would serve ~{per_core} "
            "requests/s"
        )
    else:
        server_text = (
            f"under wrk fieldhub used {fh_cpu:g}% of a core (< {SERVER_BOUND_CPU_PERCENT:g}%) "
            f"with CPU to spare on the machine ({busy}% busy): not CPU-bound at {wrk_rps:g} "
            "requests/s"
        )
    if ratio >= CLIENT_BOUND_RATIO:
        floor = "client"
        text = (
            f"client: wrk got {wrk_rps:g} requests/s from the same fieldhub, {ratio:g}x the httpx "
            f"client's {httpx_rps:g}; with httpx, fieldhub used {httpx_fh}% of a core and the "
            f"client {httpx_client}%. {server_text[0].upper()}{server_text[1:]}"
        )
    elif bound:
        floor = "server"
        text = (
            f"server: wrk got no more than httpx ({wrk_rps:g} against {httpx_rps:g} requests/s) "
            f"and {server_text}"
        )
    else:
        floor = "undecided"
        text = (
            f"undecided: wrk got {wrk_rps:g} requests/s against httpx's {httpx_rps:g} and "
            f"{server_text}: neither the client nor fieldhub's CPU explains it (a busy "
            "machine? look at cpu.others_percent)"
        )
    return {"floor": floor, "server_cpu_bound_under_wrk": bound, "text": text}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.http",
        description="GET /healthz from wrk (the server alone) against the commands bench's httpx "
        f"client, and wrk on GET {API_PATH}, against one `fieldhub up`; writes "
        "bench/results/http.json.",
    )
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="rounds (3)")
    p.add_argument(
        "--duration", type=int, default=DEFAULT_DURATION_S, help="seconds per phase (10)"
    )
    p.add_argument(
        "--connections",
        type=int,
        default=DEFAULT_CONNECTIONS,
        help="wrk connections = httpx requests in flight (100)",
    )
    p.add_argument("--quick", action="store_true", help="smoke-test the bench: 1 round of 3 s")
    p.add_argument("--wrk", default=WRK_BIN, help=f"the wrk executable ({WRK_BIN})")
    p.add_argument(
        "--fieldhub",
        default=str(Path(sys.executable).parent / "fieldhub"),
        help="the fieldhub executable (default: the venv's)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, wrk output)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.repeats < 1 or args.duration < 2 or args.connections < 1:
        p.error("--repeats >= 1, --duration >= 2, --connections >= 1")
    return args


def measure(args: argparse.Namespace, workdir: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Start fieldhub, run the rounds (appended to ``runs``), stop it; the setup's facts."""
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True)
    # fieldhub's Mosquitto may drop to user `mosquitto` (when we are root): let it read the dir.
    for d in (workdir, data_dir):
        d.chmod(0o755)
    mqtt_port, http_port = free_port(), free_port()
    while http_port == mqtt_port:
        http_port = free_port()
    log = workdir / "fieldhub.log"
    proc = start_fieldhub(args.fieldhub, data_dir, mqtt_port, http_port, log, [])
    setup: dict[str, Any] = {"errors": []}
    mosq_pids: list[int] = []
    try:
        ready = wait_healthy(proc, log, http_port, mqtt_port)
        http_port = ready["http_port"]
        base_url = f"http://127.0.0.1:{http_port}"
        root = psutil.Process(proc.pid)
        mosq_pids = [p.pid for p in descendants(root) if is_mosquitto(p)]
        setup.update(
            startup_s=ready["startup_s"], ports={"mqtt": ready["mqtt_port"], "http": http_port}
        )
        setup["api"] = _seed_devices(base_url)
        say(
            f"fieldhub up (http {http_port}) in {ready['startup_s']}s; {SEED_DEVICES} devices "
            f"stored, GET {API_PATH} is {setup['api']['response_bytes']} bytes"
        )
        time.sleep(SETTLE_AFTER_HEALTHY_S)
        watch = Watch(root)
        for k in range(1, args.repeats + 1):
            tag = f"round {k}/{args.repeats}"
            run: dict[str, Any] = {"run": k, "errors": [], "notes": []}
            runs.append(run)
            for name in PHASES:
                if proc.poll() is not None:
                    raise BenchError(f"fieldhub exited {proc.returncode}:\n{tail(log)}")
                status, body = http_get(base_url + FLOOR_PATH)
                if status != 200:
                    run["notes"].append(f"before {name}: GET {FLOOR_PATH} {status} {body[:200]!r}")
                out = workdir / f"round{k}_{name}.txt"
                if name == "httpx_healthz":
                    run[name] = run_httpx(args, base_url, watch, tag, out)
                else:
                    path = FLOOR_PATH if name == "wrk_healthz" else API_PATH
                    run[name] = run_wrk(args, base_url + path, watch, tag, out)
                _say_phase(tag, name, run[name])
                time.sleep(SETTLE_S)
            run["ratios"] = _ratios(run)
            run["server_cpu_bound_under_wrk"] = (
                run["wrk_healthz"]["cpu"]["fieldhub_percent"] or 0.0
            ) >= SERVER_BOUND_CPU_PERCENT
            _judge(run)
            say(f"  {tag}: ratios {run['ratios']}")
    except (BenchError, OSError, ValueError, psutil.Error, httpx.HTTPError) as exc:
        setup["errors"].append(f"{type(exc).__name__}: {exc}")
        say(f"error: {setup['errors'][-1].splitlines()[0]} (logs in {workdir})")
    finally:
        shutdown = stop_fieldhub(proc, mosq_pids)
        setup["errors"] += shutdown.pop("errors")
        setup["shutdown"] = shutdown
    return setup


def main(argv: list[str] | None = None) -> int:
    """Run the HTTP floor benchmark and write bench/results/http.json."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_httpx"]:
        return httpx_main(argv[1:])
    args = _parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    bench = start_bench("http", "fieldhub and the HTTP clients")
    started, workdir, notes = bench.started, bench.workdir, bench.notes
    say(
        f"http bench: {args.repeats} round(s) of wrk /healthz, httpx /healthz, wrk {API_PATH}, "
        f"{args.connections} connections, {args.duration}s each{' (quick)' if args.quick else ''}"
        f"; work dir {workdir}"
    )
    errors: list[str] = []
    runs: list[dict[str, Any]] = []
    setup: dict[str, Any] = {}
    if not Path(args.wrk).exists() and shutil.which(args.wrk) is None:
        errors.append(f"{args.wrk} not found: apt-get install wrk")
    elif not Path(args.fieldhub).exists() and shutil.which(args.fieldhub) is None:
        errors.append(f"{args.fieldhub} not found: pip install -e . in the venv first")
    else:
        try:
            setup = measure(args, workdir, runs)
        except KeyboardInterrupt:
            errors.append("interrupted")
            say("interrupted: writing what we have")
        errors += setup.pop("errors", [])

    measured = [r for r in runs if all(r.get(p) for p in PHASES)]
    median = median_of(measured, MEDIAN_KEYS)
    result: dict[str, Any] = {
        "bench": "http",
        "question": "the commands bench's floor, GET /healthz with 100 in flight from httpx, was "
        "~504 requests/s on this 2-core box: is that the server's ceiling or the client's?",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "repeats": args.repeats,
            "duration_s": args.duration,
            "connections": args.connections,
            "quick": args.quick,
            "wrk": args.wrk,
            "wrk_version": wrk_version(args.wrk),
            "wrk_threads": WRK_THREADS,
            "wrk_timeout_s": 2.0,
            "httpx": httpx.__version__,
            "httpx_event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "httpx_calibration_rounds": CALIBRATION_ROUNDS,
            "floor_path": FLOOR_PATH,
            "api_path": API_PATH,
            "seed_devices": SEED_DEVICES,
            "auth": "off (FIELDHUB_AUTH=false)",
            "fieldhub": args.fieldhub,
            "fieldhub_source": source_state(),
            "machine": {**machine_info(), "background_busy_percent": bench.background_percent},
        },
        "load_average": {
            "before": load_before,
            "after": [round(x, 2) for x in os.getloadavg()],
            "note": "os.getloadavg() (1, 5, 15 min) at the bench's start and end",
        },
        "setup": setup,
        "median": median,
        "verdict": verdict(median),
        "per_run": {
            f"{phase}.{fig}": [dig(r, f"{phase}.{fig}") for r in runs]
            for phase in PHASES
            for fig in ("requests_per_s", "latency.p99_ms", "cpu.fieldhub_percent")
        },
        "runs": runs,
        "methods": METHODS,
        "notes": notes + [f"round {r['run']}: {n}" for r in runs for n in r["notes"]],
        "errors": errors + [f"round {r['run']}: {e}" for r in runs for e in r["errors"]],
    }
    path = write_result("http", result)
    say(f"wrote {path}")
    _print_summary(result)
    tidy_workdir(workdir, keep=bool(result["errors"]) or args.keep)
    return 2 if result["errors"] else 0


def _print_summary(result: dict[str, Any]) -> None:
    m = result["median"]
    say("medians across rounds: requests/s; p50 / p90 / p99 ms; fieldhub / client CPU % of a core")
    for phase in PHASES:
        say(
            f"  {phase:>13}: {m[f'{phase}.requests_per_s']}; {m[f'{phase}.latency.p50_ms']} / "
            f"{m[f'{phase}.latency.p90_ms']} / {m[f'{phase}.latency.p99_ms']}; "
            f"{m[f'{phase}.cpu.fieldhub_percent']} / {m[f'{phase}.cpu.client_percent']} "
            f"(others {m[f'{phase}.cpu.others_percent']})"
        )
    say(f"  wrk / httpx requests/s: {m['ratios.requests_per_s_wrk_over_httpx']}")
    say(f"verdict: {result['verdict']['text']}")
    say_notes_and_errors(result)


if __name__ == "__main__":
    sys.exit(main())
