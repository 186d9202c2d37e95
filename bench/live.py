"""Live view: MQTT publish -> WebSocket receive latency of /api/v1/live, and RSS per viewer.

Cells: readings/s in ``--rates`` (default 1,000 and 10,000) x viewers in ``--viewers`` (default 10
and 50), ``--repeats`` runs of each (default 3), every run against a fresh ``fieldhub up``. The
goal to report against: p99 <= 50 ms at 10,000 readings/s with 50 viewers, no viewer ever told
it lagged, and the publisher within 5 % of its target rate. Run ``./scripts/bench live`` (or
``--quick`` to smoke-test the benchmark itself); the result goes to ``bench/results/live.json``.

One run (a cell):

1. ``fieldhub up --data-dir <tmp> --mqtt-port <free> --http-port <free>``; wait for /healthz.
2. ``bench.loadgen --payload live`` in its own process: rate / 5 devices, each publishing one
   QoS 1 message a second with five metrics and ``ts`` = epoch microseconds at the write; the
   devices' publishes are spread evenly over the second (round robin), so every series reports
   once a second, slower than the server's 250 ms coalescing window.
3. Baseline: ``--baseline`` s of that load with no viewer; fieldhub's RSS and CPU over its second
   half are the 0-viewer figures.
4. N viewers (``bench.viewers``, websockets + orjson) in one or two processes of their own
   subscribe to every device's readings; ``--warmup`` s later the ``--duration`` s measurement
   window starts. Latency = receive time - ts for every reading received in the window.
5. The load is stopped (SIGUSR1), fieldhub is stopped with SIGINT.

See bench/README.md for the method and what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil

from bench.common import (
    REPO_ROOT,
    BenchError,
    Sampler,
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
from bench.viewers import summarize

# --- the goal -----------------------------------------------------------------------------------

GOAL_RATE = 10_000  # readings/s
GOAL_VIEWERS = 50
GOAL_P99_MS = 50.0
GOAL_MIN_DURATION_S = 30.0
# The publisher's rate over the measurement window may differ this much from its target before
# the run is called unrepresentative (the brief's 5 %).
RATE_TOLERANCE = 0.05
# Readings per message and messages per device per second: 10k readings/s = 2,000 devices x
# 1 msg/s x 5 metrics. One message a second per device is what native nodes do, and it keeps
# every series well under one reading per 250 ms coalescing window, so every reading is sent.
METRICS_PER_MESSAGE = 5
DEVICE_MSG_PER_S = 1.0
# Other processes using more than this (machine busy % before we start; % of one core during
# a run) make the figures suspect on a 2-core box: we say so, we do not refuse. (As ingest.)
OTHERS_CPU_WARN_PERCENT = 20.0
# A viewer process above this (% of one core) may be queueing frames itself.
VIEWER_CPU_WARN_PERCENT = 80.0
# Every series reports once a second, slower than the coalescing window: viewers should get
# every reading. Below this share a note says they did not.
DELIVERY_WARN_RATIO = 0.99
# fieldhub's publish -> commit histogram: the ingest share of the latency we measure.
LAG_HISTOGRAM = "fieldhub_ingest_lag_seconds"

# --- timing -------------------------------------------------------------------------------------

# Quiet time between healthy and the load, as in the ingest bench.
SETTLE_AFTER_HEALTHY_S = 2.0
SAMPLE_EVERY_S = 1.0
LOADGEN_CONNECT_TIMEOUT_S = 60.0
VIEWERS_READY_TIMEOUT_S = 60.0
# After the window ends, the viewers read for END_GRACE_S more (bench.viewers), close and write
# their result; this bounds all of that.
VIEWERS_EXIT_TIMEOUT_S = 30.0
# The load runs until we stop it (SIGUSR1); its --duration is only a bound, this far beyond the
# longest the run can take.
LOAD_SLACK_S = 30.0
LOADGEN_EXIT_TIMEOUT_S = 60.0
# The /metrics scrape that opens the window's commit-latency figure is taken this long before
# the window (its rendering occupies fieldhub's event loop for a moment: not inside the window).
WINDOW_SCRAPE_LEAD_S = 1.0
SCRAPE_TIMEOUT_S = 15.0
# A reference run (0 viewers) samples this much past its window, so that a viewer run whose
# viewers took a moment to connect (its window starts later after the load) is still covered.
REFERENCE_SLACK_S = 5.0

QUICK: dict[str, Any] = {
    "rates": [1000],
    "viewers": [5],
    "duration": 10.0,
    "warmup": 3.0,
    "baseline": 6.0,
    "repeats": 1,
    "viewer_procs": 2,  # exercise the merge of two processes' histograms
}

# Per-run figures we take medians of, per cell (dotted paths into a run's dict).
MEDIAN_KEYS = (
    "latency.p50_ms",
    "latency.p90_ms",
    "latency.p99_ms",
    "latency.p999_ms",
    "latency.max_ms",
    "latency.mean_ms",
    "readings_per_viewer_per_s",
    "delivery_ratio",
    "lagged_frames",
    "publish.rate_in_window",
    "publish.rate_ratio",
    "fieldhub.rss_0_mb",
    "fieldhub.rss_n_mb",
    "fieldhub.rss_growth_mb",
    "fieldhub.rss_reference_growth_mb",
    "fieldhub.rss_per_viewer_kib",
    "fieldhub.rss_per_viewer_raw_kib",
    "fieldhub.cpu_0_percent",
    "fieldhub.cpu_n_percent",
    "fieldhub.cpu_per_viewer_percent",
    "cpu.mosquitto.cpu_mean_percent",
    "cpu.loadgen.cpu_mean_percent",
    "cpu.viewers.cpu_mean_percent",
    "cpu.machine_busy_mean_percent",
    "cpu.others_cpu_mean_percent",
    "startup_s",
)

METHODS = {
    "load": "bench.loadgen --payload live in its own process: readings_rate / 5 devices, one "
    "TCP connection each, each publishing one QoS 1 message a second on "
    "devices/bench-NNNN/telemetry with five metrics and ts = epoch microseconds taken when the "
    "PUBLISH is written; devices take turns round robin so their publishes are spread evenly "
    "over the second (device i at i / msg_rate s past each second of the schedule)",
    "viewers": "bench.viewers processes (1 for <= 10 viewers, else 2): one WebSocket per viewer "
    "(websockets sans-I/O protocol, permessage-deflate offered as browsers do unless "
    "--compression none), subscribed with {op: subscribe, events: [readings]}",
    "latency": "receive wall time - ts of each reading received in the window, over all viewers. "
    "The receive time is taken in the viewer's data_received before any parsing (bytes "
    "completing a frame date it); same machine, same clock as the publisher. 0.1 ms buckets; a "
    "quantile is the upper edge of the bucket holding its rank (nearest rank)",
    "window": "measurement starts --warmup s after every viewer is subscribed and lasts "
    "--duration s; readings are in it by receive time",
    "readings_per_viewer_per_s": "readings received in the window / viewers / window length; "
    "delivery_ratio divides it by the readings/s the publisher offered in the window (1.0: "
    "nothing coalesced away or lost)",
    "lagged": "lagged frames received by viewers over their whole session (warm-up included); "
    "server_live_dropped_frames is fieldhub_live_dropped_frames_total over the run",
    "publish": "the publisher's own count of publishes written per second since its first "
    "publish; rate_in_window is that over the measurement window (partial seconds pro rata), "
    "rate_ratio it divided by the target",
    "rss": "fieldhub = the `fieldhub up` process and its descendants except Mosquitto, sampled "
    "once a second. rss_0 = median over the second half of the 0-viewer baseline under the same "
    "load; rss_n = median over the measurement window; rss_per_viewer = (rss_n - rss_0) / N",
    "cpu": "per-process CPU time deltas once a second, 100 = one full core; cpu_0 over the "
    "baseline's second half, cpu_n over the window. machine_busy: 100 = all cores busy; "
    "others_cpu = machine minus fieldhub, mosquitto, loadgen and viewers, in % of one core",
    "medians": "per cell, each figure's median across repeats (runs that failed to produce it "
    "are skipped)",
}


# --- viewer processes --------------------------------------------------------------------------


class ViewerProc:
    """One ``bench.viewers`` process: its stdin (the window), stdout lines and result file."""

    def __init__(
        self, k: int, url: str, first: int, count: int, rundir: Path, args: argparse.Namespace
    ) -> None:
        self.k = k
        self.count = count
        self.out = rundir / f"viewers-{k}.json"
        self.log = rundir / f"viewers-{k}.log"
        cmd = [
            sys.executable,
            "-m",
            "bench.viewers",
            "--url",
            url,
            "--viewers",
            str(count),
            "--first-index",
            str(first),
            "--wait-for-window",
            "--compression",
            args.compression,
            "--out",
            str(self.out),
        ]
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,  # a Ctrl-C here reaches it only through us
            )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ready: dict[str, Any] | None = None
        self.last_tick: dict[str, Any] | None = None
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))

    def poll_lines(self) -> None:
        """Take the lines printed since the last call: remember ready and the latest tick."""
        while True:
            try:
                msg = self.lines.get_nowait()
            except queue.Empty:
                return
            if msg.get("event") == "ready":
                self.ready = msg
            elif msg.get("event") == "tick":
                self.last_tick = msg

    def send_window(self, start: float, end: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"measure_from": start, "measure_to": end}) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        if not self.out.exists():
            raise BenchError(
                f"viewers process {self.k} exited {self.proc.returncode} without a result:\n"
                f"{tail(self.log, 15)}"
            )
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        stop_process(self.proc)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """(first index, count) of ``parts`` near-equal shares of ``n`` viewers."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    out, first = [], 0
    for k in range(parts):
        count = base + (1 if k < extra else 0)
        out.append((first, count))
        first += count
    return out


