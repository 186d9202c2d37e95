"""Soak: load, viewers, commands and hostile input for N minutes; is memory flat?

What runs at once against one `fieldhub up` (SQLite, its embedded Mosquitto, authentication off):

- the mixed demo fleet (`fieldhub sim --profile mixed`: every stack's devices, their firmware's
  periods) and `bench.loadgen` at `--rate` msg/s (default 5,000; QoS 1, 1,000 devices, the
  `seq` payload whose `ts` is the publish time, so fieldhub's ingest-lag histogram is
  publish -> commit);
- `--viewers` live WebSocket viewers (`bench.viewers`, the default subscription);
- a command every `--command-every-s` (`POST /api/v1/devices/{id}/commands?wait_s=5`, `ping`,
  round robin over the simulated native devices), timed from the POST to the final answer;
- the hostile corpus (tests/support/hostile.py) trickled in, spread evenly over the run;
- retention every `--retention-interval-s` with raw readings kept `--raw-minutes` (so it deletes
  for real once the run is older than that), and SQLite's checkpoints as configured.

Each `--sample-every-s` (60): RSS of fieldhub and of its Mosquitto, the database file, WAL and
shm sizes, ingest queue depth and high water, p99 publish -> commit (from the histogram's
buckets between two samples), p99 command latency, rows and dead letters, CPU and load average.
Results: bench/results/soak.json (rewritten after every sample, so a broken run keeps what it
measured), bench/results/soak.png. The verdict: RSS within 10 % of its value at the end of the
warm-up in every later sample.

`--tracemalloc-every-min M` starts fieldhub with tracemalloc (a `sitecustomize` on its
PYTHONPATH, no product code) and dumps a snapshot every M minutes; the result lists the top
growth sites between the first snapshot after warm-up and the last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import (
    REPO_ROOT,
    RESULTS_DIR,
    Sampler,
    bucket_delta,
    descendants,
    free_port,
    git,
    histogram_buckets,
    histogram_quantile,
    is_mosquitto,
    machine_info,
    sample_sum,
    say,
    scrape,
    start_bench,
    start_fieldhub,
    start_loadgen,
    stop_fieldhub,
    stop_process,
    tail,
    wait_healthy,
    write_result,
)

NAME = "soak"
# The bar (issue 18): after warm-up, RSS stays within this fraction of its warm-up value.
RSS_FLAT_FRACTION = 0.10
# A command's answer waits at most this long on the server (docs/commands.md); the client gives
# up HTTP_SLACK_S later.
COMMAND_WAIT_S = 5.0
HTTP_SLACK_S = 5.0
# Progress between samples: often enough that a long run is visibly alive.
PROGRESS_EVERY_S = 15.0
# The sim's devices: one of each stack per five devices (`mixed` cycles through them).
SIM_RATE_HZ = 1.0
# The viewers measure after this warm-up of their own (seconds); they and the sim end with the run.
VIEWERS_WARMUP_S = 5.0
# At the run's end: how long the load processes get to finish and write their results.
END_GRACE_S = 45.0
SITECUSTOMIZE = '''"""The soak bench's tracemalloc hook (bench/soak.py): snapshots only."""
import os
import threading
import time
import tracemalloc

_DIR = os.environ.get("FIELDHUB_SOAK_TRACEMALLOC_DIR")
if _DIR:
    tracemalloc.start(int(os.environ.get("FIELDHUB_SOAK_TRACEMALLOC_FRAMES", "1")))
    _EVERY_S = float(os.environ["FIELDHUB_SOAK_TRACEMALLOC_EVERY_S"])

    def _dump_forever():
        n = 0
        while True:
            time.sleep(_EVERY_S)
            n += 1
            snap = tracemalloc.take_snapshot()
            path = os.path.join(_DIR, "snap-%03d.pickle" % n)
            snap.dump(path + ".tmp")
            os.replace(path + ".tmp", path)
            with open(os.path.join(_DIR, "times.txt"), "a") as f:
                f.write("%d %f %d\\n" % (n, time.time(), tracemalloc.get_traced_memory()[0]))

    threading.Thread(target=_dump_forever, name="soak.tracemalloc", daemon=True).start()
