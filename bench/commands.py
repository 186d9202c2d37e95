"""Commands: API call -> device ack stored, p50/p99 for sequential and 100-in-flight commands.

The goal (from the issue): p99 <= 20 ms on loopback for the round trip of a command, from the
HTTP call to the device's acknowledgement stored. Run ``./scripts/bench commands`` (or ``--quick``
to smoke-test the benchmark itself); the result goes to ``bench/results/commands.json``.

One run (``--repeats`` of them, default 3, each against a fresh ``fieldhub up``):

1. ``fieldhub up --data-dir <tmp> --mqtt-port <free> --http-port <free>`` (embedded Mosquitto, no
   --demo) with the per-device command rate limit and queue raised through the environment
   (``FIELDHUB_COMMAND_RATE_PER_S``, ``_BURST``, ``_QUEUE_MAX``) so they never throttle the bench.
2. ``--devices`` simulated native devices (``fieldhub.sim.native.NativeDevice``: the firmware's
   own core answers the commands) in a process of their own; each publishes one reading so
   fieldhub learns its format, and we wait until ``GET /api/v1/devices/{id}`` shows it online.
3. Warm-up (not measured), then ``--sequential`` commands one after the other over one keep-alive
   connection, round robin over the devices: ``POST /api/v1/devices/{id}/commands?wait_s=5`` with
   ``{"name": "ping", "params": {}}``. With ``wait_s`` the answer only comes once the command is
   final (docs/commands.md), so the wall time of the POST is API call -> ack stored.
4. ``--rounds`` rounds of ``--in-flight`` (100) commands sent at once from an asyncio httpx
   client (a round starts when the previous one has fully answered).
5. Every answer must be ``state: succeeded`` with ``decided_by: ack``; anything else is an error.

See bench/README.md for the method and what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import uvloop  # a fieldhub dependency: its server's event loop
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    BenchError,
    JsonLinesChild,
    Sampler,
    descendants,
    dig,
    fieldhub_env,
    free_port,
    is_mosquitto,
    machine_info,
    median_of,
    say,
    say_notes_and_errors,
    scrape,
    source_state,
    start_bench,
    stop_fieldhub,
    stop_process,
    tidy_workdir,
    wait_healthy,
    write_result,
)

# --- the goal -----------------------------------------------------------------------------------

GOAL_P99_MS = 20.0
# The full run's sizes; a run smaller than this cannot claim the goal (config_meets_goal).
GOAL_SEQUENTIAL = 2000
GOAL_IN_FLIGHT = 100
GOAL_CONCURRENT_COMMANDS = 2000

# --- configuration ------------------------------------------------------------------------------

DEFAULT_DEVICES = 10
DEFAULT_SEQUENTIAL = 2000
DEFAULT_ROUNDS = 20
DEFAULT_IN_FLIGHT = 100
# ?wait_s= on every POST: the answer comes when the command is final or after this long.
DEFAULT_WAIT_S = 5.0
# Unmeasured commands before each phase: per device before the sequential phase (first requests
# pay for lazy imports, the first statements, the TCP connection), and whole rounds before the
# concurrent one (the client opens its in-flight connections in the first round).
WARMUP_PER_DEVICE = 5
WARMUP_ROUNDS = 1
# Unmeasured floor requests before the sequential floor (a new connection).
FLOOR_WARMUP = 20
# Raised per-device limits (docs/commands.md "Limits": defaults 5/s, burst 20, queue 100). The
# bench sends about a hundred commands a second to each device, which the defaults would refuse
# with 429: it measures the round trip, not the limiter.
LIMIT_ENV = {
    "FIELDHUB_COMMAND_RATE_PER_S": "100000",
    "FIELDHUB_COMMAND_BURST": "100000",
    "FIELDHUB_COMMAND_QUEUE_MAX": "10000",
}
# The fieldhub settings those variables should set (pydantic-settings ignores unknown FIELDHUB_*
# variables silently, so the bench checks the names exist).
LIMIT_SETTINGS = ("command_rate_per_s", "command_burst", "command_queue_max")
DEVICE_PREFIX = "cmdbench-"
# Each device publishes one reading this often (staggered) so its presence never turns stale
# (native: 120 s of silence) in a long run; 10 devices / 30 s is one message every 3 s.
HEARTBEAT_S = 30.0

QUICK: dict[str, Any] = {"sequential": 200, "rounds": 5, "repeats": 1}

# --- timing -------------------------------------------------------------------------------------

SETTLE_AFTER_HEALTHY_S = 2.0
DEVICES_READY_TIMEOUT_S = 60.0
PRESENCE_TIMEOUT_S = 30.0
DEVICE_CONNECT_TIMEOUT_S = 10.0
DEVICES_EXIT_TIMEOUT_S = 30.0
# The client gives up on a POST this long after wait_s (the server should answer at wait_s).
HTTP_SLACK_S = 10.0
PROGRESS_EVERY_S = 1.0
# Other processes using more than this (% of one core) during a phase make its figures suspect.
OTHERS_CPU_WARN_PERCENT = 20.0
# A client process near a full core may be adding latency of its own (concurrent phase).
CLIENT_CPU_WARN_PERCENT = 80.0
# Error examples kept per phase.
ERROR_EXAMPLES = 5

PHASES = ("sequential", "concurrent")
DIST_FIGURES = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")
MEDIAN_KEYS = (
    *(
        f"{phase}.{view}.{fig}"
        for phase in PHASES
        for view in ("client", "server", "server_dispatch", "server_device", "outside_server")
        for fig in DIST_FIGURES
    ),
    "sequential.commands_per_s",
    "concurrent.commands_per_s",
    "concurrent.round_ms.p50_ms",
    "concurrent.round_ms.max_ms",
    "sequential.cpu.fieldhub_percent",
    "sequential.cpu.mosquitto_percent",
    "sequential.cpu.devices_percent",
    "sequential.cpu.client_percent",
    "sequential.cpu.others_percent",
    "concurrent.cpu.fieldhub_percent",
    "concurrent.cpu.mosquitto_percent",
    "concurrent.cpu.devices_percent",
    "concurrent.cpu.client_percent",
    "concurrent.cpu.others_percent",
    *(f"floor.{phase}.client.{fig}" for phase in PHASES for fig in DIST_FIGURES),
    "floor.sequential.requests_per_s",
    "floor.concurrent.requests_per_s",
    "startup_s",
)

METHODS = {
    "round_trip": "client wall time of POST /api/v1/devices/{id}/commands?wait_s=W: from just "
    "before the request is handed to httpx to the response body read (time.perf_counter_ns). "
    "With wait_s the server answers only once the command is final (docs/commands.md), so this "
    "is API call -> device ack stored, as an HTTP client sees it",
    "server": "from the returned command: finished - created (server_dispatch: sent - created, "
    "the broker's PUBACK for our publish recorded; server_device: finished - sent). Times are "
    "fieldhub's own, microsecond ISO strings. fieldhub stamps finished with the time the ack was "
    "received from the broker, before it is committed: the ack's commit and the wake-up of the "
    "waiting request are after finished. outside_server: client - (finished - created) per "
    "command: HTTP both ways, the device lookup before created, the ack's commit, the final read "
    "of the command and the reply",
    "validity": "an answer counts as ok when it is HTTP 2xx with state succeeded and decided_by "
    "ack (and, for ping, result.pong true; for set_window, result.position = the position "
    "asked). Anything else is an error, counted by kind with a few examples; latency figures "
    "are over the ok commands only",
    "sequential": "one httpx.Client (keep-alive, one connection), one POST at a time, devices "
    "round robin",
    "concurrent": "in_flight httpx.AsyncClient instances with one keep-alive connection each "
    "(one shared httpx pool scans all its connections per request: 8.6 ms of client CPU per "
    "request at 100 connections against 2.0 ms this way), on uvloop when installed. A round "
    "sends in_flight POSTs at once (slot j -> device j % devices, so in_flight / devices in "
    "flight per device) and the next round starts when every answer of this one arrived. "
    "round_ms: first send -> last answer of a round; commands_per_s: commands / sum of round "
    "times",
    "floor": "the same clients, same shape (sequential: as many requests; concurrent: as many "
    "rounds of in_flight) against GET /healthz (one database ping, no command), right after "
    "each command phase: what HTTP through fieldhub's API and this Python client cost on this "
    "box with no command behind them. The command figures minus the floor approximate the "
    "command path itself",
    "percentiles": "exact nearest rank over every ok command of the phase (p99 of 2,000 = the "
    "20th slowest)",
    "devices": "fieldhub.sim.native.NativeDevice (fieldhub's firmware core: parses the command, "
    "dedupes its id, acks on devices/{id}/commands/ack) over paho, one MQTT connection each, "
    "all in one process separate from the HTTP client",
    "cpu": "CPU time of each group between the start and the end of a phase (sampled only at "
    "phase boundaries: a sampling thread in the client process would add jitter to what it "
    "measures), 100 = one core. fieldhub = `fieldhub up` and descendants except Mosquitto; "
    "others = the machine minus fieldhub, mosquitto, devices and client",
    "medians": "each figure's median across repeats (runs that failed to produce it skipped)",
}


# --- the simulated devices (a process of their own) ----------------------------------------------


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def devices_main(argv: list[str]) -> int:
    """``python -m bench.commands _devices ...``: run the devices until stdin closes or says stop.

    Prints JSON lines: ``ready`` (every device connected, subscribed and its first reading
    acknowledged by the broker), then ``result`` (per-device command counters of the firmware
    core, disconnects seen) when told to stop.
    """
    p = argparse.ArgumentParser(prog="python -m bench.commands _devices")
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--prefix", default=DEVICE_PREFIX)
    p.add_argument("--heartbeat", type=float, default=HEARTBEAT_S)
    args = p.parse_args(argv)

    from fieldhub.mqtt.endpoint import MqttEndpoint
    from fieldhub.sim.native import NativeDevice

    endpoint = MqttEndpoint(host="127.0.0.1", port=args.mqtt_port)
    ids = device_ids(args.prefix, args.devices)
    devices = [NativeDevice(endpoint=endpoint, device_id=d, seed=i) for i, d in enumerate(ids)]
    t0 = time.monotonic()
    for d in devices:
        d.start()
    for d in devices:
        if not d.wait_connected(DEVICE_CONNECT_TIMEOUT_S):
            _emit({"event": "error", "error": f"{d.device_id} did not connect"})
            return 2
    # One reading each: fieldhub learns a device's command format from the topics it publishes.
    for d in devices:
        future = d.publish_telemetry()
        if future is None:
            _emit({"event": "error", "error": f"{d.device_id} did not publish its first reading"})
            return 2
        future.result(timeout=DEVICE_CONNECT_TIMEOUT_S)
    _emit({"event": "ready", "devices": ids, "connect_s": round(time.monotonic() - t0, 3)})

    stop = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    n = len(devices)
    start = time.monotonic()
    due = [start + args.heartbeat * (i + 1) / n for i in range(n)]
    was_connected = [True] * n
    disconnects = [0] * n
    heartbeats = 0
    while not stop.wait(0.1):
        now = time.monotonic()
        for i, d in enumerate(devices):
            up = d.connected
            if was_connected[i] and not up:
                disconnects[i] += 1
            was_connected[i] = up
            d.maintain()
            if now >= due[i]:
                due[i] += args.heartbeat
                if d.publish_telemetry() is not None:
                    heartbeats += 1
    _emit(
        {
            "event": "result",
            "per_device": {
                d.device_id: {
                    "executed": d.node.commands_executed,
                    "repeated": d.node.commands_repeated,
                    "rejected": d.node.commands_rejected,
                    "disconnects": disconnects[i],
                    "connected_at_end": d.connected,
                }
                for i, d in enumerate(devices)
            },
            "heartbeats": heartbeats,
        }
    )
    for d in devices:
        d.stop()
    return 0


def device_ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(n)]


class DevicesProc(JsonLinesChild):
    """The devices' process: its stdout JSON lines, read in a thread."""

    def __init__(self, mqtt_port: int, devices: int, log: Path) -> None:
        args = ["_devices", "--mqtt-port", str(mqtt_port), "--devices", str(devices)]
        super().__init__("bench.commands", args, log, name="devices process")

    def finish(self) -> dict[str, Any]:
        """Tell the devices to stop; their counters."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        result = self.wait_for("result", DEVICES_EXIT_TIMEOUT_S)
        try:
            self.proc.wait(timeout=DEVICES_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        return result

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        stop_process(self.proc)


# --- one command ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One POST: client wall time, and what the answer said."""

    client_ms: float
    problem: str | None  # None = ok; else the error kind
    server_ms: float | None = None  # finished - created
    dispatch_ms: float | None = None  # sent - created
    device_ms: float | None = None  # finished - sent
    status: int | None = None
    detail: str | None = None  # an error's example