def viewer_procs_for(n: int, requested: int | None) -> int:
    """Processes for ``n`` viewers: one up to 10 (about 100k readings/s to decode), else two."""
    if requested:
        return max(1, min(requested, n))
    return 1 if n <= 10 else 2


# --- one run --------------------------------------------------------------------------------------


def _wait_for_text(path: Path, needle: str, timeout_s: float, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise BenchError(f"loadgen exited {proc.returncode} before connecting:\n{tail(path)}")
        time.sleep(0.1)
    raise BenchError(f"loadgen not connected after {timeout_s:.0f}s:\n{tail(path)}")


def _rate_in_window(load: dict[str, Any], start: float, end: float) -> float | None:
    """Publishes per second the loadgen wrote in [start, end] (its per-second counts, pro rata)."""
    per_second = load.get("per_second_sent")
    first = load.get("first_publish_epoch")
    if not per_second or not first or end <= start:
        return None
    sent = 0.0
    for i, n in enumerate(per_second):
        lo, hi = first + i, first + i + 1
        overlap = min(hi, end) - max(lo, start)
        if overlap > 0:
            sent += n * overlap
    return sent / (end - start)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x (per second); None with fewer than 3 points."""
    if len(points) < 3:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx <= 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def _metric_delta(before: str | None, after: str | None, sample: str) -> float | None:
    """Change of a counter between two scrapes; 0 for a labelled family with no sample yet."""
    if before is None or after is None:
        return None
    a = sample_sum(after, sample)
    if a is None:
        # A labelled counter with no label set yet has only its HELP/TYPE lines (named with
        # or without _total, depending on the client library's version).
        family = sample.removesuffix("_total")
        declared = f"# TYPE {family} " in after or f"# TYPE {sample} " in after
        return 0.0 if declared else None
    return a - (sample_sum(before, sample) or 0.0)


def _commit_latency(before: str | None, after: str | None) -> dict[str, Any] | None:
    """Publish -> commit over the window from fieldhub's own histogram (the ingest share)."""
    if before is None or after is None:
        return None
    delta = bucket_delta(
        histogram_buckets(before, LAG_HISTOGRAM), histogram_buckets(after, LAG_HISTOGRAM)
    )
    if not delta:
        return None
    out: dict[str, Any] = {"observations": max(delta.values())}
    for name, q in (("p50", 0.50), ("p99", 0.99)):
        est = histogram_quantile(delta, q)
        out[f"{name}_ms"] = round(est["value_s"] * 1000, 2) if est else None
        out[f"{name}_bucket_ms"] = (
            [None if b is None else round(b * 1000, 2) for b in est["bucket_s"]] if est else None
        )
    return out


def _scrape_or_note(url: str, run: dict[str, Any]) -> str | None:
    try:
        return scrape(url)
    except (OSError, RuntimeError, ValueError) as exc:
        run["notes"].append(f"cannot scrape {url}: {exc}")
        return None


def measured_run(
    rate: int, viewers: int, k: int, n: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """One fresh `fieldhub up`, a baseline, N viewers measured. Errors go into the dict."""
    tag = f"{rate:,}/s x {viewers} viewers, run {k}/{n}"
    rundir = workdir / f"r{rate}-v{viewers}-run{k}"
    data_dir = rundir / "data"
    data_dir.mkdir(parents=True)
    # fieldhub's Mosquitto may drop to user `mosquitto` (when we are root): let it read the dir.
    for d in (workdir, rundir, data_dir):
        d.chmod(0o755)
    devices = round(rate / METRICS_PER_MESSAGE / DEVICE_MSG_PER_S)
    msg_rate = devices * DEVICE_MSG_PER_S
    mqtt_port, http_port = free_port(), free_port()
    while http_port == mqtt_port:
        http_port = free_port()
    run: dict[str, Any] = {
        "cell": cell_key(rate, viewers),
        "readings_rate": rate,
        "viewers": viewers,
        "run": k,
        "devices": devices,
        "msg_rate": msg_rate,
        "errors": [],
        "notes": [],
    }
    say(f"{tag}: fieldhub up (mqtt {mqtt_port}, http {http_port})")
    fh_log = rundir / "fieldhub.log"
    proc = start_fieldhub(args.fieldhub, data_dir, mqtt_port, http_port, fh_log, args.fieldhub_arg)
    loadgen: subprocess.Popen[bytes] | None = None
    vprocs: list[ViewerProc] = []
    mosq_pids: list[int] = []
    try:
        ready = wait_healthy(proc, fh_log, http_port, mqtt_port)
        http_port, mqtt_port = ready["http_port"], ready["mqtt_port"]
        run.update(startup_s=ready["startup_s"], ports={"mqtt": mqtt_port, "http": http_port})
        root = psutil.Process(proc.pid)
        mosq_pids = [p.pid for p in descendants(root) if is_mosquitto(p)]
        if not mosq_pids:
            run["notes"].append("no mosquitto child process found: mosquitto cpu not sampled")
        time.sleep(SETTLE_AFTER_HEALTHY_S)
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        before = _scrape_or_note(metrics_url, run)

        sampler = Sampler()
        sampler.add(
            "fieldhub", lambda: [root, *(p for p in descendants(root) if not is_mosquitto(p))]
        )
        sampler.add("mosquitto", lambda: [p for p in descendants(root) if is_mosquitto(p)])
        sampler.sample()

        # -- the load, and the 0-viewer baseline under it --
        lg_out, lg_log = rundir / "load.json", rundir / "load.log"
        budget_s = (
            args.baseline + VIEWERS_READY_TIMEOUT_S + args.warmup + args.duration + LOAD_SLACK_S
        )
        say(
            f"  {tag}: load {rate:,} readings/s = {devices} devices x {DEVICE_MSG_PER_S:g} msg/s "
            f"x {METRICS_PER_MESSAGE} metrics"
        )
        loadgen = start_loadgen(
            port=mqtt_port,
            devices=devices,
            duration_s=budget_s,
            out=lg_out,
            log=lg_log,
            rate=msg_rate,
            extra=["--payload", "live", "--timeline"],
        )
        lg = psutil.Process(loadgen.pid)
        sampler.add("loadgen", lambda: [lg] if lg.is_running() else [])
        _wait_for_text(lg_log, "loadgen connected", LOADGEN_CONNECT_TIMEOUT_S, loadgen)
        t_base = time.time()
        timeline: list[list[Any]] = []

        def tick(phase: str, t_ref: float, extra: str = "") -> dict[str, Any]:
            s = sampler.sample()
            fh = s["fieldhub"]
            say(
                f"  {tag} {phase} {s['t'] - t_ref:5.1f}s  {extra}fieldhub {fh['cpu']}% cpu "
                f"{fh['rss'] / 2**20:.1f} MiB  mosquitto {s['mosquitto']['cpu']}%  "
                f"machine {s['machine_busy']}% busy"
            )
            return s

        base_end = t_base + args.baseline
        while time.time() < base_end:
            time.sleep(max(0.0, min(SAMPLE_EVERY_S, base_end - time.time())))
            s = tick("baseline", t_base)
            timeline.append(["baseline", round(s["t"] - t_base, 2), None, None, *_fh(s)])
            if loadgen.poll() is not None:
                raise BenchError(f"loadgen exited {loadgen.returncode} early:\n{tail(lg_log)}")
        base_from = t_base + args.baseline / 2
        # Publish -> commit without viewers (from before the load to here), for comparison.
        scrapes: dict[str, str | None] = {"baseline": _scrape_or_note(metrics_url, run)}

        # -- the viewers (none in a reference run: the same timeline without them) --
        if viewers:
            url = f"ws://127.0.0.1:{http_port}/api/v1/live"
            nprocs = viewer_procs_for(viewers, args.viewer_procs)
            say(f"  {tag}: {viewers} viewers in {nprocs} process(es) -> {url}")
            for j, (first, count) in enumerate(_split(viewers, nprocs)):
                vprocs.append(ViewerProc(j, url, first, count, rundir, args))
            vpids = [v.proc.pid for v in vprocs]
            vps = [psutil.Process(pid) for pid in vpids]
            sampler.add("viewers", lambda: [p for p in vps if p.is_running()])
            deadline = time.monotonic() + VIEWERS_READY_TIMEOUT_S
            while any(v.ready is None for v in vprocs):
                if time.monotonic() > deadline:
                    raise BenchError(f"viewers not ready after {VIEWERS_READY_TIMEOUT_S:.0f}s")
                for v in vprocs:
                    v.poll_lines()
                    if v.ready is None and v.proc.poll() is not None:
                        raise BenchError(
                            f"viewers process {v.k} exited {v.proc.returncode}:\n{tail(v.log)}"
                        )
                time.sleep(0.05)
            connected = sum(int(v.ready["connected"]) for v in vprocs if v.ready)
            connect_s = max(float(v.ready["connect_s"]) for v in vprocs if v.ready)
            extensions = sorted({e for v in vprocs if v.ready for e in v.ready["extensions"]})
            run.update(
                viewers_connected=connected, viewers_connect_s=connect_s, extensions=extensions
            )
            if connected < viewers:
                failures = [f for v in vprocs if v.ready for f in v.ready["failures"]]
                raise BenchError(f"only {connected} of {viewers} viewers connected: {failures[:3]}")
            say(f"  {tag}: {connected} viewers subscribed in {connect_s:.2f}s ({extensions})")
        else:
            run.update(viewers_connected=0, viewers_connect_s=0.0, extensions=[])
            say(f"  {tag}: reference run, no viewers: sampling the same phases without them")

        m_from = time.time() + args.warmup
        m_to = m_from + args.duration
        for v in vprocs:
            v.send_window(m_from, m_to)
        t_viewers = time.time()
        # /metrics around the window (a second before it, right after it), for the ingest
        # share of the latency. In threads: a slow answer must not stall our sampling.
        scrapers: dict[str, threading.Thread] = {}

        def scrape_in_background(name: str) -> None:
            def work() -> None:
                scrapes[name] = _scrape_or_note(metrics_url, run)

            scrapers[name] = threading.Thread(target=work, daemon=True)
            scrapers[name].start()

        while True:
            time.sleep(SAMPLE_EVERY_S)
            for v in vprocs:
                v.poll_lines()
            now = time.time()
            if now >= m_from - WINDOW_SCRAPE_LEAD_S and "from" not in scrapers:
                scrape_in_background("from")
            if now >= m_to and "to" not in scrapers:
                scrape_in_background("to")
            phase = "warmup " if now < m_from else ("measure" if now < m_to else "closing")
            # The viewers' latest second, if they printed one within the last 1.5 s.
            ticks = [v.last_tick for v in vprocs if v.last_tick and now - v.last_tick["t"] < 1.5]
            per_viewer = sum(t["readings"] for t in ticks) / viewers if ticks else 0.0
            p99 = max((t["p99_ms"] for t in ticks if t["p99_ms"] is not None), default=None)
            top = max((t["max_ms"] for t in ticks if t["max_ms"] is not None), default=None)
            lagged = sum(t["lagged"] for t in ticks)
            s = tick(
                phase,
                t_viewers,
                f"viewers {per_viewer:,.0f} readings/s each, p99 {p99} ms, max {top} ms, "
                f"lagged {lagged}  "
                if ticks
                else "",
            )
            timeline.append(
                [phase.strip(), round(s["t"] - t_viewers, 2), round(per_viewer), p99, *_fh(s)]
            )
            if loadgen.poll() is not None:
                raise BenchError(f"the load ended before the measurement:\n{tail(lg_log)}")
            if vprocs and all(v.proc.poll() is not None for v in vprocs):
                break
            if not vprocs and now >= m_to + REFERENCE_SLACK_S:
                break
            if now > m_to + VIEWERS_EXIT_TIMEOUT_S:
                raise BenchError("viewers did not finish within 30 s of the window's end")
        results = [v.result() for v in vprocs]  # empty in a reference run
        for thread in scrapers.values():
            thread.join(timeout=SCRAPE_TIMEOUT_S)
        for v in vprocs:
            if v.proc.returncode != 0:
                run["errors"].append(f"viewers process {v.k} exited {v.proc.returncode}")

        # -- stop the load --
        loadgen.send_signal(signal.SIGUSR1)
        try:
            loadgen.wait(timeout=LOADGEN_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"loadgen did not exit after SIGUSR1:\n{tail(lg_log)}") from exc
        load = read_loadgen_result(loadgen, lg_out, lg_log)
        if loadgen.returncode != 0:
            run["errors"].append(f"loadgen exited {loadgen.returncode}:\n{tail(lg_log, 10)}")
        after = _scrape_or_note(metrics_url, run)
    except (BenchError, RuntimeError, OSError, ValueError, psutil.Error) as exc:
        run["errors"].append(str(exc))
        return _finish_failed(run, proc, loadgen, vprocs, mosq_pids, rundir)
    except BaseException:
        # Ctrl-C or a bug in this file: never leave fieldhub, its broker or our clients running.
        run["errors"].append("interrupted")
        _finish_failed(run, proc, loadgen, vprocs, mosq_pids, rundir)
        raise

    run["shutdown"] = stop_fieldhub(proc, mosq_pids)
    run["errors"] += run["shutdown"].pop("errors")

    _account_load(run, load, sampler, (base_from, base_end), (m_from, m_to))
    if viewers:
        _account_viewers(run, results)
    # fieldhub's RSS against time since the load started, and where this run's baseline and
    # window lie on that axis: a reference run's growth is read at another run's spans.
    run["rss_timeline"] = [
        [round(s["t"] - t_base, 2), s["fieldhub"]["rss"]]
        for s in sampler.samples
        if s["t"] >= t_base and "fieldhub" in s
    ]
    run["spans"] = {
        "baseline": [round(base_from - t_base, 2), round(base_end - t_base, 2)],
        "window": [round(m_from - t_base, 2), round(m_to - t_base, 2)],
    }
    run["server_metrics"] = {
        "live_dropped_frames": _metric_delta(before, after, "fieldhub_live_dropped_frames_total"),
        "live_frames": _metric_delta(before, after, "fieldhub_live_frames_total"),
        "bus_dropped_events": _metric_delta(before, after, "fieldhub_bus_dropped_events_total"),
        "dead_letters": _metric_delta(before, after, "fieldhub_dead_letters_total"),
    }
    run["commit_latency"] = {
        "window": _commit_latency(scrapes.get("from"), scrapes.get("to")),
        "baseline": _commit_latency(before, scrapes.get("baseline")),
    }
    run["timeline"] = timeline
    fh = run["fieldhub"]
    if viewers:
        lat = run["latency"]
        say(
            f"  {tag}: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms "
            f"over {lat['count']:,} readings; {run['readings_per_viewer_per_s']} readings/s per "
            f"viewer (delivery {run['delivery_ratio']}), lagged {run['lagged_frames']}; publish "
            f"{run['publish']['rate_in_window']} msg/s; fieldhub RSS {fh['rss_0_mb']} -> "
            f"{fh['rss_n_mb']} MiB"
        )
    else:
        say(
            f"  {tag}: publish {run['publish']['rate_in_window']} msg/s; fieldhub RSS "
            f"{fh['rss_0_mb']} -> {fh['rss_n_mb']} MiB with no viewer"
        )
    if not run["errors"] and not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    else:
        run["logs"] = str(rundir)
    return run


def _fh(s: dict[str, Any]) -> list[Any]:
    return [s["fieldhub"]["cpu"], round(s["fieldhub"]["rss"] / 2**20, 1), s["machine_busy"]]


def _account_load(
    run: dict[str, Any],
    load: dict[str, Any],
    sampler: Sampler,
    baseline: tuple[float, float],
    window: tuple[float, float],
) -> None:
    """The publisher's figures and fieldhub's RSS and CPU without and with the viewers."""
    viewers = run["viewers"]
    m_from, m_to = window
    b_from, b_to = baseline
    rate_in_window = _rate_in_window(load, m_from, m_to)
    target = run["msg_rate"]
    run["publish"] = {
        "target_msg_rate": target,
        "rate_in_window": round(rate_in_window, 1) if rate_in_window is not None else None,
        "rate_ratio": round(rate_in_window / target, 4) if rate_in_window is not None else None,
        "offered_rate": load["offered_rate"],
        "sent": load["sent"],
        "acked": load["acked"],
        "unacked": load["unacked"],
        "connect_s": load["connect_s"],
        "max_tick_late_ms": load["max_tick_late_ms"],
        "max_backlog": load["max_backlog"],
        "behind_schedule_s": load["behind_schedule_s"],
        "disconnects": load["disconnects"],
        "puback_rtt_p50_ms": load["puback_rtt_p50_ms"],
        "puback_rtt_p99_ms": load["puback_rtt_p99_ms"],
        "cpu_percent": load["cpu_percent"],
    }
    offered = rate_in_window * METRICS_PER_MESSAGE if rate_in_window is not None else None
    run["offered_readings_per_s"] = round(offered, 1) if offered is not None else None

    def fieldhub_samples(lo: float, hi: float, key: str) -> list[float]:
        return [
            s["fieldhub"][key]
            for s in sampler.samples
            if lo <= s["t"] <= hi and "fieldhub" in s and s["fieldhub"][key] is not None
        ]

    rss_0 = _median(fieldhub_samples(b_from, b_to, "rss"))
    rss_n = _median(fieldhub_samples(m_from, m_to, "rss"))
    cpu_0 = _median(fieldhub_samples(b_from, b_to, "cpu"))
    cpu_n = _median(fieldhub_samples(m_from, m_to, "cpu"))
    slope = _slope(
        [(s["t"], s["fieldhub"]["rss"]) for s in sampler.samples if b_from <= s["t"] <= b_to]
    )
    run["fieldhub"] = {
        "rss_0_mb": _mib(rss_0),
        "rss_n_mb": _mib(rss_n),
        "rss_growth_mb": _mib(rss_n - rss_0) if rss_0 is not None and rss_n is not None else None,
        # (rss_n - rss_0) / N; rss_per_viewer_kib is set by apply_reference (corrected when a
        # reference run of the same rate exists, else this).
        "rss_per_viewer_raw_kib": (
            round((rss_n - rss_0) / viewers / 1024, 1)
            if viewers and rss_0 is not None and rss_n is not None
            else None
        ),
        "rss_per_viewer_kib": None,
        "rss_baseline_slope_kib_per_s": round(slope / 1024, 1) if slope is not None else None,
        "cpu_0_percent": round(cpu_0, 1) if cpu_0 is not None else None,
        "cpu_n_percent": round(cpu_n, 1) if cpu_n is not None else None,
        "cpu_per_viewer_percent": (
            round((cpu_n - cpu_0) / viewers, 2)
            if viewers and cpu_0 is not None and cpu_n is not None
            else None
        ),
        "baseline_samples": len(fieldhub_samples(b_from, b_to, "rss")),
        "window_samples": len(fieldhub_samples(m_from, m_to, "rss")),
    }
    run["cpu"] = sampler.summary(m_from, m_to)
    run["cpu_baseline"] = sampler.summary(b_from, b_to)
    run["window"] = {"from": m_from, "to": m_to, "seconds": round(m_to - m_from, 3)}
    others = run["cpu"].get("others_cpu_mean_percent")
    if others is not None and others > OTHERS_CPU_WARN_PERCENT:
        run["notes"].append(
            f"other processes used {others}% of a core during the window: figures are perturbed"
        )


def _account_viewers(run: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """Latency, delivery and lagged frames from the viewer processes' results."""
    viewers = run["viewers"]
    window_s = run["window"]["seconds"]
    per_viewer = [v for r in results for v in r["per_viewer"]]
    run["latency"] = summarize([r["histogram"] for r in results])
    counts = [v["readings_window"] for v in per_viewer]
    run["readings_per_viewer_per_s"] = round(sum(counts) / viewers / window_s, 1)
    run["readings_per_viewer_per_s_min"] = round(min(counts) / window_s, 1) if counts else None
    offered = run["offered_readings_per_s"]
    run["delivery_ratio"] = (
        round(run["readings_per_viewer_per_s"] / offered, 4) if offered else None
    )
    run["lagged_frames"] = sum(v["lagged_frames"] for v in per_viewer)
    run["lagged_dropped"] = sum(v["lagged_dropped"] for v in per_viewer)
    run["lagged_frames_in_window"] = sum(v["lagged_frames_window"] for v in per_viewer)
    run["frames_per_viewer_per_s"] = round(
        sum(v["frames_window"] for v in per_viewer) / viewers / window_s, 1
    )
    frames: dict[str, int] = {}
    for v in per_viewer:
        for kind, c in v["frames"].items():
            frames[kind] = frames.get(kind, 0) + int(c)
    run["frames_by_type"] = frames
    run["viewers_close_s"] = max((float(r.get("close_s", 0.0)) for r in results), default=None)

    closed = [f"viewer {v['index']}: {v['closed']}" for v in per_viewer if v["closed"]]
    if closed:
        run["errors"].append(f"{len(closed)} viewer connection(s) ended early: {closed[:3]}")
    errors = [e for v in per_viewer for e in v["error_frames"]]
    if errors:
        run["errors"].append(f"error frames from the server: {errors[:3]}")
    decode_errors = sum(int(r.get("decode_errors", 0)) for r in results)
    if decode_errors:
        run["errors"].append(f"{decode_errors} frames were not JSON")
    lat = run["latency"]
    if lat.get("bad_rows"):
        run["errors"].append(f"{lat['bad_rows']} readings rows without an integer ts")
    if lat.get("negative"):
        run["notes"].append(f"{lat['negative']} readings arrived before their ts (clock?)")
    vcpu = dig(run, "cpu.viewers.cpu_max_percent")
    nprocs = max(1, len(results))
    if vcpu is not None and vcpu / nprocs > VIEWER_CPU_WARN_PERCENT:
        run["notes"].append(
            f"viewer processes reached {vcpu}% cpu together ({nprocs} process(es)): the clients "
            "may have added latency of their own"
        )
    ratio = run["delivery_ratio"]
    if ratio is not None and ratio < DELIVERY_WARN_RATIO:
        run["notes"].append(
            f"viewers received {ratio:.1%} of the readings offered in the window (every series "
            "reports once a second, so coalescing should drop none)"
        )
    timeouts = sum(int(r.get("close_timeouts", 0)) for r in results)
    if timeouts:
        run["notes"].append(
            f"{timeouts} viewer connection(s) were not closed by the server within "
            "3 s of our close frame"
        )


def _mib(n: float | None) -> float | None:
    return round(n / 2**20, 1) if n is not None else None


def _rss_at(run: dict[str, Any], span: Sequence[float]) -> float | None:
    """Median RSS of ``run`` over ``span`` (seconds since its load started)."""
    lo, hi = span
    return _median([rss for t, rss in run.get("rss_timeline", []) if lo <= t <= hi])


def apply_reference(runs: list[dict[str, Any]]) -> None:
    """Set each viewer run's ``rss_per_viewer_kib``, net of what RSS grows by anyway.

    fieldhub's RSS keeps growing under load alone for minutes (SQLite's page cache fills up to
    its 64 MiB as the table grows, allocator arenas), so (rss_n - rss_0) / N also counts that
    growth. A reference run of the same rate has the same timeline without viewers; read at this
    run's baseline and window spans (seconds since the load started) it gives the growth without
    viewers, which is subtracted: (rss_n - rss_0 - reference growth) / N, the reference growth
    being the median over the reference runs of that rate.
    """
    for run in runs:
        fh = run.get("fieldhub")
        if not run["viewers"] or not fh or fh.get("rss_per_viewer_raw_kib") is None:
            continue
        growths = []
        for ref in runs:
            if ref["viewers"] or ref["errors"] or ref["readings_rate"] != run["readings_rate"]:
                continue
            b = _rss_at(ref, run["spans"]["baseline"])
            w = _rss_at(ref, run["spans"]["window"])
            if b is not None and w is not None:
                growths.append(w - b)
        growth = _median(growths)
        raw_bytes = fh["rss_per_viewer_raw_kib"] * 1024 * run["viewers"]
        if growth is not None:
            fh["rss_reference_growth_mb"] = _mib(growth)
            fh["rss_reference_runs"] = len(growths)
            fh["rss_per_viewer_kib"] = round((raw_bytes - growth) / run["viewers"] / 1024, 1)
            fh["rss_per_viewer_method"] = "net of reference growth"
            continue
        fh["rss_reference_growth_mb"] = None
        fh["rss_reference_runs"] = 0
        fh["rss_per_viewer_kib"] = fh["rss_per_viewer_raw_kib"]
        fh["rss_per_viewer_method"] = "raw (no reference run)"
        slope = fh.get("rss_baseline_slope_kib_per_s")
        if slope is not None and slope > 0:
            spans = run["spans"]
            dt = sum(spans["window"]) / 2 - sum(spans["baseline"]) / 2
            drift_mb = slope * dt / 1024
            if drift_mb > 0.5 * abs(raw_bytes / 2**20):
                run["notes"].append(
                    f"fieldhub RSS grew {slope:.0f} KiB/s without viewers: about {drift_mb:.1f} "
                    f"of the {raw_bytes / 2**20:.1f} MiB attributed to the viewers may be that "
                    "(no reference run to subtract it)"
                )


def _finish_failed(
    run: dict[str, Any],
    proc: subprocess.Popen[bytes],
    loadgen: subprocess.Popen[bytes] | None,
    vprocs: list[ViewerProc],
    mosq_pids: list[int],
    rundir: Path,
) -> dict[str, Any]:
    for v in vprocs:
        v.stop()
    if loadgen is not None and loadgen.poll() is None:
        stop_process(loadgen)
    shutdown = stop_fieldhub(proc, mosq_pids)
    run["errors"] += [e for e in shutdown.pop("errors") if "already exited" not in e]
    run["shutdown"] = shutdown
    run["logs"] = str(rundir)
    say(f"  run failed: {run['errors'][0].splitlines()[0]} (logs in {rundir})")
    return run


# --- verdict ------------------------------------------------------------------------------------


def cell_key(rate: int, viewers: int) -> str:
    return f"{rate}x{viewers}"


def cells_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cell: its medians and which runs they came from."""
    out: dict[str, Any] = {}
    for run in runs:
        cell = out.setdefault(
            run["cell"],
            {"readings_rate": run["readings_rate"], "viewers": run["viewers"], "runs": []},
        )
        cell["runs"].append(run["run"])
    for key, cell in out.items():
        mine = [r for r in runs if r["cell"] == key and not r["errors"]]
        cell["completed_runs"] = len(mine)
        cell["median"] = median_of(mine, MEDIAN_KEYS)
        cell["p99_ms_per_run"] = [dig(r, "latency.p99_ms") for r in runs if r["cell"] == key]
    return out


def checks_for(
    args: argparse.Namespace, runs: list[dict[str, Any]], cells: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    goal = cells.get(cell_key(GOAL_RATE, GOAL_VIEWERS))
    p99 = goal["median"]["latency.p99_ms"] if goal else None
    ratios = [dig(r, "publish.rate_ratio") for r in runs]
    watched = [r for r in runs if r["viewers"]]
    return {
        "config_meets_goal": {
            "ok": goal is not None
            and args.duration >= GOAL_MIN_DURATION_S
            and args.warmup >= 5.0
            and not args.quick,
            "value": {
                "cells": sorted(cells),
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "quick": args.quick,
            },
        },
        "all_runs_completed": {
            "ok": bool(runs) and all(not r["errors"] for r in runs),
            "value": f"{sum(1 for r in runs if not r['errors'])}/{len(runs)}",
        },
        "p99_at_goal": {
            "ok": p99 is not None and p99 <= GOAL_P99_MS,
            "value": p99,
            "limit_ms": GOAL_P99_MS,
            "cell": cell_key(GOAL_RATE, GOAL_VIEWERS),
        },
        "zero_lagged": {
            "ok": bool(watched) and all(r.get("lagged_frames") == 0 for r in watched),
            "value": [r.get("lagged_frames") for r in watched],
        },
        "publish_rate_within_5pct": {
            "ok": bool(runs)
            and all(x is not None and abs(x - 1.0) <= RATE_TOLERANCE for x in ratios),
            "value": ratios,
        },
    }


# --- main -----------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 1000,10000") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive numbers")
    return values


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.live",
        description="Live-view benchmark: MQTT publish -> /api/v1/live receive latency and "
        "RSS per viewer of `fieldhub up`; writes bench/results/live.json.",
    )
    p.add_argument(
        "--rates", type=_int_list, default=[1000, 10000], help="readings/s (default 1000,10000)"
    )
    p.add_argument(
        "--viewers", type=_int_list, default=[10, 50], help="viewer counts (default 10,50)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help="seconds measured per run: the window (default 30)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds from all viewers subscribed to the window (default 5)",
    )
    p.add_argument(
        "--baseline", type=float, default=15.0, help="seconds of load with 0 viewers (RSS 0)"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per cell (medians are reported)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test the bench: 1,000 readings/s, 5 viewers in 2 processes, 10 s, 1 run",
    )
    p.add_argument(
        "--viewer-procs",
        type=int,
        default=None,
        help="viewer processes per run (default: 1 up to 10 viewers, else 2)",
    )
    p.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="deflate",
        help="viewers offer permessage-deflate, as browsers do (default), or not",
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
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the 0-viewer reference run per rate (RSS per viewer is then not corrected "
        "for fieldhub's own growth under load)",
    )
    p.add_argument("--keep", action="store_true", help="keep data dirs and logs of good runs")
    p.add_argument("--output", type=Path, default=None, help="result file (default results/)")
    p.add_argument("--require-pass", action="store_true", help="exit 1 unless passed (for CI)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.duration <= 0 or args.warmup < 0 or args.baseline < 2 or args.repeats < 1:
        p.error("--duration > 0, --warmup >= 0, --baseline >= 2 and --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the live-view benchmark and write bench/results/live.json."""
    args = _parse_args(argv)
    bench = start_bench("live", "fieldhub, the publisher and the viewers")
    started, workdir, notes = bench.started, bench.workdir, bench.notes
    background = bench.background_percent
    cells = [(rate, n) for rate in args.rates for n in args.viewers]
    per_run_s = args.baseline + args.warmup + args.duration + 12
    total_runs = (len(cells) + (len(args.rates) if args.reference else 0)) * args.repeats
    say(
        f"live bench: {len(cells)} cell(s) {', '.join(cell_key(*c) for c in cells)} "
        f"(readings/s x viewers){' + a 0-viewer reference per rate' if args.reference else ''}, "
        f"{args.duration:g}s measured after {args.warmup:g}s warm-up, {args.repeats} repeat(s)"
        f"{' (quick)' if args.quick else ''}: {total_runs} runs, about "
        f"{math.ceil(total_runs * per_run_s / 60)} min; work dir {workdir}"
    )
    errors: list[str] = []
    runs: list[dict[str, Any]] = []
    try:
        if not Path(args.fieldhub).exists() and shutil.which(args.fieldhub) is None:
            errors.append(f"{args.fieldhub} not found: pip install -e . in the venv first")
        else:
            # Repeat-major: a drift of the machine over time spreads over every cell. Each rate's
            # reference run (no viewers) comes first.
            for k in range(1, args.repeats + 1):
                for rate in args.rates:
                    for n in ([0] if args.reference else []) + args.viewers:
                        runs.append(measured_run(rate, n, k, args.repeats, args, workdir))
    except KeyboardInterrupt:
        errors.append("interrupted")
        say("interrupted: writing what we have")

    apply_reference(runs)
    summary = cells_summary(runs)
    checks = checks_for(args, runs, summary)
    result: dict[str, Any] = {
        "bench": "live",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "goal": {
            "readings_rate": GOAL_RATE,
            "viewers": GOAL_VIEWERS,
            "p99_ms": GOAL_P99_MS,
            "publish_rate_tolerance": RATE_TOLERANCE,
        },
        "config": {
            "rates": args.rates,
            "viewers": args.viewers,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "baseline_s": args.baseline,
            "repeats": args.repeats,
            "quick": args.quick,
            "qos": 1,
            "metrics_per_message": METRICS_PER_MESSAGE,
            "device_msg_per_s": DEVICE_MSG_PER_S,
            "payload": '{"ts":<epoch us at publish>,"temperature":..,"humidity":..,'
            '"pressure":..,"battery":..,"rssi":..} on devices/bench-NNNN/telemetry',
            "subscribe": {"op": "subscribe", "events": ["readings"]},
            "compression": args.compression,
            "reference_runs": args.reference,
            "viewer_procs": args.viewer_procs or "auto (1 up to 10 viewers, else 2)",
            "fieldhub": args.fieldhub,
            "fieldhub_args": args.fieldhub_arg,
            "machine": {**machine_info(), "background_busy_percent": background},
        },
        "cells": summary,
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
        "runs": runs,
        "methods": METHODS,
        "notes": notes + [f"{r['cell']} run {r['run']}: {n}" for r in runs for n in r["notes"]],
        "errors": errors + [f"{r['cell']} run {r['run']}: {e}" for r in runs for e in r["errors"]],
    }
    path = write_result("live", result, args.output)
    say(f"wrote {path}")
    _print_summary(result)
    tidy_workdir(workdir, keep=bool(result["errors"]) or args.keep)
    if result["errors"]:
        return 2
    return 1 if args.require_pass and not result["passed"] else 0


def _print_summary(result: dict[str, Any]) -> None:
    say(
        "cell (readings/s x viewers): p50 / p99 / max ms, readings/s per viewer, lagged, "
        "fieldhub cpu 0 -> N viewers, RSS per viewer (medians)"
    )
    for key, cell in result["cells"].items():
        m = cell["median"]
        if not cell["viewers"]:
            say(
                f"  {key:>10}: reference, no viewers: fieldhub RSS grew "
                f"{m['fieldhub.rss_growth_mb']} MiB from baseline to window, cpu "
                f"{m['fieldhub.cpu_0_percent']} -> {m['fieldhub.cpu_n_percent']}%"
            )
            continue
        say(
            f"  {key:>10}: {m['latency.p50_ms']} / {m['latency.p99_ms']} / {m['latency.max_ms']} ms"
            f", {m['readings_per_viewer_per_s']} readings/s, lagged {m['lagged_frames']}, "
            f"cpu {m['fieldhub.cpu_0_percent']} -> {m['fieldhub.cpu_n_percent']}%, "
            f"{m['fieldhub.rss_per_viewer_kib']} KiB/viewer  (p99 per run {cell['p99_ms_per_run']})"
        )
    for name, c in result["checks"].items():
        say(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {c['value']}")
    say(f"passed: {result['passed']}")
    for n in result["notes"]:
        say(f"note: {n.splitlines()[0]}")
    for e in result["errors"]:
        say(f"error: {e.splitlines()[0]}")


if __name__ == "__main__":
    sys.exit(main())
