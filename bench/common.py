"""Helpers shared by the benchmarks: ports, brokers, processes, sampling, Prometheus, results.

Everything here is synchronous on purpose: a benchmark orchestrates other processes once a
second; the only fast code (the load generator) runs in a process of its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
# Debian installs the broker outside a user's PATH (docs/field-notes.md, "Mosquitto").
MOSQUITTO_BIN = "/usr/sbin/mosquitto"
# How long a broker we start may take to accept connections; it is ready in ~10 ms here, so
# this only bounds a broken config.
BROKER_START_TIMEOUT_S = 10.0
# SIGTERM/SIGINT grace before SIGKILL when we stop a process we started.
STOP_GRACE_S = 30.0

_T0 = time.monotonic()


def say(msg: str) -> None:
    """A progress line with the seconds since the benchmark started: long runs are never silent."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


# Above this, the machine was too busy before a bench started for its figures to be fieldhub's.
BACKGROUND_BUSY_WARN_PERCENT = 10.0


def say_notes_and_errors(result: dict[str, Any]) -> None:
    """A result's notes, a line each, then its errors between rules of `!` (the end of a
    bench's summary)."""
    for n in result["notes"]:
        say(f"note: {n.splitlines()[0]}")
    if result["errors"]:
        say("!" * 72)
        for e in result["errors"]:
            say(f"ERROR: {e.splitlines()[0]}")
        say("!" * 72)


@dataclass
class BenchStart:
    """What every benchmark sets up first: its work dir, start time and the machine's state."""

    started: datetime
    workdir: Path
    background_percent: float
    notes: list[str]


def start_bench(name: str, competitors: str) -> BenchStart:
    """Raise the descriptor limit, make a work dir, and note a busy machine.

    fieldhub's Mosquitto inherits our limits: thousands of simulated devices need thousands of
    descriptors there. `competitors` names what shares the cores with fieldhub, for the note.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    start = BenchStart(
        started=datetime.now(UTC),
        workdir=Path(tempfile.mkdtemp(prefix=f"bench-{name}-")),
        background_percent=background_busy(),
        notes=[],
    )
    if start.background_percent > BACKGROUND_BUSY_WARN_PERCENT:
        start.notes.append(
            f"the machine was {start.background_percent:.0f}% busy before the bench started: "
            f"other processes compete with {competitors} for the cores; rerun on a quiet machine"
        )
        say(f"warning: {start.notes[-1]}")
    return start


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the system Mosquitto holds 1883: never use it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(host: str, port: int, timeout_s: float) -> bool:
    """True once something accepts TCP connections on host:port, False at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def mosquitto_version(binary: str = MOSQUITTO_BIN) -> str | None:
    """``mosquitto version 2.0.11`` -> ``2.0.11``; None if the binary is missing."""
    if not Path(binary).exists():
        return None
    # `mosquitto -h` prints the version first and exits 3: read it, ignore the code.
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False, timeout=10)
    first = (out.stdout or out.stderr).splitlines()[:1]
    return first[0].removeprefix("mosquitto version ").strip() if first else None


def git(*args: str, root: Path = REPO_ROOT) -> str | None:
    """`git ARGS` in the repository (or `root`), its output stripped; None when git fails or is
    missing."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def source_state() -> dict[str, Any]:
    """The fieldhub source a bench measures: the tree PYTHONPATH names when it names one (an A/B
    runs another checkout that way; spawned fieldhub processes inherit it), else this checkout;
    its commit, subject and the files under src/ changed since it."""
    root = REPO_ROOT
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and (Path(entry) / "fieldhub").is_dir():
            root = Path(entry).resolve().parent
            break
    dirty = git("status", "--porcelain", "--", "src", root=root)
    return {
        "tree": str(root),
        "commit": git("rev-parse", "HEAD", root=root),
        "subject": git("log", "-1", "--format=%s", root=root),
        "src_uncommitted": dirty.splitlines() if dirty else [],
    }


@contextlib.contextmanager
def busy_neighbour(on: bool) -> Iterator[None]:
    """A process keeping one core busy while the block runs, when asked: the "neighbour on one
    core" a query's latency is judged with."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare results across machines."""
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_mb": round(psutil.virtual_memory().total / 2**20),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mosquitto": mosquitto_version(),
    }


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> int | None:
    """Signal a process we started, wait ``STOP_GRACE_S``, then SIGKILL; return its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


# --- a bare Mosquitto for calibration ---------------------------------------------------------