class CommandBodies:
    """The request body of command ``i`` and the result expected for it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def body(self, i: int) -> tuple[bytes, dict[str, Any] | None]:
        if self.name == "set_window":
            position = (i * 37) % 101
            expected = {"position": position}
            return orjson.dumps({"name": "set_window", "params": expected}), expected
        return orjson.dumps({"name": "ping", "params": {}}), {"pong": True}


def _epoch_us(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def _ms_between(a: int | None, b: int | None) -> float | None:
    return (b - a) / 1000.0 if a is not None and b is not None else None


def judge(status: int, content: bytes, client_ms: float, expected: dict[str, Any] | None) -> Sample:
    """A response as a Sample: ok only for 2xx, succeeded, decided by the device's ack."""
    try:
        cmd = orjson.loads(content)
    except orjson.JSONDecodeError:
        return Sample(client_ms, f"HTTP {status} not JSON", status=status, detail=_short(content))
    if not isinstance(cmd, dict):
        return Sample(
            client_ms, f"HTTP {status} not an object", status=status, detail=_short(content)
        )
    created = _epoch_us(cmd.get("created"))
    sent = _epoch_us(cmd.get("sent"))
    finished = _epoch_us(cmd.get("finished"))
    times: dict[str, Any] = {
        "server_ms": _ms_between(created, finished),
        "dispatch_ms": _ms_between(created, sent),
        "device_ms": _ms_between(sent, finished),
    }
    if not 200 <= status < 300:
        return Sample(client_ms, f"HTTP {status}", status=status, detail=_short(content))
    state, decided = cmd.get("state"), cmd.get("decided_by")
    if state != "succeeded" or decided != "ack":
        return Sample(
            client_ms,
            f"state {state} decided_by {decided}",
            status=status,
            detail=_short(content),
            **times,
        )
    result = cmd.get("result")
    if expected is not None and (
        not isinstance(result, dict) or any(result.get(k) != v for k, v in expected.items())
    ):
        return Sample(
            client_ms, "unexpected result", status=status, detail=_short(content), **times
        )
    return Sample(client_ms, None, status=status, **times)