'''


@dataclass
class Commands:
    """A command every `every_s` to the simulated native devices, timed to the final answer."""

    base_url: str
    every_s: float
    devices: list[str]
    stop: threading.Event
    samples: list[tuple[float, float, str]] = field(default_factory=list)  # (t, ms, outcome)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        body = {"name": "ping", "params": {}}
        timeout = httpx.Timeout(COMMAND_WAIT_S + HTTP_SLACK_S)
        n = 0
        next_at = time.monotonic()
        with httpx.Client(base_url=self.base_url, timeout=timeout) as client:
            while not self.stop.is_set():
                device = self.devices[n % len(self.devices)]
                n += 1
                t0 = time.perf_counter()
                try:
                    r = client.post(
                        f"/api/v1/devices/{device}/commands?wait_s={COMMAND_WAIT_S:g}", json=body
                    )
                    outcome = (
                        str(r.json().get("state")) if r.status_code < 300 else str(r.status_code)
                    )
                except (httpx.HTTPError, ValueError) as exc:
                    outcome = type(exc).__name__
                ms = (time.perf_counter() - t0) * 1000
                with self.lock:
                    self.samples.append((time.time(), ms, outcome))
                next_at += self.every_s
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def window(self, t_from: float, t_to: float) -> dict[str, Any]:
        with self.lock:
            mine = [(ms, o) for t, ms, o in self.samples if t_from <= t < t_to]
        ms = sorted(m for m, _ in mine)
        outcomes: dict[str, int] = {}
        for _, o in mine:
            outcomes[o] = outcomes.get(o, 0) + 1
        return {
            "count": len(mine),
            "p50_ms": _quantile(ms, 0.5),
            "p99_ms": _quantile(ms, 0.99),
            "max_ms": round(ms[-1], 1) if ms else None,
            "outcomes": outcomes,
        }


@dataclass
class Hostile:
    """The hostile corpus published evenly over the run, cycling, from one MQTT client."""

    mqtt_url: str
    per_s: float
    stop: threading.Event
    sent: int = 0
    errors: int = 0

    def run(self) -> None:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from fieldhub.mqtt.endpoint import parse_mqtt_url
        from fieldhub.mqtt.publisher import MqttPublisher
        from support.hostile import hostile_corpus

        corpus = hostile_corpus(now_ms=time.time_ns() // 1_000_000)
        publisher = MqttPublisher(endpoint=parse_mqtt_url(self.mqtt_url), client_id="soak-hostile")
        publisher.start()
        if not publisher.wait_connected(10):
            say("warning: the hostile publisher could not connect; no hostile input this run")
            return
        t0 = time.monotonic()
        try:
            while not self.stop.is_set():
                due = int((time.monotonic() - t0) * self.per_s)
                while self.sent < due and not self.stop.is_set():
                    message = corpus[self.sent % len(corpus)]
                    future = publisher.publish(message.topic, message.payload, qos=1)
                    future.add_done_callback(self._count_error)
                    self.sent += 1
                self.stop.wait(0.2)
        finally:
            publisher.stop()

    def _count_error(self, future: Any) -> None:
        if future.exception() is not None:
            self.errors += 1


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return round(sorted_values[i], 1)


def _file_sizes(db: Path) -> dict[str, int]:
    out = {}
    for suffix, key in (("", "db"), ("-wal", "wal"), ("-shm", "shm")):
        path = db.with_name(db.name + suffix)
        out[key] = path.stat().st_size if path.exists() else 0
    return out


def _p99(before: dict[float, float], after: dict[float, float]) -> dict[str, Any] | None:
    q = histogram_quantile(bucket_delta(before, after), 0.99) if after else None
    if q is None:
        return None
    return {
        "ms": round(q["value_s"] * 1000, 2),
        "bucket_ms": [None if b is None else b * 1000 for b in q["bucket_s"]],
        "above_last_bucket": q["above_last_bucket"],
    }


def judge_rss(samples: list[dict[str, Any]], warmup_min: float) -> dict[str, Any]:
    """RSS flat within RSS_FLAT_FRACTION after warm-up: every later sample within it of the
    first sample at or after the warm-up's end; also the least-squares slope (MiB/h)."""
    after = [s for s in samples if s["minute"] >= warmup_min and s.get("fieldhub_rss_mb")]
    if len(after) < 2:
        return {"verdict": "not enough samples after warm-up", "flat": None}
    base = after[0]["fieldhub_rss_mb"]
    values = [s["fieldhub_rss_mb"] for s in after]
    worst = max(values, key=lambda v: abs(v - base))
    xs = [s["minute"] for s in after]
    slope = statistics.linear_regression(xs, values).slope * 60 if len(set(xs)) > 1 else 0.0
    flat = all(abs(v - base) <= RSS_FLAT_FRACTION * base for v in values)
    return {
        "flat": flat,
        "base_mb": base,
        "min_mb": min(values),
        "max_mb": max(values),
        "end_mb": values[-1],
        "worst_deviation_percent": round(100 * (worst - base) / base, 1),
        "slope_mb_per_hour": round(slope, 1),
        "verdict": (
            f"RSS {'flat' if flat else 'NOT flat'} within {RSS_FLAT_FRACTION:.0%} after warm-up: "
            f"{base:.0f} MiB at minute {after[0]['minute']:g}, {min(values):.0f}-"
            f"{max(values):.0f} MiB since, {values[-1]:.0f} MiB at the end "
            f"({slope:+.1f} MiB/h)"
        ),
    }


def tracemalloc_growth(snap_dir: Path, warmup_min: float, every_min: float) -> dict[str, Any]:
    """Top growth sites between the first snapshot at or after warm-up and the last."""
    snaps = sorted(snap_dir.glob("snap-*.pickle"))
    if len(snaps) < 2:
        return {"note": f"{len(snaps)} snapshot(s): need two"}
    first_n = max(1, int(-(-warmup_min // every_min)))
    first = next((p for p in snaps if int(p.stem.split("-")[1]) >= first_n), snaps[0])
    last = snaps[-1]
    if first == last:
        first = snaps[0]
    a = tracemalloc.Snapshot.load(str(first))
    b = tracemalloc.Snapshot.load(str(last))
    out: dict[str, Any] = {"from": first.name, "to": last.name}
    for key in ("lineno", "filename"):
        stats = b.compare_to(a, key)
        out[f"top_by_{key}"] = [
            {
                "site": str(s.traceback[0]),
                "size_diff_kib": round(s.size_diff / 1024, 1),
                "size_kib": round(s.size / 1024, 1),
                "count_diff": s.count_diff,
            }
            for s in stats[:20]
        ]
    out["traced_total_mb"] = {
        "from": round(sum(s.size for s in a.statistics("filename")) / 2**20, 1),
        "to": round(sum(s.size for s in b.statistics("filename")) / 2**20, 1),
    }
    times = snap_dir / "times.txt"
    if times.exists():
        out["traced_mb_per_snapshot"] = [
            round(int(line.split()[2]) / 2**20, 1) for line in times.read_text().splitlines()
        ]
    return out


def plot(samples: list[dict[str, Any]], path: Path, title: str, warmup_min: float) -> None:
    """Four panels against minutes: RSS, database size, queue depth, p99 latencies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["minute"] for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)

    def line(ax: Any, key: str, label: str) -> None:
        ys = [s.get(key) for s in samples]
        pts = [(a, b) for a, b in zip(x, ys, strict=True) if b is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)

    line(axes[0], "fieldhub_rss_mb", "fieldhub")
    line(axes[0], "broker_rss_mb", "mosquitto")
    axes[0].set_ylabel("RSS (MiB)")
    line(axes[1], "db_mb", "database file")
    line(axes[1], "wal_mb", "WAL")
    axes[1].set_ylabel("size (MiB)")
    line(axes[2], "queue_depth", "ingest queue depth (at sample)")
    line(axes[2], "queue_high_water", "high water (since start)")
    axes[2].set_ylabel("messages")
    line(axes[3], "publish_commit_p99_ms", "publish -> commit p99")
    line(axes[3], "command_p99_ms", "command p99")
    axes[3].set_ylabel("ms")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("minutes")
    for ax in axes:
        ax.axvline(warmup_min, color="grey", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./scripts/bench soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="length of the run")
    p.add_argument("--warmup-minutes", type=float, default=None, help="default: 10 (or a third)")
    p.add_argument("--rate", type=float, default=5000.0, help="loadgen msg/s")
    p.add_argument("--devices", type=int, default=1000, help="loadgen devices")
    p.add_argument("--sim-devices", type=int, default=25, help="mixed demo fleet size")
    p.add_argument("--viewers", type=int, default=10)
    p.add_argument("--command-every-s", type=float, default=1.0)
    p.add_argument("--hostile-per-s", type=float, default=None, help="default: corpus over run")
    p.add_argument("--sample-every-s", type=float, default=60.0)
    p.add_argument("--retention-interval-s", type=float, default=300.0)
    p.add_argument("--raw-minutes", type=float, default=20.0, help="raw readings kept")
    p.add_argument("--tracemalloc-every-min", type=float, default=0.0, help="0: off")
    p.add_argument("--tracemalloc-frames", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="3 min at 1,000 msg/s, 20 s samples")
    p.add_argument("--name", default=NAME, help="result name (bench/results/NAME.json/.png)")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.rate, args.devices, args.sample_every_s = 3.0, 1000.0, 100, 20.0
        if args.name == NAME:
            args.name = "soak_quick"
    if args.warmup_minutes is None:
        args.warmup_minutes = min(10.0, args.minutes / 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from support.hostile import TOTAL_MESSAGES

    duration_s = args.minutes * 60
    hostile_per_s = args.hostile_per_s or max(0.5, TOTAL_MESSAGES / duration_s)
    start = start_bench(NAME, "the generator, the viewers, the sim and Mosquitto")
    work = start.workdir
    say(f"soak: {args.minutes:g} min, {args.rate:g} msg/s, {args.viewers} viewers, work dir {work}")
    commit = git("rev-parse", "HEAD") or ""
    data_dir = work / "data"
    data_dir.mkdir()
    env = {
        "FIELDHUB_RETENTION_INTERVAL_S": f"{args.retention_interval_s:g}",
        "FIELDHUB_RETENTION_RAW_DAYS": f"{args.raw_minutes / 1440:.6f}",
    }
    snap_dir = work / "tracemalloc"
    if args.tracemalloc_every_min > 0:
        snap_dir.mkdir()
        hook = work / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env |= {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
            "FIELDHUB_SOAK_TRACEMALLOC_DIR": str(snap_dir),
            "FIELDHUB_SOAK_TRACEMALLOC_EVERY_S": str(args.tracemalloc_every_min * 60),
            "FIELDHUB_SOAK_TRACEMALLOC_FRAMES": str(args.tracemalloc_frames),
        }
    fieldhub_bin = str(Path(sys.executable).with_name("fieldhub"))
    log = work / "fieldhub.log"
    proc = start_fieldhub(fieldhub_bin, data_dir, free_port(), free_port(), log, extra=[], env=env)
    result: dict[str, Any] = {
        "bench": NAME,
        "started": start.started.isoformat(),
        "git_commit": commit,
        "config": {
            **vars(args),
            "hostile_per_s": hostile_per_s,
            "machine": machine_info(),
            "background_busy_percent": start.background_percent,
            "fieldhub_env": {k: v for k, v in env.items() if not k.startswith("PYTHON")},
        },
        "notes": start.notes,
        "samples": [],
    }
    stop = threading.Event()
    procs: list[subprocess.Popen[Any]] = []
    threads: list[threading.Thread] = []
    mosquitto_pids: list[int] = []
    try:
        up = wait_healthy(proc, log, 0, 0)
        http, mqtt_port = up["http_port"], up["mqtt_port"]
        base_url = f"http://127.0.0.1:{http}"
        mqtt_url = f"mqtt://127.0.0.1:{mqtt_port}"
        root = psutil.Process(proc.pid)
        mosquitto_pids = [p.pid for p in descendants(root) if is_mosquitto(p)]
        say(f"fieldhub up in {up['startup_s']} s: {base_url}, {mqtt_url}")

        run_s = duration_s
        with open(work / "sim.log", "wb") as f:
            sim = subprocess.Popen(
                [
                    fieldhub_bin,
                    "sim",
                    "--mqtt-url",
                    mqtt_url,
                    "--profile",
                    "mixed",
                    "--devices",
                    str(args.sim_devices),
                    "--rate",
                    str(SIM_RATE_HZ),
                    "--duration",
                    str(run_s),
                ],
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(sim)
        natives: list[str] = []
        deadline = time.monotonic() + 30
        while not natives and time.monotonic() < deadline:
            time.sleep(1)
            r = httpx.get(f"{base_url}/api/v1/devices", params={"limit": 500}, timeout=10)
            natives = [d["id"] for d in r.json()["data"] if d["id"].startswith("sim-")]
        if not natives:
            raise RuntimeError(f"no simulated native device registered:\n{tail(work / 'sim.log')}")
        say(f"sim: {args.sim_devices} mixed devices, commands to {len(natives)} native ones")

        with open(work / "viewers.out", "wb") as out:
            viewers = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.viewers",
                    "--url",
                    f"ws://127.0.0.1:{http}/api/v1/live",
                    "--viewers",
                    str(args.viewers),
                    "--warmup",
                    str(VIEWERS_WARMUP_S),
                    "--duration",
                    str(run_s - VIEWERS_WARMUP_S),
                    "--out",
                    str(work / "viewers.json"),
                ],
                cwd=REPO_ROOT,
                stdout=out,
                stderr=open(work / "viewers.log", "wb"),  # noqa: SIM115 (closed with the process)
                start_new_session=True,
            )
        procs.append(viewers)
        loadgen = start_loadgen(
            port=mqtt_port,
            devices=args.devices,
            duration_s=run_s,
            out=work / "loadgen.json",
            log=work / "loadgen.log",
            rate=args.rate,
            extra=["--device-prefix", "soak", "--quiet"],
        )
        procs.append(loadgen)

        commands = Commands(base_url, args.command_every_s, natives, stop)
        hostile = Hostile(mqtt_url, hostile_per_s, stop)
        for name, target in (("soak.commands", commands.run), ("soak.hostile", hostile.run)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            threads.append(t)

        sampler = Sampler()
        sampler.add(
            "fieldhub",
            lambda: [root] + [p for p in descendants(root) if not is_mosquitto(p)],
        )
        sampler.add("broker", lambda: [p for p in descendants(root) if is_mosquitto(p)])
        sampler.add(
            "loadgen", lambda: [psutil.Process(loadgen.pid)] if loadgen.poll() is None else []
        )
        sampler.add(
            "viewers", lambda: [psutil.Process(viewers.pid)] if viewers.poll() is None else []
        )
        sampler.add("sim", lambda: [psutil.Process(sim.pid)] if sim.poll() is None else [])
        sampler.sample()
        text = scrape(f"{base_url}/metrics")
        prev: dict[str, Any] = {
            "t": time.time(),
            "lag": histogram_buckets(text, "fieldhub_ingest_lag_seconds"),
            "delay": histogram_buckets(text, "fieldhub_ingest_commit_delay_seconds"),
        }
        t_start = time.monotonic()
        next_sample = t_start + args.sample_every_s
        next_note = t_start + PROGRESS_EVERY_S
        db = data_dir / "fieldhub.db"
        while time.monotonic() - t_start < duration_s - 1:
            if proc.poll() is not None:
                raise RuntimeError(f"fieldhub exited with {proc.returncode}:\n{tail(log)}")
            now = time.monotonic()
            if now >= next_note and now < next_sample:
                sizes = _file_sizes(db)
                say(
                    f"  {(now - t_start) / 60:5.1f} min: db {sizes['db'] / 2**20:.0f} MiB + WAL "
                    f"{sizes['wal'] / 2**20:.0f} MiB, hostile sent {hostile.sent}, commands "
                    f"{len(commands.samples)}"
                )
                next_note += PROGRESS_EVERY_S
            if now >= next_sample:
                next_sample += args.sample_every_s
                next_note = now + PROGRESS_EVERY_S
                s = sampler.sample()
                text = scrape(f"{base_url}/metrics")
                t_wall = time.time()
                lag = histogram_buckets(text, "fieldhub_ingest_lag_seconds")
                delay = histogram_buckets(text, "fieldhub_ingest_commit_delay_seconds")
                sizes = _file_sizes(db)
                cmd = commands.window(prev["t"], t_wall)
                p99 = _p99(prev["lag"], lag)
                p99_delay = _p99(prev["delay"], delay)
                sample = {
                    "minute": round((now - t_start) / 60, 2),
                    "t": t_wall,
                    "fieldhub_rss_mb": round(s["fieldhub"]["rss"] / 2**20, 1),
                    "broker_rss_mb": round(s["broker"]["rss"] / 2**20, 1),
                    "loadgen_rss_mb": round(s["loadgen"]["rss"] / 2**20, 1),
                    "cpu_percent": {k: s[k]["cpu"] for k in sampler.groups},
                    "machine_busy_percent": s["machine_busy"],
                    "others_cpu_percent": s["others_cpu"],
                    "loadavg": [round(v, 2) for v in os.getloadavg()],
                    "db_mb": round(sizes["db"] / 2**20, 1),
                    "wal_mb": round(sizes["wal"] / 2**20, 1),
                    "shm_mb": round(sizes["shm"] / 2**20, 2),
                    "database_bytes_metric_mb": _mb(sample_sum(text, "fieldhub_database_bytes")),
                    "queue_depth": sample_sum(text, "fieldhub_ingest_queue_depth"),
                    "queue_high_water": sample_sum(text, "fieldhub_ingest_queue_high_water"),
                    "live_dropped_frames": sample_sum(text, "fieldhub_live_dropped_frames_total"),
                    "publish_commit_p99_ms": p99["ms"] if p99 else None,
                    "publish_commit_p99": p99,
                    "commit_delay_p99_ms": p99_delay["ms"] if p99_delay else None,
                    "command_p99_ms": cmd["p99_ms"],
                    "commands": cmd,
                    "readings_written": sample_sum(text, "fieldhub_readings_written_total"),
                    "messages": sample_sum(text, "fieldhub_ingest_messages_total"),
                    "dead_letters": sample_sum(text, "fieldhub_dead_letters_total"),
                    "dead_letters_pruned": sample_sum(text, "fieldhub_dead_letters_pruned_total"),
                    "retention_deleted": sample_sum(text, "fieldhub_retention_deleted_rows_total"),
                    "hostile_sent": hostile.sent,
                }
                result["samples"].append(sample)
                prev = {"t": t_wall, "lag": lag, "delay": delay}
                say(
                    f"minute {sample['minute']:5.1f}: fieldhub {sample['fieldhub_rss_mb']:.0f} "
                    f"MiB, mosquitto {sample['broker_rss_mb']:.0f} MiB, db "
                    f"{sample['db_mb']:.0f}+{sample['wal_mb']:.0f} MiB, queue "
                    f"{sample['queue_depth']:.0f}, p99 publish->commit "
                    f"{sample['publish_commit_p99_ms']} ms, command p99 {cmd['p99_ms']} ms "
                    f"({cmd['count']}), load {sample['loadavg'][0]}, cpu fieldhub "
                    f"{s['fieldhub']['cpu']}%"
                )
                write_result(args.name, result)
            time.sleep(0.5)
        say("run over: stopping the load")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        # The loadgen ends its schedule on SIGUSR1 and still writes its result; the viewers and
        # the sim end on their own at the run's end (their --duration): give them a moment.
        for p in procs:
            if p.poll() is None and p is procs[-1] and len(procs) == 3:
                p.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + END_GRACE_S
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            stop_process(p)
        result["stop"] = stop_fieldhub(proc, mosquitto_pids)
    result["finished"] = datetime.now(UTC).isoformat()
    loadgen_result = work / "loadgen.json"
    if loadgen_result.exists():
        lg = json.loads(loadgen_result.read_text())
        result["loadgen"] = {k: v for k, v in lg.items() if not isinstance(v, dict | list)}
    viewers_result = work / "viewers.json"
    if viewers_result.exists():
        vr = json.loads(viewers_result.read_text())
        result["viewers"] = {k: v for k, v in vr.items() if k in ("latency", "summary", "totals")}
    result["hostile"] = {"sent": hostile.sent, "publish_errors": hostile.errors}
    result["commands"] = commands.window(0, time.time() + 1)
    samples = result["samples"]
    result["rss"] = judge_rss(samples, args.warmup_minutes)
    after = [s for s in samples if s["minute"] >= args.warmup_minutes]
    result["summary"] = _summary(samples, after)
    if args.tracemalloc_every_min > 0:
        result["tracemalloc"] = tracemalloc_growth(
            snap_dir, args.warmup_minutes, args.tracemalloc_every_min
        )
    path = write_result(args.name, result)
    png = RESULTS_DIR / f"{args.name}.png"
    if samples:
        plot(
            samples,
            png,
            f"soak {args.minutes:g} min, {args.rate:g} msg/s, {args.viewers} viewers, "
            f"commit {commit[:8]}: {result['rss']['verdict']}",
            args.warmup_minutes,
        )
    say(result["rss"]["verdict"])
    say(json.dumps(result["summary"]))
    say(f"wrote {path} and {png}")
    return 0


def _mb(v: float | None) -> float | None:
    return None if v is None else round(v / 2**20, 1)


def _summary(samples: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    def col(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [r[key] for r in rows if isinstance(r.get(key), int | float)]

    out: dict[str, Any] = {}
    if samples:
        out["fieldhub_rss_mb_first_last"] = [
            samples[0]["fieldhub_rss_mb"],
            samples[-1]["fieldhub_rss_mb"],
        ]
        out["broker_rss_mb_first_last"] = [
            samples[0]["broker_rss_mb"],
            samples[-1]["broker_rss_mb"],
        ]
        out["db_plus_wal_mb_max"] = max(s["db_mb"] + s["wal_mb"] for s in samples)
        out["db_plus_wal_mb_end"] = samples[-1]["db_mb"] + samples[-1]["wal_mb"]
        out["loadavg_1m_mean"] = round(statistics.fmean(s["loadavg"][0] for s in samples), 2)
    for key in ("publish_commit_p99_ms", "command_p99_ms", "queue_depth"):
        values = col(after, key)
        if values:
            out[f"{key}_after_warmup"] = {
                "median": round(statistics.median(values), 1),
                "max": round(max(values), 1),
            }
    return out


if __name__ == "__main__":
    sys.exit(main())