@dataclass
class Broker:
    """A Mosquitto we started: its port, process and log."""

    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"


@contextlib.contextmanager
def bare_mosquitto(
    *, max_queued_messages: int = 100_000, max_inflight_messages: int | None = None
) -> Iterator[Broker]:
    """Start Mosquitto on a free loopback port with the settings docs/field-notes.md says we need.

    The listener names its address (without one Mosquitto binds everywhere and refuses anonymous
    clients), ``set_tcp_nodelay`` avoids 44/88 ms Nagle stalls, and ``max_queued_messages`` is
    raised so a slow subscriber is not silently dropped. ``max_inflight_messages``: QoS 1
    messages sent to a subscriber before its PUBACKs (None: Mosquitto's default, 20; fieldhub's
    broker raises it). No persistence: a calibration broker must not write to disk.
    """
    if not Path(MOSQUITTO_BIN).exists():
        raise RuntimeError(f"{MOSQUITTO_BIN} not found: apt-get install mosquitto")
    workdir = Path(tempfile.mkdtemp(prefix="bench-mosquitto-"))
    port = free_port()
    conf = workdir / "mosquitto.conf"
    inflight = (
        "" if max_inflight_messages is None else f"max_inflight_messages {max_inflight_messages}\n"
    )
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        f"max_queued_messages {max_queued_messages}\n"
        f"{inflight}"
        "set_tcp_nodelay true\n"
        "persistence false\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
    )
    # Run as root, Mosquitto drops to user `mosquitto`: it must be able to read the config.
    workdir.chmod(0o755)
    conf.chmod(0o644)
    with open(workdir / "mosquitto.log", "wb") as log:
        proc = subprocess.Popen(
            [MOSQUITTO_BIN, "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C on the benchmark must not kill it mid-cleanup
        )
    broker = Broker(port=port, proc=proc, workdir=workdir)
    try:
        if not wait_port("127.0.0.1", port, BROKER_START_TIMEOUT_S):
            raise RuntimeError(f"mosquitto did not listen on {port}:\n{tail(broker.log)}")
        yield broker
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


# --- the load generator as a subprocess -------------------------------------------------------


def start_loadgen(
    *,
    port: int,
    devices: int,
    duration_s: float,
    out: Path,
    log: Path,
    rate: float | None = None,
    max_mode: bool = False,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Run ``bench.loadgen`` in its own process, so its CPU is never counted as the target's."""
    cmd = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--port",
        str(port),
        "--devices",
        str(devices),
        "--duration",
        str(duration_s),
        "--out",
        str(out),
    ]
    cmd += ["--max"] if max_mode else ["--rate", str(rate)]
    cmd += list(extra)
    with open(log, "wb") as f:
        return subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=f, start_new_session=True
        )