def _short(content: bytes, n: int = 400) -> str:
    return content[:n].decode(errors="replace")


def _failed(client_ms: float, exc: Exception) -> Sample:
    return Sample(client_ms, type(exc).__name__, detail=str(exc)[:400])


def commands_path(device: str, wait_s: float) -> str:
    return f"/api/v1/devices/{device}/commands?wait_s={wait_s:g}"


HEADERS = {"content-type": "application/json"}
# The HTTP floor: a trivial API call (one database ping) through the same clients.
FLOOR_PATH = "/healthz"


# --- figures --------------------------------------------------------------------------------------


def dist(values: Sequence[float]) -> dict[str, Any]:
    """Nearest-rank percentiles (exact: every value kept), in ms, rounded to 0.01."""
    if not values:
        return {"count": 0, **dict.fromkeys(DIST_FIGURES)}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * n) - 1)]

    return {
        "count": n,
        "p50_ms": round(rank(0.50), 2),
        "p95_ms": round(rank(0.95), 2),
        "p99_ms": round(rank(0.99), 2),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def phase_figures(
    samples: Sequence[Sample], duration_s: float, *, commands: bool = True
) -> dict[str, Any]:
    """Counts, error kinds and distributions of one phase (``commands`` False: the floor)."""
    ok = [s for s in samples if s.problem is None]
    kinds = Counter(s.problem for s in samples if s.problem is not None)
    examples = [
        {"kind": s.problem, "status": s.status, "detail": s.detail}
        for s in samples
        if s.problem is not None
    ][:ERROR_EXAMPLES]
    statuses = Counter(str(s.status) for s in samples)

    def values(attr: str) -> list[float]:
        return [v for s in ok if (v := getattr(s, attr)) is not None]

    out: dict[str, Any] = {
        "commands" if commands else "requests": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "error_kinds": dict(kinds),
        "error_examples": examples,
        "http_statuses": dict(statuses),
        "client": dist([s.client_ms for s in ok]),
    }
    if commands:
        out.update(
            server=dist(values("server_ms")),
            server_dispatch=dist(values("dispatch_ms")),
            server_device=dist(values("device_ms")),
            outside_server=dist([s.client_ms - s.server_ms for s in ok if s.server_ms is not None]),
        )
    rate = round(len(samples) / duration_s, 1) if duration_s > 0 else None
    out["duration_s"] = round(duration_s, 3)
    out["commands_per_s" if commands else "requests_per_s"] = rate
    return out


# --- the two phases ----------------------------------------------------------------------------


def command_sample(r: httpx.Response, t0_ns: int, expected: dict[str, Any] | None) -> Sample:
    return judge(r.status_code, r.content, (time.perf_counter_ns() - t0_ns) / 1e6, expected)


def floor_sample(r: httpx.Response, t0_ns: int) -> Sample:
    client_ms = (time.perf_counter_ns() - t0_ns) / 1e6
    if r.status_code != 200:
        return Sample(client_ms, f"HTTP {r.status_code}", status=r.status_code)
    return Sample(client_ms, None, status=r.status_code)


def run_sequential(
    base_url: str,
    ids: Sequence[str],
    n: int,
    bodies: CommandBodies | None,
    wait_s: float,
    tag: str,
    label: str,
    first_index: int = 0,
    quiet: bool = False,
) -> tuple[list[Sample], float]:
    """``n`` requests one after the other over one keep-alive connection; (samples, seconds).

    ``bodies`` None: the HTTP floor, ``GET /healthz`` instead of a command.
    """
    samples: list[Sample] = []
    timeout = httpx.Timeout(wait_s + HTTP_SLACK_S)
    with httpx.Client(base_url=base_url, timeout=timeout, headers=HEADERS) as client:
        paths = [commands_path(d, wait_s) for d in ids]
        t_start = time.perf_counter()
        next_note = t_start + PROGRESS_EVERY_S
        mark = 0
        for i in range(n):
            t0 = time.perf_counter_ns()
            try:
                if bodies is None:
                    samples.append(floor_sample(client.get(FLOOR_PATH), t0))
                else:
                    content, expected = bodies.body(first_index + i)
                    r = client.post(paths[i % len(paths)], content=content)
                    samples.append(command_sample(r, t0, expected))
            except httpx.HTTPError as exc:
                samples.append(_failed((time.perf_counter_ns() - t0) / 1e6, exc))
            now = time.perf_counter()
            if not quiet and now >= next_note:
                _progress(tag, f"{label} {i + 1}/{n}", samples[mark:], samples)
                mark = len(samples)
                next_note = now + PROGRESS_EVERY_S
        duration = time.perf_counter() - t_start
    return samples, duration


async def _concurrent(
    base_url: str,
    ids: Sequence[str],
    rounds: int,
    in_flight: int,
    warmup_rounds: int,
    bodies: CommandBodies | None,
    wait_s: float,
    tag: str,
    label: str,
    first_index: int = 0,
) -> tuple[list[Sample], list[Sample], list[float]]:
    """Rounds of ``in_flight`` requests at once; (warm-up samples, samples, round seconds).

    One AsyncClient (one keep-alive connection) per slot: httpcore's pool scans every connection
    for every request, so one client with 100 connections cost 8.6 ms of client CPU per request
    against 2.0 ms for 100 one-connection clients (measured on this box against a bare FastAPI
    app), and that client time would be counted as fieldhub's latency.
    """
    timeout = httpx.Timeout(wait_s + HTTP_SLACK_S)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # One TLS context for all (unused on http://): httpx would load the CA bundle per client.
    tls = ssl.create_default_context()
    paths = [commands_path(d, wait_s) for d in ids]
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=base_url, timeout=timeout, limits=limits, headers=HEADERS, verify=tls
                )
            )
            for _ in range(in_flight)
        ]

        async def one(i: int, j: int) -> Sample:
            client = clients[j]
            t0 = time.perf_counter_ns()
            try:
                if bodies is None:
                    return floor_sample(await client.get(FLOOR_PATH), t0)
                content, expected = bodies.body(i)
                r = await client.post(paths[j % len(paths)], content=content)
                return command_sample(r, t0, expected)
            except httpx.HTTPError as exc:
                return _failed((time.perf_counter_ns() - t0) / 1e6, exc)

        async def round_of(k: int) -> tuple[list[Sample], float]:
            base = first_index + k * in_flight
            t0 = time.perf_counter()
            got = await asyncio.gather(*(one(base + j, j) for j in range(in_flight)))
            return list(got), time.perf_counter() - t0

        warm: list[Sample] = []
        for k in range(warmup_rounds):
            got, _ = await round_of(k)
            warm += got
        samples: list[Sample] = []
        round_s: list[float] = []
        next_note = time.perf_counter() + PROGRESS_EVERY_S
        for r in range(rounds):
            got, seconds = await round_of(warmup_rounds + r)
            samples += got
            round_s.append(seconds)
            now = time.perf_counter()
            if now >= next_note or r == rounds - 1:
                _progress(
                    tag,
                    f"{label} round {r + 1}/{rounds} ({seconds * 1000:.0f} ms)",
                    got,
                    samples,
                )
                next_note = now + PROGRESS_EVERY_S
    return warm, samples, round_s


def run_concurrent(*args: Any, **kwargs: Any) -> tuple[list[Sample], list[Sample], list[float]]:
    """``_concurrent`` on uvloop (about 7 % less client CPU than asyncio's own loop)."""
    return uvloop.run(_concurrent(*args, **kwargs))


def _progress(tag: str, where: str, recent: Sequence[Sample], every: Sequence[Sample]) -> None:
    rec = dist([s.client_ms for s in recent if s.problem is None])
    errors = sum(1 for s in every if s.problem is not None)
    say(
        f"  {tag} {where}: last {len(recent)} p50 {rec['p50_ms']} ms, p99 {rec['p99_ms']} ms, "
        f"max {rec['max_ms']} ms; errors so far {errors}"
    )


# --- one run -------------------------------------------------------------------------------------


def _start_fieldhub(
    fieldhub: str,
    data_dir: Path,
    mqtt_port: int,
    http_port: int,
    log: Path,
    extra: list[str],
) -> subprocess.Popen[bytes]:
    """``fieldhub up`` as bench.common.start_fieldhub does, with the raised command limits."""
    cmd = [
        fieldhub,
        "up",
        "--data-dir",
        str(data_dir),
        "--mqtt-port",
        str(mqtt_port),
        "--http-port",
        str(http_port),
        *extra,
    ]
    env = fieldhub_env(LIMIT_ENV)
    say(f"starting: {' '.join(f'{k}={v}' for k, v in LIMIT_ENV.items())} {' '.join(cmd)}")
    with open(log, "wb") as f:
        return subprocess.Popen(
            cmd,
            cwd=data_dir.parent,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _wait_online(base_url: str, ids: Sequence[str]) -> float:
    """Wait until every device's presence is online; seconds waited."""
    t0 = time.monotonic()
    deadline = t0 + PRESENCE_TIMEOUT_S
    pending = list(ids)
    last: dict[str, str] = {}
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        while pending:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"devices not online after {PRESENCE_TIMEOUT_S:.0f}s: "
                    f"{', '.join(f'{d} ({last.get(d)})' for d in pending[:5])}"
                )
            for d in list(pending):
                r = client.get(f"/api/v1/devices/{d}")
                if r.status_code == 200 and r.json().get("presence") == "online":
                    pending.remove(d)
                else:
                    last[d] = (
                        f"HTTP {r.status_code}"
                        if r.status_code != 200
                        else f"presence {r.json().get('presence')}"
                    )
            if pending:
                time.sleep(0.1)
    return time.monotonic() - t0