def read_loadgen_result(proc: subprocess.Popen[bytes], out: Path, log: Path) -> dict[str, Any]:
    """The loadgen's full JSON result; raise with its log if it failed to produce one."""
    if not out.exists():
        raise RuntimeError(f"loadgen exited {proc.returncode} without a result:\n{tail(log)}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# --- CPU and memory sampling ------------------------------------------------------------------


@dataclass
class _Group:
    find: Callable[[], list[psutil.Process]]
    last_cpu: dict[int, float] = field(default_factory=dict)


class Sampler:
    """Samples CPU % (100 = one full core) and RSS of named process groups, once per call.

    CPU comes from each process's cumulative CPU time between two calls, not from psutil's
    ``cpu_percent`` cache, so a sample is exact however late the caller's loop ran.
    """

    def __init__(self) -> None:
        self.groups: dict[str, _Group] = {}
        self.samples: list[dict[str, Any]] = []
        self._last_t: float | None = None
        self._last_sys = psutil.cpu_times()

    def add(self, name: str, find: Callable[[], list[psutil.Process]]) -> None:
        """Sample the processes ``find()`` returns under ``name`` from the next call on."""
        self.groups[name] = _Group(find)

    def sample(self) -> dict[str, Any]:
        now = time.time()
        dt = None if self._last_t is None else now - self._last_t
        sample: dict[str, Any] = {"t": now}
        for name, group in self.groups.items():
            cpu_pct = 0.0
            rss = 0
            seen: dict[int, float] = {}
            for proc in group.find():
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        rss += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total = times.user + times.system
                seen[proc.pid] = total
                # A process first seen now started within the last interval (or we just began
                # watching it): without a previous reading its share is unknown, so count 0.
                if dt and proc.pid in group.last_cpu:
                    cpu_pct += 100.0 * (total - group.last_cpu[proc.pid]) / dt
            group.last_cpu = seen
            sample[name] = {"cpu": round(cpu_pct, 1) if dt else None, "rss": rss}
        sys_times = psutil.cpu_times()
        busy = _busy(sys_times) - _busy(self._last_sys)
        total_t = sum(sys_times) - sum(self._last_sys)
        # Whole machine: 100 = every core busy, whoever used it (other tenants included).
        machine = 100.0 * busy / total_t if dt and total_t > 0 else None
        sample["machine_busy"] = round(machine, 1) if machine is not None else None
        # Everyone else, in % of one core: on a shared 2-core box a neighbour's test run moves
        # our figures, and this says by how much it could have.
        if machine is not None:
            ours = sum(sample[name]["cpu"] or 0.0 for name in self.groups)
            sample["others_cpu"] = round(max(0.0, machine * (os.cpu_count() or 1) - ours), 1)
        else:
            sample["others_cpu"] = None
        self._last_sys = sys_times
        self._last_t = now
        self.samples.append(sample)
        return sample

    def summary(self, t_from: float, t_to: float) -> dict[str, Any]:
        """Mean and max CPU %, max and last RSS (MiB) per group over samples in [t_from, t_to]."""
        window = [s for s in self.samples if t_from <= s["t"] <= t_to]
        out: dict[str, Any] = {"samples": len(window)}
        for name in self.groups:
            # A group added mid-run (the loadgen) is absent from the samples before it.
            mine = [s[name] for s in window if name in s]
            cpus = [g["cpu"] for g in mine if g["cpu"] is not None]
            rss = [g["rss"] for g in mine]
            out[name] = {
                "cpu_mean_percent": round(statistics.fmean(cpus), 1) if cpus else None,
                "cpu_max_percent": round(max(cpus), 1) if cpus else None,
                "rss_max_mb": round(max(rss) / 2**20, 1) if rss else None,
                "rss_end_mb": round(rss[-1] / 2**20, 1) if rss else None,
            }
        busy = [s["machine_busy"] for s in window if s["machine_busy"] is not None]
        out["machine_busy_mean_percent"] = round(statistics.fmean(busy), 1) if busy else None
        others = [s["others_cpu"] for s in window if s["others_cpu"] is not None]
        out["others_cpu_mean_percent"] = round(statistics.fmean(others), 1) if others else None
        return out


def background_busy(seconds: float = 2.0) -> float:
    """Machine busy % (100 = every core) over ``seconds`` before we start anything."""
    return float(psutil.cpu_percent(interval=seconds))


def _busy(t: Any) -> float:
    total: float = sum(t)
    return total - float(t.idle) - float(getattr(t, "iowait", 0.0))


def descendants(root: psutil.Process) -> list[psutil.Process]:
    """All live descendants of ``root`` (empty if it is gone)."""
    try:
        return list(root.children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def is_mosquitto(proc: psutil.Process) -> bool:
    try:
        return bool(proc.name() == "mosquitto")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


# --- HTTP and Prometheus ------------------------------------------------------------------------


def http_get(
    url: str, timeout_s: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """GET without dependencies: (status, body); connection errors raise ``OSError``.

    ``headers``: e.g. ``{"Authorization": "Bearer fh_..."}`` for a fieldhub with authentication
    on (its /metrics and API need a token; /healthz does not).
    """
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(url: str, headers: dict[str, str] | None = None) -> str:
    """One Prometheus text exposition, or raise naming the URL."""
    status, body = http_get(url, timeout_s=10.0, headers=headers)
    if status != 200:
        raise RuntimeError(f"GET {url} returned {status}: {body[:200]!r}")
    return body.decode()


def sample_sum(text: str, sample_name: str) -> float | None:
    """Sum of every sample called ``sample_name`` (all label sets); None if there is none.

    Matches sample names, not family names, because the parser strips ``_total`` from counter
    families but keeps it on their samples.
    """
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample_name:
                total += s.value
                found = True
    return total if found else None


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name`` by upper bound, summed over label sets."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for s in family.samples:
            if s.name == f"{name}_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    return buckets


def bucket_delta(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    """Observations that fell into each cumulative bucket between two scrapes."""
    return {le: after[le] - before.get(le, 0.0) for le in sorted(after)}


def histogram_quantile(cumulative: dict[float, float], q: float) -> dict[str, Any] | None:
    """Quantile ``q`` by linear interpolation inside its bucket (as PromQL's does).

    Returns the estimate and the bucket ``[lo, hi]`` it fell in: the true value is somewhere in
    that bucket, so the bucket width is the resolution. A quantile in the ``+Inf`` bucket is
    reported as its lower bound with ``"above_last_bucket": true``.
    """
    les = sorted(cumulative)
    if not les:
        return None
    total = cumulative[les[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le in les:
        count = cumulative[le]
        if count >= rank:
            if math.isinf(le):
                return {"value_s": prev_le, "bucket_s": [prev_le, None], "above_last_bucket": True}
            in_bucket = count - prev_count
            frac = (rank - prev_count) / in_bucket if in_bucket else 1.0
            value = prev_le + (le - prev_le) * frac
            return {"value_s": value, "bucket_s": [prev_le, le], "above_last_bucket": False}
        prev_le, prev_count = le, count
    return None


# --- results --------------------------------------------------------------------------------------


def median_of(runs: Iterable[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Median of each dotted ``key`` across runs (None-valued runs are skipped)."""
    runs = list(runs)
    out: dict[str, Any] = {}
    for key in keys:
        values = [v for r in runs if isinstance(v := dig(r, key), int | float)]
        out[key] = statistics.median(values) if values else None
    return out


def dig(d: Any, dotted: str) -> Any:
    """``dig(run, "cpu.fieldhub.cpu_mean_percent")``; None where the path does not exist."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def write_result(name: str, data: dict[str, Any], output: Path | None = None) -> Path:
    """Write ``bench/results/NAME.json``, or `output` (a bench's --output) when given;
    atomically, so a crash never leaves half a file."""
    path = output if output is not None else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def tidy_workdir(workdir: Path, *, keep: bool) -> None:
    """Remove a bench's work dir, or say where its logs are when it is kept (--keep, errors)."""
    if keep:
        say(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


# --- a `fieldhub up` under test ----------------------------------------------------------------

# `fieldhub up` must answer /healthz within this; it starts its own Mosquitto and migrates a fresh
# database, which takes a second or two, so 60 s only bounds a hang.
HEALTH_TIMEOUT_S = 60.0
# Say we are still waiting this often, so a slow start is visibly a wait, not a hang.
HEALTH_NOTE_EVERY_S = 5.0
# How long fieldhub may take to exit after SIGINT, and its Mosquitto after it.
FIELDHUB_STOP_TIMEOUT_S = 30.0
CHILD_EXIT_TIMEOUT_S = 5.0
_MQTT_LINE = re.compile(r"MQTT broker:\s*mqtt://([\w.\-\[\]:]+):(\d+)")
_HTTP_LINE = re.compile(r"HTTP API:\s*http://([\w.\-\[\]:]+):(\d+)")


class BenchError(Exception):
    """A run could not be measured (fieldhub did not start, schema mismatch, ...)."""


class JsonLinesChild:
    """A bench's helper process (`python -m MODULE ARGS...`) that reports JSON objects with an
    `event` key, one a line on stdout; a thread queues them, and any other output (and stderr)
    goes to `log`. Started in its own session: a Ctrl-C reaches it only through the bench."""

    def __init__(self, module: str, args: Sequence[str], log: Path, *, name: str) -> None:
        self.log = log
        self.name = name
        self._log_file = open(log, "w")  # noqa: SIM115 - closed by the reader thread
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            start_new_session=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        with self._log_file:
            for line in stream:
                event = None
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                if isinstance(event, dict) and "event" in event:
                    self.events.put(event)
                else:
                    self._log_file.write(line)
                    self._log_file.flush()

    def next_event(self, timeout_s: float) -> dict[str, Any] | None:
        """The next event, or None if none came within `timeout_s`; raise if the process died."""
        try:
            return self.events.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            if self.proc.poll() is not None and self.events.empty():
                raise BenchError(
                    f"{self.name} exited {self.proc.returncode}:\n{tail(self.log, 15)}"
                ) from None
            return None

    def wait_for(self, event: str, timeout_s: float) -> dict[str, Any]:
        """The first event named `event` (others are skipped); raise on an `error` event, on
        the process's exit, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.next_event(min(0.1, deadline - time.monotonic()))
            if msg is None:
                continue
            if msg.get("event") == event:
                return msg
            if msg.get("event") == "error":
                raise BenchError(f"{self.name}: {msg.get('error')}\n{tail(self.log, 15)}")
        raise BenchError(f"{self.name}: no {event!r} within {timeout_s:.0f}s")


def fieldhub_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``fieldhub up`` runs with: ours plus `extra`. Run as root (this machine's
    benches are), fieldhub would drop to an unprivileged user that cannot enter the runs' 0700
    temp dirs: it keeps root, as every earlier recorded run did, unless FIELDHUB_RUN_AS says.

    Authentication is off (FIELDHUB_AUTH=false, demo mode: the simulated devices connect with
    no credentials, as in every run recorded before authentication existed) unless `extra` or
    our environment sets FIELDHUB_AUTH; `bench.ingest --auth on` sets it and provisions the
    devices' credentials first."""
    env = {**os.environ, **(extra or {})}
    env.setdefault("FIELDHUB_AUTH", "false")
    if os.geteuid() == 0:
        env.setdefault("FIELDHUB_RUN_AS", "root")
    return env


def start_fieldhub(
    fieldhub: str,
    data_dir: Path,
    mqtt_port: int,
    http_port: int,
    log: Path,
    extra: list[str],
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``fieldhub up`` in its own session so a Ctrl-C here reaches it only via our SIGINT.

    ``env``: variables on top of ``fieldhub_env()``'s (e.g. ``FIELDHUB_AUTH=true``)."""
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
    say(f"starting: {' '.join(cmd)}")
    with open(log, "wb") as f:
        return subprocess.Popen(
            cmd,
            cwd=data_dir.parent,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=fieldhub_env(env),
            start_new_session=True,
        )


def wait_healthy(
    proc: subprocess.Popen[bytes], log: Path, http_port: int, mqtt_port: int
) -> dict[str, Any]:
    """Wait for the startup lines and a 200 JSON ``/healthz``; return the URLs and startup time."""
    t0 = time.monotonic()
    deadline = t0 + HEALTH_TIMEOUT_S
    next_note = t0 + HEALTH_NOTE_EVERY_S
    last_err = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"fieldhub exited with {proc.returncode} during startup:\n{tail(log)}")
        text = log.read_text(errors="replace") if log.exists() else ""
        if m := _HTTP_LINE.search(text):
            http_port = int(m.group(2))
        try:
            status, body = http_get(f"http://127.0.0.1:{http_port}/healthz", timeout_s=2.0)
            if status == 200:
                health = json.loads(body)
                mqtt = _MQTT_LINE.search(text)
                if mqtt is None:
                    say(
                        "note: no 'MQTT broker: mqtt://...' line in fieldhub's output; assuming "
                        f"the port we asked for ({mqtt_port})"
                    )
                return {
                    "startup_s": round(time.monotonic() - t0, 2),
                    "http_port": http_port,
                    "mqtt_port": int(mqtt.group(2)) if mqtt else mqtt_port,
                    "health": health,
                }
            last_err = f"HTTP {status}"
        except (OSError, ValueError) as exc:
            last_err = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= next_note:
            say(f"  waiting for fieldhub /healthz ({time.monotonic() - t0:.0f}s, {last_err})")
            next_note += HEALTH_NOTE_EVERY_S
        time.sleep(0.2)
    raise BenchError(
        f"fieldhub not healthy after {HEALTH_TIMEOUT_S:.0f}s ({last_err}):\n{tail(log)}"
    )


def stop_fieldhub(proc: subprocess.Popen[bytes], mosquitto_pids: list[int]) -> dict[str, Any]:
    """SIGINT, as a user's Ctrl-C would; check it exits and leaves no Mosquitto behind."""
    t0 = time.monotonic()
    errors: list[str] = []
    killed = False
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=FIELDHUB_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            errors.append(f"fieldhub did not exit within {FIELDHUB_STOP_TIMEOUT_S:.0f}s of SIGINT")
            proc.kill()
            proc.wait(timeout=10)
            killed = True
    else:
        errors.append(f"fieldhub had already exited with {proc.returncode} before SIGINT")
    exit_s = time.monotonic() - t0
    left: list[int] = []
    deadline = time.monotonic() + CHILD_EXIT_TIMEOUT_S
    for pid in mosquitto_pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            left.append(pid)
    if left:
        errors.append(f"mosquitto {left} still running after fieldhub exited: killed it")
        for pid in left:
            # These are the Mosquitto our fieldhub spawned: kill by pid, nothing broader.
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
    return {
        "exit_code": proc.returncode,
        "exit_s": round(exit_s, 2),
        "killed": killed,
        "mosquitto_left": left,
        "errors": errors,
    }


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