def _command_types(base_url: str, device: str) -> dict[str, Any]:
    """GET command-types of one device: proves the API is there and the format was learnt."""
    url = f"{base_url}/api/v1/devices/{device}/command-types"
    r = httpx.get(url, timeout=5.0)
    if r.status_code != 200:
        raise BenchError(
            f"GET {url} returned {r.status_code}: {r.text[:300]} (is the command API there?)"
        )
    data = r.json()
    commands = data.get("commands") if isinstance(data, dict) else None
    names = None
    if isinstance(commands, list):
        names = [c.get("name") if isinstance(c, dict) else c for c in commands]
    elif isinstance(commands, dict):
        names = sorted(commands)
    return {"format": data.get("format") if isinstance(data, dict) else None, "commands": names}


def _command_metrics(text: str | None) -> dict[str, float]:
    """Every fieldhub_command* sample (counters, gauges, histogram _count/_sum) by name{labels}."""
    out: dict[str, float] = {}
    if text is None:
        return out
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("fieldhub_command"):
            continue
        for s in family.samples:
            if s.name.endswith(("_bucket", "_created")):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 6) for k, v in sorted(after.items())}


def _scrape_or_note(url: str, run: dict[str, Any]) -> str | None:
    try:
        return scrape(url)
    except (OSError, RuntimeError, ValueError) as exc:
        run["notes"].append(f"cannot scrape {url}: {exc}")
        return None


def _cpu(sample: dict[str, Any]) -> dict[str, Any]:
    """One Sampler sample taken at a phase's end: CPU of each group over the phase."""
    return {
        "fieldhub_percent": sample["fieldhub"]["cpu"],
        "mosquitto_percent": sample["mosquitto"]["cpu"],
        "devices_percent": sample["devices"]["cpu"],
        "client_percent": sample["client"]["cpu"],
        "machine_busy_percent": sample["machine_busy"],
        "others_percent": sample["others_cpu"],
        "fieldhub_rss_mb": round(sample["fieldhub"]["rss"] / 2**20, 1),
    }


def measured_run(k: int, n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One fresh `fieldhub up`, its devices, both phases. Errors go into the dict."""
    tag = f"run {k}/{n}"
    rundir = workdir / f"run{k}"
    data_dir = rundir / "data"
    data_dir.mkdir(parents=True)
    # fieldhub's Mosquitto may drop to user `mosquitto` (when we are root): let it read the dir.
    for d in (workdir, rundir, data_dir):
        d.chmod(0o755)
    mqtt_port, http_port = free_port(), free_port()
    while http_port == mqtt_port:
        http_port = free_port()
    run: dict[str, Any] = {"run": k, "errors": [], "notes": []}
    fh_log = rundir / "fieldhub.log"
    proc = _start_fieldhub(args.fieldhub, data_dir, mqtt_port, http_port, fh_log, args.fieldhub_arg)
    devs: DevicesProc | None = None
    mosq_pids: list[int] = []
    try:
        ready = wait_healthy(proc, fh_log, http_port, mqtt_port)
        http_port, mqtt_port = ready["http_port"], ready["mqtt_port"]
        run.update(startup_s=ready["startup_s"], ports={"mqtt": mqtt_port, "http": http_port})
        base_url = f"http://127.0.0.1:{http_port}"
        root = psutil.Process(proc.pid)
        mosq_pids = [p.pid for p in descendants(root) if is_mosquitto(p)]
        if not mosq_pids:
            run["notes"].append("no mosquitto child process found: mosquitto cpu not sampled")

        say(f"{tag}: fieldhub up (mqtt {mqtt_port}, http {http_port}); {args.devices} devices")
        devs = DevicesProc(mqtt_port, args.devices, rundir / "devices.log")
        ready_dev = devs.wait_for("ready", DEVICES_READY_TIMEOUT_S)
        ids: list[str] = ready_dev["devices"]
        online_s = _wait_online(base_url, ids)
        run.update(devices=len(ids), devices_connect_s=ready_dev["connect_s"])
        run["devices_online_s"] = round(online_s, 2)
        run["command_types"] = _command_types(base_url, ids[0])
        say(
            f"  {tag}: {len(ids)} devices connected in {ready_dev['connect_s']:.2f}s, online in "
            f"the API {online_s:.2f}s later; format {run['command_types']['format']}"
        )
        time.sleep(SETTLE_AFTER_HEALTHY_S)

        devices_pid = devs.proc.pid
        me = psutil.Process()
        sampler = Sampler()
        sampler.add(
            "fieldhub", lambda: [root, *(p for p in descendants(root) if not is_mosquitto(p))]
        )
        sampler.add("mosquitto", lambda: [p for p in descendants(root) if is_mosquitto(p)])
        dp = psutil.Process(devices_pid)
        sampler.add("devices", lambda: [dp] if dp.is_running() else [])
        sampler.add("client", lambda: [me])
        metrics_url = f"{base_url}/metrics"
        before = _command_metrics(_scrape_or_note(metrics_url, run))
        bodies = CommandBodies(args.command)
        posted = 0

        # -- warm-up (sequential), then the sequential phase and its HTTP floor --
        warm, _ = run_sequential(
            base_url,
            ids,
            WARMUP_PER_DEVICE * len(ids),
            bodies,
            args.wait_s,
            tag,
            "warm-up",
            quiet=True,
        )
        posted += len(warm)
        warm_errors = Counter(s.problem for s in warm if s.problem is not None)
        say(f"  {tag}: warm-up {len(warm)} commands, {sum(warm_errors.values())} errors")
        sampler.sample()
        say(f"  {tag}: sequential, {args.sequential} commands")
        seq, seq_s = run_sequential(
            base_url,
            ids,
            args.sequential,
            bodies,
            args.wait_s,
            tag,
            "sequential",
            first_index=posted,
        )
        posted += len(seq)
        run["sequential"] = phase_figures(seq, seq_s)
        run["sequential"]["cpu"] = _cpu(sampler.sample())
        _say_phase(tag, "sequential", run["sequential"])
        floor: dict[str, Any] = {}
        if args.floor:
            run_sequential(base_url, ids, FLOOR_WARMUP, None, args.wait_s, tag, "", quiet=True)
            sampler.sample()
            fseq, fseq_s = run_sequential(
                base_url, ids, args.sequential, None, args.wait_s, tag, "floor sequential"
            )
            floor["sequential"] = phase_figures(fseq, fseq_s, commands=False)
            floor["sequential"]["cpu"] = _cpu(sampler.sample())
            _say_floor(tag, "sequential", floor["sequential"])

        # -- concurrent: warm-up round(s), then the rounds, then its HTTP floor --
        say(f"  {tag}: concurrent, {args.rounds} rounds of {args.in_flight} in flight")
        sampler.sample()
        cwarm, conc, round_s = run_concurrent(
            base_url,
            ids,
            args.rounds,
            args.in_flight,
            WARMUP_ROUNDS,
            bodies,
            args.wait_s,
            tag,
            "concurrent",
            first_index=posted,
        )
        cpu = _cpu(sampler.sample())
        posted += len(cwarm) + len(conc)
        warm_errors.update(s.problem for s in cwarm if s.problem is not None)
        run["concurrent"] = phase_figures(conc, sum(round_s))
        run["concurrent"].update(
            rounds=len(round_s),
            in_flight=args.in_flight,
            round_ms=dist([s * 1000 for s in round_s]),
            cpu=cpu,
        )
        _say_phase(tag, "concurrent", run["concurrent"])
        run["warmup"] = {
            "commands": len(warm) + len(cwarm),
            "errors": sum(warm_errors.values()),
            "error_kinds": dict(warm_errors),
        }
        if args.floor:
            sampler.sample()
            _, fconc, fround_s = run_concurrent(
                base_url,
                ids,
                args.rounds,
                args.in_flight,
                WARMUP_ROUNDS,
                None,
                args.wait_s,
                tag,
                "floor concurrent",
            )
            floor["concurrent"] = phase_figures(fconc, sum(fround_s), commands=False)
            floor["concurrent"].update(
                round_ms=dist([s * 1000 for s in fround_s]), cpu=_cpu(sampler.sample())
            )
            _say_floor(tag, "concurrent", floor["concurrent"])
        run["floor"] = floor or None

        after = _command_metrics(_scrape_or_note(metrics_url, run))
        run["server_metrics"] = _metric_deltas(before, after)
        dev_result = devs.finish()
        run["device_side"] = _device_side(dev_result, posted)
    except (BenchError, RuntimeError, OSError, ValueError, psutil.Error, httpx.HTTPError) as exc:
        run["errors"].append(f"{type(exc).__name__}: {exc}")
        return _finish_failed(run, proc, devs, mosq_pids, rundir)
    except BaseException:
        run["errors"].append("interrupted")
        _finish_failed(run, proc, devs, mosq_pids, rundir)
        raise

    run["shutdown"] = stop_fieldhub(proc, mosq_pids)
    run["errors"] += run["shutdown"].pop("errors")
    _judge_run(run)
    if not run["errors"] and not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    else:
        run["logs"] = str(rundir)
    return run


def _device_side(result: dict[str, Any], posted: int) -> dict[str, Any]:
    per = result["per_device"]
    executed = sum(int(d["executed"]) for d in per.values())
    return {
        "commands_posted": posted,
        "executed": executed,
        "repeated": sum(int(d["repeated"]) for d in per.values()),
        "rejected": sum(int(d["rejected"]) for d in per.values()),
        "disconnects": sum(int(d["disconnects"]) for d in per.values()),
        "not_connected_at_end": [k for k, d in per.items() if not d["connected_at_end"]],
        "executed_per_device": {k: d["executed"] for k, d in per.items()},
        "heartbeats": result.get("heartbeats"),
    }


def _judge_run(run: dict[str, Any]) -> None:
    """Command errors are run errors (loud); odd device-side counts and busy phases are notes."""
    for phase in PHASES:
        fig = run.get(phase)
        if fig and fig["errors"]:
            run["errors"].append(
                f"{fig['errors']} of {fig['commands']} {phase} commands did not end "
                f"succeeded/ack: {fig['error_kinds']}"
            )
        statuses = set(fig["http_statuses"]) if fig else set()
        if statuses - {"201"} and fig and not fig["errors"]:
            run["notes"].append(
                f"{phase}: HTTP statuses {fig['http_statuses']} (docs/commands.md: 201 for a new "
                "command)"
            )
        others = dig(fig, "cpu.others_percent") if fig else None
        if others is not None and others > OTHERS_CPU_WARN_PERCENT:
            run["notes"].append(
                f"{phase}: other processes used {others}% of a core: figures are perturbed"
            )
    client = dig(run, "concurrent.cpu.client_percent")
    if client is not None and client > CLIENT_CPU_WARN_PERCENT:
        run["notes"].append(
            f"concurrent: the client process used {client}% of a core: its own event loop may "
            "have added latency"
        )
    warm = run.get("warmup")
    if warm and warm["errors"]:
        run["errors"].append(
            f"{warm['errors']} of {warm['commands']} warm-up commands did not end "
            f"succeeded/ack: {warm['error_kinds']}"
        )
    side = run.get("device_side")
    if side:
        if side["executed"] != side["commands_posted"]:
            run["notes"].append(
                f"the devices executed {side['executed']} commands, {side['commands_posted']} "
                "were posted"
            )
        if side["repeated"]:
            run["notes"].append(
                f"the devices received {side['repeated']} command ids a second time (answered "
                "from their ack memory, not run again)"
            )
        if side["disconnects"] or side["not_connected_at_end"]:
            run["notes"].append(
                f"device connections dropped {side['disconnects']} time(s); not connected at the "
                f"end: {side['not_connected_at_end']}"
            )
    for phase, fig in (run.get("floor") or {}).items():
        if fig["errors"]:
            run["notes"].append(
                f"floor {phase}: {fig['errors']} of {fig['requests']} GET {FLOOR_PATH} failed: "
                f"{fig['error_kinds']}"
            )
    late = sum(v for k, v in run.get("server_metrics", {}).items() if "late_repl" in k)
    if late:
        run["notes"].append(f"fieldhub counted {late:g} late replies")


def _say_phase(tag: str, phase: str, fig: dict[str, Any]) -> None:
    c, s, o = fig["client"], fig["server"], fig["outside_server"]
    say(
        f"  {tag} {phase}: {fig['ok']}/{fig['commands']} ok, client p50 {c['p50_ms']} / p95 "
        f"{c['p95_ms']} / p99 {c['p99_ms']} / max {c['max_ms']} ms; server finished-created p50 "
        f"{s['p50_ms']} / p99 {s['p99_ms']} ms, outside it p50 {o['p50_ms']} / p99 {o['p99_ms']} "
        f"ms; {fig['commands_per_s']} commands/s; fieldhub cpu "
        f"{fig['cpu']['fieldhub_percent']}%, client {fig['cpu']['client_percent']}%, devices "
        f"{fig['cpu']['devices_percent']}%, others {fig['cpu']['others_percent']}%"
    )
    if fig["errors"]:
        say(f"  {tag} {phase}: ERRORS: {fig['errors']} commands: {fig['error_kinds']}")
        for ex in fig["error_examples"][:2]:
            say(f"    e.g. {ex}")


def _say_floor(tag: str, phase: str, fig: dict[str, Any]) -> None:
    c = fig["client"]
    say(
        f"  {tag} floor {phase} (GET {FLOOR_PATH}): {fig['ok']}/{fig['requests']} ok, p50 "
        f"{c['p50_ms']} / p95 {c['p95_ms']} / p99 {c['p99_ms']} / max {c['max_ms']} ms; "
        f"{fig['requests_per_s']} requests/s; fieldhub cpu {fig['cpu']['fieldhub_percent']}%, "
        f"client {fig['cpu']['client_percent']}%"
    )


def _finish_failed(
    run: dict[str, Any],
    proc: subprocess.Popen[bytes],
    devs: DevicesProc | None,
    mosq_pids: list[int],
    rundir: Path,
) -> dict[str, Any]:
    if devs is not None:
        devs.stop()
    shutdown = stop_fieldhub(proc, mosq_pids)
    run["errors"] += [e for e in shutdown.pop("errors") if "already exited" not in e]
    run["shutdown"] = shutdown
    run["logs"] = str(rundir)
    say(f"  run failed: {run['errors'][0].splitlines()[0]} (logs in {rundir})")
    return run


# --- verdict --------------------------------------------------------------------------------------


def checks_for(
    args: argparse.Namespace, runs: list[dict[str, Any]], median: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    command_errors = sum(int(dig(r, f"{p}.errors") or 0) for r in runs for p in PHASES) + sum(
        int(dig(r, "warmup.errors") or 0) for r in runs
    )
    out: dict[str, dict[str, Any]] = {
        "config_meets_goal": {
            "ok": args.sequential >= GOAL_SEQUENTIAL
            and args.in_flight >= GOAL_IN_FLIGHT
            and args.rounds * args.in_flight >= GOAL_CONCURRENT_COMMANDS
            and not args.quick,
            "value": {
                "sequential": args.sequential,
                "rounds": args.rounds,
                "in_flight": args.in_flight,
                "quick": args.quick,
            },
        },
        "all_runs_completed": {
            "ok": bool(runs) and all(not r["errors"] for r in runs),
            "value": f"{sum(1 for r in runs if not r['errors'])}/{len(runs)}",
        },
        "zero_command_errors": {"ok": bool(runs) and command_errors == 0, "value": command_errors},
    }
    for phase in PHASES:
        p99 = median.get(f"{phase}.client.p99_ms")
        out[f"p99_{phase}_at_goal"] = {
            "ok": p99 is not None and p99 <= GOAL_P99_MS,
            "value": p99,
            "limit_ms": GOAL_P99_MS,
        }
    return out


def _limit_settings_note() -> str | None:
    """Say so when fieldhub has no setting the raised-limit variables would set."""
    try:
        from fieldhub.config import Settings
    except ImportError as exc:
        return f"cannot import fieldhub.config to check the limit settings: {exc}"
    missing = [name for name in LIMIT_SETTINGS if name not in Settings.model_fields]
    if missing:
        return (
            f"fieldhub's Settings has no {', '.join(missing)}: the FIELDHUB_COMMAND_* variables "
            "the bench sets are ignored, so the per-device limits were NOT raised"
        )
    return None


# --- main -----------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.commands",
        description="Command round trip: POST .../commands?wait_s -> device ack stored, "
        "sequential and N in flight, against `fieldhub up`; writes bench/results/commands.json.",
    )
    p.add_argument("--devices", type=int, default=DEFAULT_DEVICES, help="simulated devices (10)")
    p.add_argument(
        "--sequential", type=int, default=DEFAULT_SEQUENTIAL, help="sequential commands (2000)"
    )
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="concurrent rounds (20)")
    p.add_argument(
        "--in-flight", type=int, default=DEFAULT_IN_FLIGHT, help="commands per round (100)"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs (medians are reported)")
    p.add_argument(
        "--command",
        choices=("ping", "set_window"),
        default="ping",
        help="what to send (default ping; set_window moves the simulated window)",
    )
    p.add_argument(
        "--wait-s", type=float, default=DEFAULT_WAIT_S, help="?wait_s= of every POST (5)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test the bench: 200 sequential, 5 rounds of 100, 1 run",
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
    p.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help=f"skip the HTTP floor (the same clients against GET {FLOOR_PATH})",
    )
    p.add_argument("--keep", action="store_true", help="keep data dirs and logs of good runs")
    p.add_argument("--output", type=Path, default=None, help="result file (default results/)")
    p.add_argument("--require-pass", action="store_true", help="exit 1 unless passed (for CI)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if (
        args.devices < 1
        or args.sequential < 1
        or args.rounds < 1
        or args.in_flight < 1
        or args.repeats < 1
        or not 0 < args.wait_s <= 30
    ):
        p.error(
            "--devices, --sequential, --rounds, --in-flight, --repeats >= 1; 0 < --wait-s <= 30"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command round-trip benchmark and write bench/results/commands.json."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_devices"]:
        return devices_main(argv[1:])
    args = _parse_args(argv)
    bench = start_bench("commands", "fieldhub, the devices and the HTTP client")
    started, workdir, notes = bench.started, bench.workdir, bench.notes
    note = _limit_settings_note()
    if note:
        notes.append(note)
        say(f"warning: {note}")
    say(
        f"commands bench: {args.devices} devices, {args.sequential} sequential + {args.rounds} x "
        f"{args.in_flight} in flight '{args.command}' commands, wait_s {args.wait_s:g}, "
        f"{args.repeats} repeat(s){' (quick)' if args.quick else ''}; work dir {workdir}"
    )
    errors: list[str] = []
    runs: list[dict[str, Any]] = []
    try:
        if not Path(args.fieldhub).exists() and shutil.which(args.fieldhub) is None:
            errors.append(f"{args.fieldhub} not found: pip install -e . in the venv first")
        else:
            for k in range(1, args.repeats + 1):
                runs.append(measured_run(k, args.repeats, args, workdir))
    except KeyboardInterrupt:
        errors.append("interrupted")
        say("interrupted: writing what we have")

    measured = [r for r in runs if r.get("sequential") or r.get("concurrent")]
    median = median_of(measured, MEDIAN_KEYS)
    checks = checks_for(args, runs, median)
    result: dict[str, Any] = {
        "bench": "commands",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "goal": {
            "p99_ms": GOAL_P99_MS,
            "what": "POST /api/v1/devices/{id}/commands?wait_s -> device ack stored, on loopback",
        },
        "config": {
            "devices": args.devices,
            "sequential": args.sequential,
            "rounds": args.rounds,
            "in_flight": args.in_flight,
            "concurrent_commands": args.rounds * args.in_flight,
            "repeats": args.repeats,
            "quick": args.quick,
            "command": json.loads(CommandBodies(args.command).body(0)[0]),
            "wait_s": args.wait_s,
            "warmup": {
                "sequential_per_device": WARMUP_PER_DEVICE,
                "concurrent_rounds": WARMUP_ROUNDS,
            },
            "limits_env": LIMIT_ENV,
            "limits_note": "per-device command rate, burst and queue raised far above the "
            "defaults (5/s, 20, 100) so fieldhub's limiter never refuses a bench command: the "
            "figures are the round trip, not the limiter",
            "floor": args.floor,
            "client_event_loop": "uvloop" if uvloop is not None else "asyncio",
            "httpx": httpx.__version__,
            "fieldhub_source": source_state(),
            "devices_process": "separate: the simulated devices run in their own process "
            "(python -m bench.commands _devices), the HTTP client in the bench's",
            "device_heartbeat_s": HEARTBEAT_S,
            "fieldhub": args.fieldhub,
            "fieldhub_args": args.fieldhub_arg,
            "machine": {**machine_info(), "background_busy_percent": bench.background_percent},
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "median": median,
        "per_run": {
            f"{where}.client.{fig}": [dig(r, f"{where}.client.{fig}") for r in runs]
            for where in (*PHASES, *(f"floor.{p}" for p in PHASES))
            for fig in ("p50_ms", "p95_ms", "p99_ms", "max_ms")
        },
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
        "runs": runs,
        "methods": METHODS,
        "notes": notes + [f"run {r['run']}: {n}" for r in runs for n in r["notes"]],
        "errors": errors + [f"run {r['run']}: {e}" for r in runs for e in r["errors"]],
    }
    path = write_result("commands", result, args.output)
    say(f"wrote {path}")
    _print_summary(result)
    tidy_workdir(workdir, keep=bool(result["errors"]) or args.keep)
    if result["errors"]:
        return 2
    return 1 if args.require_pass and not result["passed"] else 0


def _print_summary(result: dict[str, Any]) -> None:
    m = result["median"]
    say("medians across runs (ms): p50 / p95 / p99 / max")
    for phase in PHASES:
        for view, label in (("client", "client wall time"), ("server", "finished - created")):
            say(
                f"  {phase:>10} {label:>18}: {m[f'{phase}.{view}.p50_ms']} / "
                f"{m[f'{phase}.{view}.p95_ms']} / {m[f'{phase}.{view}.p99_ms']} / "
                f"{m[f'{phase}.{view}.max_ms']}"
            )
        say(
            f"  {phase:>10} p99 per run: {result['per_run'][f'{phase}.client.p99_ms']}; "
            f"{m[f'{phase}.commands_per_s']} commands/s"
        )
        if m[f"floor.{phase}.client.p50_ms"] is not None:
            say(
                f"  {phase:>10} {'floor GET ' + FLOOR_PATH:>18}: "
                f"{m[f'floor.{phase}.client.p50_ms']} / {m[f'floor.{phase}.client.p95_ms']} / "
                f"{m[f'floor.{phase}.client.p99_ms']} / {m[f'floor.{phase}.client.max_ms']}"
            )
    for name, c in result["checks"].items():
        say(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {c['value']}")
    say(f"passed: {result['passed']}")
    say_notes_and_errors(result)


if __name__ == "__main__":
    sys.exit(main())
