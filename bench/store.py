"""Store benchmark: 10M readings written, then series query latency, on SQLite and PostgreSQL.

The goal (from the issue): with 10M readings loaded (1,000 devices x 10,000), the p95 of one
device's 7-day hourly series <= 20 ms and of the fleet's 24-hour hourly series <= 100 ms, on both
backends. Run ``./scripts/bench store`` (or ``--quick`` to smoke-test the benchmark itself); the
result goes to ``bench/results/store.json``.

Per engine (``--engines``, default both), on a fresh database:

1. **Load** through ``Store.write_batch``, the path ingest writes through: one reading of
   ``temperature`` per device per minute for ``--readings-per-device`` minutes ending now, in time
   order, batches of ingest's own maximum (10,000 messages of one reading each). Progress every
   5 s. SQLite: a file in a temporary directory. PostgreSQL: a private cluster
   (tests/support/postgres.py) with durability switched back on, then ``VACUUM ANALYZE``.
2. **Queries** through the store API, ``--rounds`` rounds of ``--queries`` each, after a few
   warm-up queries: (a) ``query_series`` of a random device over the last 7 days hourly, avg;
   (b) ``query_fleet_series`` of every device over the last 24 h hourly, avg. Every answer's
   reading count is checked against the data loaded.
3. **HTTP** (``--no-http`` skips it): the same two queries through ``fieldhub up --db <it>``
   (``GET /api/v1/devices/{id}/series`` and ``GET /api/v1/series``) from one keep-alive client.

With ``--ingest`` (or ``--ingest-only``), then: stored msg/s of ``fieldhub ingest --workers N``
on PostgreSQL for N = 1, 2, 3, median of 3 runs each: a private Mosquitto (fieldhub's embedded
configuration) and a fresh database per run, a QoS 1 burst from ``bench.loadgen --max``.

See bench/README.md ("store") for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import psutil

from bench.common import (
    REPO_ROOT,
    BenchError,
    Sampler,
    busy_neighbour,
    descendants,
    free_port,
    is_mosquitto,
    machine_info,
    read_loadgen_result,
    say,
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
from fieldhub.broker import MosquittoProcess
from fieldhub.ingest.pipeline import BATCH_MAX_MESSAGES
from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.protocol.timestamps import format_us
from fieldhub.store import Store, WriteBatch, open_store
from fieldhub.store.types import SeriesPoint

# --- the goal -----------------------------------------------------------------------------------

GOAL_DEVICES = 1_000
GOAL_READINGS_PER_DEVICE = 10_000
GOAL_DEVICE_P95_MS = 20.0
GOAL_FLEET_P95_MS = 100.0
GOAL_QUERIES = 200

# --- the data -----------------------------------------------------------------------------------

METRIC = "temperature"
DEVICE_PREFIX = "sbench-"
MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
# Ingest's own largest batch: the store sees what a saturated ingest hands it.
BATCH_MESSAGES = BATCH_MAX_MESSAGES
ENGINES = ("sqlite", "postgresql")

# --- timing -------------------------------------------------------------------------------------

PROGRESS_EVERY_S = 5.0
# Queries before each timed kind, not counted: the first pays for cold caches and plans, which
# `first_ms` reports on its own.
WARMUP_QUERIES = 5
DEFAULT_ROUNDS = 3
# Above this share of one core taken by other processes during a phase, the figures get a note.
OTHERS_CPU_WARN_PERCENT = 20.0

QUICK = {"devices": 100, "readings_per_device": 1_000, "queries": 20, "rounds": 1}

# --- ingest workers (--ingest) ------------------------------------------------------------------

INGEST_WORKERS = (1, 2, 3)
INGEST_REPEATS = 3
# Seconds of `loadgen --max`: ~200k messages at the generator's ~20k msg/s, which one worker
# stores in under a minute. Longer bursts make 9 runs long, and beyond ~500k queued messages
# for one worker Mosquitto drops QoS 1 messages (fieldhub's MAX_QUEUED_MESSAGES).
INGEST_BURST_S = 10.0
INGEST_DEVICES = 1_000
# The loadgen payload (seq, temperature, humidity, rssi): `seq` rows count the messages.
SEQ_METRIC = "seq"
# Workers are ready once each logged its connection; the SUBACK follows within milliseconds.
WORKERS_READY_TIMEOUT_S = 60.0
SUBSCRIBE_SETTLE_S = 1.0
# After the burst, a count short of the acked one that stays the same this long is final (lost
# messages): longer than a worker's batch commit takes on a busy box. Gives up at the timeout.
INGEST_POLL_S = 0.5
INGEST_SETTLE_QUIET_S = 10.0
INGEST_SETTLE_TIMEOUT_S = 300.0
QUICK_INGEST = {"workers": (1, 2), "repeats": 1, "burst_s": 5.0, "devices": 100}

METHODS = {
    "load": "Store.write_batch with WriteBatch(decoded=[...]) of BATCH_MESSAGES messages, one "
    "reading each, in time order (every device's minute k before minute k+1), awaited one after "
    "the other in this process. readings_per_s = readings / wall time of the whole load "
    "(building the batches included); write_readings_per_s = readings / time inside "
    "write_batch only",
    "data": "device i reports at minute start + (i * 7 mod 60) s, value 20 + a daily sine "
    "+ a per-device offset + a deterministic jitter; the last minute is the one before the "
    "load started",
    "queries": "wall time of one awaited store call in this process (the API's own path: "
    "SQLite's reader thread, asyncpg's pool), time.perf_counter around it. end = now at the "
    "call, start = end - 7 days (device) or - 24 h (fleet), interval 1 h, avg: the ragged "
    "edges read minute rollups and raw readings, the middle hour rollups",
    "percentiles": "exact nearest rank over the round's queries (p95 of 200 = the 10th "
    "slowest); median = the median of the rounds' figures",
    "http": "the same queries as GET requests to `fieldhub up --db <the bench's database>` "
    "from one httpx.AsyncClient (one keep-alive connection), wall time to the body read; "
    "includes the device "
    "lookup, JSON encoding and HTTP both ways",
    "cpu": "CPU time per process group between the start and the end of a phase (no sampling "
    "during timed queries): bench = this process (SQLite's threads included), postgres = the "
    "cluster, fieldhub = fieldhub up and children except its Mosquitto; 100 = one core; "
    "machine_busy 100 = both cores",
    "counts": "each answer's sum of point counts equals the readings the load put in its range "
    "(computed from the schedule)",
    "ingest_workers": "per run: a fresh Mosquitto (fieldhub.broker.MosquittoProcess) and "
    "database, `fieldhub ingest --workers N --db <it> --mqtt-url <it>` with a client id of its "
    "own, ready once every worker logged its connection; then `bench.loadgen --max` for "
    "burst_s from `devices` connections (QoS 1, 4 readings a message). stored = sum of n of "
    "the `seq` hour rollups (updated in the readings' own transaction: the committed count), "
    "polled every 0.5 s; stored_rate = stored / (last change of that count - first publish). "
    "lost = acked - stored. cpu: workers = the supervisor and its workers, 100 = one core",
}


# --- the schedule -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """Which readings the load writes: `devices` devices, one reading per minute each for
    `minutes` minutes from `first_minute_us`."""

    devices: int
    minutes: int
    first_minute_us: int

    def device_id(self, i: int) -> str:
        return f"{DEVICE_PREFIX}{i:04d}"

    def offset_us(self, i: int) -> int:
        """Device i's second within each minute: devices are not synchronised."""
        return (i * 7 % 60) * 1_000_000

    def value(self, i: int, minute: int) -> float:
        daily = 5.0 * math.sin(2 * math.pi * (minute % 1440) / 1440)
        jitter = ((i * 7919 + minute * 104_729) % 1000) / 1000 - 0.5
        return round(20.0 + daily + (i % 50) / 10 + jitter, 3)

    @property
    def readings(self) -> int:
        return self.devices * self.minutes

    def batches(self, size: int) -> Iterator[WriteBatch]:
        """WriteBatches of `size` messages in time order."""
        decoded: list[Decoded] = []
        ids = [self.device_id(i) for i in range(self.devices)]
        offsets = [self.offset_us(i) for i in range(self.devices)]
        for minute in range(self.minutes):
            start = self.first_minute_us + minute * MINUTE_US
            for i in range(self.devices):
                ts = start + offsets[i]
                decoded.append(
                    Decoded(
                        device_id=ids[i],
                        profile="native",
                        channel="telemetry",
                        # Received as sent: a live fleet, not a backfill.
                        received_us=ts + 5_000,
                        readings=[Reading(METRIC, ts, self.value(i, minute))],
                        device_time=True,
                    )
                )
                if len(decoded) == size:
                    yield WriteBatch(decoded=decoded)
                    decoded = []
        if decoded:
            yield WriteBatch(decoded=decoded)

    def count_in(self, i: int, start_us: int, end_us: int) -> int:
        """Readings of device i in [start, end)."""
        base = self.first_minute_us + self.offset_us(i)

        def before(t: int) -> int:  # readings with time < t
            return min(self.minutes, max(0, -(-(t - base) // MINUTE_US)))

        return before(end_us) - before(start_us)

    def fleet_count_in(self, start_us: int, end_us: int) -> int:
        return sum(self.count_in(i, start_us, end_us) for i in range(self.devices))


def schedule_ending_now(devices: int, minutes: int) -> Schedule:
    """The last minute is the one before now: every reading lies in the past."""
    now = time.time_ns() // 1_000
    last = now - now % MINUTE_US - MINUTE_US
    return Schedule(devices, minutes, last - (minutes - 1) * MINUTE_US)


# --- figures ------------------------------------------------------------------------------------


def distribution(ms: Sequence[float]) -> dict[str, Any]:
    """Exact nearest-rank percentiles of a list of milliseconds."""
    ordered = sorted(ms)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "n": len(ordered),
        "p50_ms": round(rank(0.50), 2),
        "p95_ms": round(rank(0.95), 2),
        "p99_ms": round(rank(0.99), 2),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def median_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median across rounds of each percentile."""
    return {
        key: round(statistics.median(r[key] for r in rounds), 2)
        for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")
    }


class CpuWatch:
    """CPU per process group over a phase: one sample at its start, one at its end."""

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]]) -> None:
        self.sampler = Sampler()
        for name, find in groups.items():
            self.sampler.add(name, find)

    def start(self) -> float:
        self.sampler.sample()
        return time.time()

    def stop(self, since: float) -> dict[str, Any]:
        self.sampler.sample()
        return self.sampler.summary(since, time.time() + 1)


def postgres_processes(data_dir: Path) -> Callable[[], list[psutil.Process]]:
    """The cluster's postmaster (pid on the first line of postmaster.pid) and its backends."""

    def find() -> list[psutil.Process]:
        try:
            pid = int((data_dir / "postmaster.pid").read_text().split()[0])
            root = psutil.Process(pid)
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess):
            return []
        return [root, *descendants(root)]

    return find


# --- phases -------------------------------------------------------------------------------------


async def load(
    store: Store, schedule: Schedule, engine: str, cpu: CpuWatch, batch: int
) -> dict[str, Any]:
    """Write the schedule through write_batch, with progress; the load's figures."""
    say(
        f"  {engine}: loading {schedule.readings:,} readings ({schedule.devices:,} devices x "
        f"{schedule.minutes:,} minutes) in batches of {batch:,}"
    )
    since = cpu.start()
    started = time.perf_counter()
    write_s = 0.0
    written = duplicates = batches = 0
    next_note = started + PROGRESS_EVERY_S
    for item in schedule.batches(batch):
        t0 = time.perf_counter()
        result = await store.write_batch(item)
        t1 = time.perf_counter()
        write_s += t1 - t0
        written += result.readings_written
        duplicates += result.readings_duplicate
        batches += 1
        if t1 >= next_note:
            elapsed = t1 - started
            rate = written / elapsed
            s = cpu.sampler.sample()
            groups = ", ".join(
                f"{name} {s[name]['cpu']}% cpu" for name in cpu.sampler.groups if name in s
            )
            say(
                f"  {engine}: {written:,} / {schedule.readings:,} readings "
                f"({100 * written / schedule.readings:.0f}%), {rate:,.0f} readings/s, "
                f"ETA {(schedule.readings - written) / rate:.0f} s; {groups}, "
                f"machine {s['machine_busy']}% busy"
            )
            next_note += PROGRESS_EVERY_S
    wall_s = time.perf_counter() - started
    figures = {
        "readings": written,
        "duplicates": duplicates,
        "batches": batches,
        "batch_messages": batch,
        "wall_s": round(wall_s, 1),
        "write_s": round(write_s, 1),
        "readings_per_s": round(written / wall_s),
        "write_readings_per_s": round(written / write_s),
        "cpu": cpu.stop(since),
    }
    say(
        f"  {engine}: loaded {written:,} readings in {wall_s:.0f} s: "
        f"{figures['readings_per_s']:,} readings/s ({figures['write_readings_per_s']:,}/s inside "
        "write_batch)"
    )
    return figures


class Query(Protocol):
    """One timed query: returns the points' total reading count and the count expected."""

    def __call__(self, rng: random.Random) -> Awaitable[tuple[int, int]]: ...


async def timed(query: Query, rng: random.Random, n: int) -> tuple[list[float], int]:
    """Run `query` n times; (milliseconds each, answers whose counts were wrong)."""
    ms: list[float] = []
    wrong = 0
    for _ in range(n):
        t0 = time.perf_counter()
        got, want = await query(rng)
        ms.append((time.perf_counter() - t0) * 1000)
        wrong += got != want
    return ms, wrong


async def measure(
    kinds: dict[str, Query], rounds: int, queries: int, cpu: CpuWatch, tag: str
) -> dict[str, Any]:
    """Warm-up, then `rounds` x `queries` of each kind; per round percentiles and medians."""
    out: dict[str, Any] = {}
    for name, query in kinds.items():
        rng = random.Random(f"{tag}-{name}")
        warm, wrong = await timed(query, rng, WARMUP_QUERIES)
        per_round = []
        since = cpu.start()
        for k in range(rounds):
            ms, bad = await timed(query, rng, queries)
            wrong += bad
            per_round.append(distribution(ms))
            say(
                f"  {tag} {name} round {k + 1}/{rounds}: p50 {per_round[-1]['p50_ms']} ms, "
                f"p95 {per_round[-1]['p95_ms']} ms, p99 {per_round[-1]['p99_ms']} ms"
            )
        out[name] = {
            "median": median_rounds(per_round),
            "rounds": per_round,
            "first_ms": round(warm[0], 2),
            "wrong_counts": wrong,
            "cpu": cpu.stop(since),
        }
    return out


def store_queries(store: Store, schedule: Schedule) -> dict[str, Query]:
    """(a) a random device's 7 days hourly and (b) the fleet's 24 h hourly, through the store."""

    async def device(rng: random.Random) -> tuple[int, int]:
        i = rng.randrange(schedule.devices)
        end = time.time_ns() // 1_000
        points = await store.query_series(
            schedule.device_id(i),
            METRIC,
            start_us=end - 7 * DAY_US,
            end_us=end,
            interval_us=HOUR_US,
            agg="avg",
        )
        return sum(p.count for p in points), schedule.count_in(i, end - 7 * DAY_US, end)

    async def fleet(rng: random.Random) -> tuple[int, int]:
        end = time.time_ns() // 1_000
        points = await store.query_fleet_series(
            METRIC,
            device_ids=None,
            start_us=end - DAY_US,
            end_us=end,
            interval_us=HOUR_US,
            agg="avg",
        )
        return sum(p.count for p in points), schedule.fleet_count_in(end - DAY_US, end)

    return {"device_7d_hourly": device, "fleet_24h_hourly": fleet}


def http_queries(client: httpx.AsyncClient, schedule: Schedule) -> dict[str, Query]:
    """The same two queries as GET requests."""

    def counted(response: httpx.Response) -> int:
        if response.status_code != 200:
            raise BenchError(f"GET {response.url} answered {response.status_code}: {response.text}")
        return sum(int(p["count"]) for p in response.json()["points"])

    async def device(rng: random.Random) -> tuple[int, int]:
        i = rng.randrange(schedule.devices)
        end = time.time_ns() // 1_000
        params = {
            "metric": METRIC,
            "start": format_us(end - 7 * DAY_US),
            "end": format_us(end),
            "interval": "1h",
            "agg": "avg",
        }
        path = f"/api/v1/devices/{schedule.device_id(i)}/series"
        got = counted(await client.get(path, params=params))
        return got, schedule.count_in(i, end - 7 * DAY_US, end)

    async def fleet(rng: random.Random) -> tuple[int, int]:
        end = time.time_ns() // 1_000
        params = {
            "metric": METRIC,
            "start": format_us(end - DAY_US),
            "end": format_us(end),
            "interval": "1h",
            "agg": "avg",
        }
        got = counted(await client.get("/api/v1/series", params=params))
        return got, schedule.fleet_count_in(end - DAY_US, end)

    return {"device_7d_hourly": device, "fleet_24h_hourly": fleet}


async def reference_points(store: Store, schedule: Schedule) -> dict[str, list[SeriesPoint]]:
    """Fixed queries (fixed now) whose answers must be the same on every engine."""
    end = schedule.first_minute_us + schedule.minutes * MINUTE_US + 17_000_000
    return {
        "device": await store.query_series(
            schedule.device_id(schedule.devices // 2),
            METRIC,
            start_us=end - 7 * DAY_US,
            end_us=end,
            interval_us=HOUR_US,
            agg="avg",
        ),
        "fleet": await store.query_fleet_series(
            METRIC,
            device_ids=None,
            start_us=end - DAY_US,
            end_us=end,
            interval_us=HOUR_US,
            agg="avg",
        ),
    }


def http_phase(
    args: argparse.Namespace,
    url: str,
    schedule: Schedule,
    workdir: Path,
    engine: str,
    groups: dict[str, Callable[[], list[psutil.Process]]],
) -> dict[str, Any]:
    """The same queries through `fieldhub up --db url`."""
    data_dir = workdir / f"fieldhub-{engine}"
    data_dir.mkdir()
    # fieldhub's Mosquitto may drop to user `mosquitto` (when we are root): let it read the dir.
    for d in (workdir, data_dir):
        d.chmod(0o755)
    mqtt_port, http_port = free_port(), free_port()
    log = workdir / f"fieldhub-{engine}.log"
    proc = start_fieldhub(args.fieldhub, data_dir, mqtt_port, http_port, log, ["--db", url])
    mosquitto_pids: list[int] = []
    try:
        ready = wait_healthy(proc, log, http_port, mqtt_port)
        root = psutil.Process(proc.pid)
        mosquitto_pids = [p.pid for p in descendants(root) if is_mosquitto(p)]
        cpu = CpuWatch(
            {
                **groups,
                "fieldhub": lambda: [
                    root,
                    *(p for p in descendants(root) if not is_mosquitto(p)),
                ],
            }
        )
        figures = asyncio.run(
            http_measure(f"http://127.0.0.1:{ready['http_port']}", schedule, args, cpu, engine)
        )
    finally:
        shutdown = stop_fieldhub(proc, mosquitto_pids)
    figures["fieldhub_shutdown"] = shutdown
    return figures


async def http_measure(
    base_url: str, schedule: Schedule, args: argparse.Namespace, cpu: CpuWatch, engine: str
) -> dict[str, Any]:
    # One connection, kept alive: the figure is a request's, not a TCP handshake's.
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        return await measure(
            http_queries(client, schedule), args.rounds, args.queries, cpu, f"{engine} http"
        )


@contextlib.contextmanager
def private_postgres(workdir: Path) -> Iterator[Any]:
    """A private PostgreSQL cluster (tests/support/postgres.py), durable like a real server."""
    # The tests' cluster helper is the one way this repository starts PostgreSQL; it lives
    # under tests/ (importable as `support`), not in the installed package.
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    postgres = importlib.import_module("support.postgres")
    server = postgres.PostgresServer().start()
    try:
        # The test cluster trades durability for speed (fsync off...). A store benchmark must
        # pay what a real server pays per commit: back to PostgreSQL's defaults.
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            server.psql(f"ALTER SYSTEM SET {setting} = on")  # one per call: not in a transaction
        server.psql("SELECT pg_reload_conf()")
        yield server
    finally:
        server.stop()


def postgres_settings(server: Any) -> dict[str, str]:
    names = (
        "server_version",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "shared_buffers",
        "work_mem",
        "max_wal_size",
    )
    out = {}
    for name in names:
        out[name] = server.psql(f"SHOW {name}").strip()
    return out


async def store_phases(
    url: str, schedule: Schedule, args: argparse.Namespace, engine: str, cpu: CpuWatch
) -> tuple[dict[str, Any], dict[str, list[SeriesPoint]]]:
    store = open_store(url, stale_after_s={"native": 120})
    await store.open()
    try:
        figures: dict[str, Any] = {
            "load": await load(store, schedule, engine, cpu, args.batch),
            "size_bytes": None,
        }
        if engine == "postgresql":
            # What autovacuum would do by itself in the minutes after such a load (statistics,
            # visibility map), done now so that it does not run during the timed queries.
            say(f"  {engine}: VACUUM ANALYZE")
            t0 = time.perf_counter()
            await vacuum_analyze(url)
            figures["vacuum_analyze_s"] = round(time.perf_counter() - t0, 1)
        figures["size_bytes"] = await store.size_bytes()
        with busy_neighbour(args.neighbour):
            figures["queries"] = await measure(
                store_queries(store, schedule), args.rounds, args.queries, cpu, engine
            )
        figures["queries_with_neighbour"] = args.neighbour
        reference = await reference_points(store, schedule)
    finally:
        await store.close()
    return figures, reference


async def vacuum_analyze(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def run_engine(
    engine: str, args: argparse.Namespace, schedule: Schedule, workdir: Path, pg: Any
) -> tuple[dict[str, Any], dict[str, list[SeriesPoint]] | None]:
    """Load, queries and HTTP on one engine; errors go into the figures."""
    say(f"{engine}: fresh database")
    groups: dict[str, Callable[[], list[psutil.Process]]] = {
        "bench": lambda: [psutil.Process()],
    }
    if engine == "sqlite":
        url = f"sqlite:///{workdir / 'store.db'}"
    else:
        url = pg.new_database("store_bench")
        groups["postgres"] = postgres_processes(pg.data_dir)
    cpu = CpuWatch(groups)
    figures: dict[str, Any] = {"url": url.split("@")[-1], "errors": [], "notes": []}
    reference = None
    try:
        stored, reference = asyncio.run(store_phases(url, schedule, args, engine, cpu))
        figures.update(stored)
        if not args.no_http:
            say(f"  {engine}: the same queries over HTTP (fieldhub up --db ...)")
            figures["http"] = http_phase(args, url, schedule, workdir, engine, groups)
            figures["errors"] += figures["http"]["fieldhub_shutdown"].pop("errors")
    except (BenchError, OSError, RuntimeError) as exc:
        figures["errors"].append(f"{type(exc).__name__}: {exc}")
        say(f"  {engine} failed: {exc}")
    for phase, cpu_figures in cpu_by_phase(figures):
        others = cpu_figures.get("others_cpu_mean_percent")
        if others is not None and others > OTHERS_CPU_WARN_PERCENT:
            figures["notes"].append(
                f"{phase}: other processes used {others}% of a core: figures are perturbed"
            )
    if engine == "sqlite":
        for path in workdir.glob("store.db*"):
            path.unlink()
    return figures, reference


def cpu_by_phase(figures: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    if "load" in figures:
        yield "load", figures["load"]["cpu"]
    for where in ("queries", "http"):
        for name, kind in (figures.get(where) or {}).items():
            if isinstance(kind, dict) and "cpu" in kind:
                yield f"{where}.{name}", kind["cpu"]


# --- ingest workers ------------------------------------------------------------------------------


async def watch_burst(
    db_url: str,
    loadgen: subprocess.Popen[bytes],
    read_load: Callable[[], dict[str, Any]],
    sampler: Sampler,
    tag: str,
) -> tuple[dict[str, Any], int, float, str | None]:
    """Poll the committed message count until the burst is all stored (or stopped growing
    after the burst ended): (the loadgen's result, stored, time of the last change, error).

    The count is the sum of `n` of the `seq` hour rollups: a thousand rows, not a scan of the
    readings, and written in the readings' own transaction, so it is the committed count. One
    event loop for the whole watch: a Ctrl-C cancels it and ends the bench.
    """
    import asyncpg

    conn = None
    load: dict[str, Any] | None = None
    stored, last_change, changed_m = 0, time.time(), time.monotonic()
    burst_end_m = deadline_m = math.inf
    next_sample = time.monotonic() + 1.0
    try:
        while True:
            await asyncio.sleep(INGEST_POLL_S)
            if conn is None:
                conn = await asyncpg.connect(db_url)
            try:
                count = await conn.fetchval(
                    "SELECT coalesce(sum(n), 0) FROM rollup_hour "
                    "WHERE metric_id = (SELECT id FROM metrics WHERE name = $1)",
                    SEQ_METRIC,
                )
            except asyncpg.UndefinedTableError:  # the workers have not migrated yet
                count = 0
            now_m = time.monotonic()
            if count != stored:
                stored, last_change, changed_m = int(count), time.time(), now_m
            if now_m >= next_sample:
                sampler.sample()
                next_sample += 1.0
            if load is None and loadgen.poll() is not None:
                load = read_load()
                say(f"  {tag}: burst done (acked {load['acked']:,}), stored {stored:,} so far")
                burst_end_m, deadline_m = now_m, now_m + INGEST_SETTLE_TIMEOUT_S
            if load is None:
                continue
            # All stored; or a count short of it that has not moved since the burst ended for
            # a while (lost messages); or, at the timeout, still moving.
            if stored >= load["acked"] or now_m - max(burst_end_m, changed_m) >= (
                INGEST_SETTLE_QUIET_S
            ):
                return load, stored, last_change, None
            if now_m > deadline_m:
                error = f"still storing {INGEST_SETTLE_TIMEOUT_S:.0f} s after the burst"
                return load, stored, last_change, error
    finally:
        if conn is not None:
            await conn.close()


def wait_workers_ready(proc: subprocess.Popen[bytes], log: Path, client_id: str, n: int) -> None:
    """Until every worker logged its connection as `<client id>-<i>` (then its SUBACK)."""
    deadline = time.monotonic() + WORKERS_READY_TIMEOUT_S
    wanted = [f" as {client_id}-{i} " for i in range(1, n + 1)]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"fieldhub ingest exited with {proc.returncode}:\n{tail(log)}")
        text = log.read_text(errors="replace") if log.exists() else ""
        if all(w in text for w in wanted):
            time.sleep(SUBSCRIBE_SETTLE_S)
            return
        time.sleep(0.2)
    raise BenchError(f"not every worker connected in {WORKERS_READY_TIMEOUT_S:.0f} s:\n{tail(log)}")


def ingest_run(
    n: int, k: int, settings: dict[str, Any], args: argparse.Namespace, workdir: Path, pg: Any
) -> dict[str, Any]:
    """One burst against `fieldhub ingest --workers n`; errors go into the dict."""
    tag = f"ingest {n} worker(s) run {k}"
    rundir = workdir / f"ingest-{n}-{k}"
    rundir.mkdir()
    for d in (workdir, rundir):
        d.chmod(0o755)  # run as root, the broker drops to user `mosquitto`: let it in
    run: dict[str, Any] = {"workers": n, "run": k, "errors": []}
    broker = MosquittoProcess(data_dir=rundir / "broker", port=free_port())
    broker.start()
    db_url = pg.new_database(f"ingest_{n}_{k}")
    client_id = f"store-bench-{n}-{k}"
    log = rundir / "ingest.log"
    env = {**os.environ, "FIELDHUB_MQTT_CLIENT_ID": client_id, "FIELDHUB_LOG_LEVEL": "info"}
    say(f"  {tag}: fieldhub ingest --workers {n} (broker {broker.url})")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [args.fieldhub, "ingest", "--workers", str(n), "--db", db_url,
             "--mqtt-url", broker.url],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )  # fmt: skip
    loadgen: subprocess.Popen[bytes] | None = None
    try:
        wait_workers_ready(proc, log, client_id, n)
        root = psutil.Process(proc.pid)
        sampler = Sampler()
        sampler.add("workers", lambda: [root, *descendants(root)])
        sampler.add("postgres", postgres_processes(pg.data_dir))
        pid = broker.pid
        sampler.add("mosquitto", lambda: [psutil.Process(pid)] if pid else [])
        lg_out, lg_log = rundir / "load.json", rundir / "load.log"
        sampler.sample()
        loadgen = start_loadgen(
            port=broker.port,
            devices=settings["devices"],
            duration_s=settings["burst_s"],
            out=lg_out,
            log=lg_log,
            max_mode=True,
        )
        lg = psutil.Process(loadgen.pid)
        sampler.add("loadgen", lambda: [lg] if lg.is_running() else [])
        started_loadgen = loadgen
        load, stored, last_change, error = asyncio.run(
            watch_burst(
                db_url,
                started_loadgen,
                lambda: read_loadgen_result(started_loadgen, lg_out, lg_log),
                sampler,
                tag,
            )
        )
        if error is not None:
            run["errors"].append(error)
        sampler.sample()
        first = load["first_publish_epoch"]
        run.update(
            acked=load["acked"],
            offered_rate=load["offered_rate"],
            stored=stored,
            lost=load["acked"] - stored,
            stored_rate=round(stored / (last_change - first), 1) if stored else None,
            drain_s=round(last_change - load["last_publish_epoch"], 2),
            cpu=sampler.summary(first, last_change + 1),
        )
        if run["lost"] > 0:
            run["errors"].append(f"{run['lost']} acked messages were not stored")
        say(
            f"  {tag}: stored {stored:,} of {load['acked']:,} acked at "
            f"{run['stored_rate']} msg/s (drain {run['drain_s']} s)"
        )
    except (BenchError, RuntimeError, OSError) as exc:
        run["errors"].append(str(exc))
        run["logs"] = str(rundir)
    finally:
        if loadgen is not None and loadgen.poll() is None:
            stop_process(loadgen)
        code = stop_process(proc, signal.SIGTERM)
        if code != 0:
            run["errors"].append(f"fieldhub ingest exited {code} on SIGTERM:\n{tail(log, 10)}")
        broker.stop()
    if not run["errors"]:
        shutil.rmtree(rundir, ignore_errors=True)
    return run


def ingest_part(args: argparse.Namespace, workdir: Path, pg: Any) -> dict[str, Any]:
    """Stored msg/s with 1, 2 and 3 ingest workers on PostgreSQL, median of the runs."""
    settings: dict[str, Any] = {
        "workers": INGEST_WORKERS,
        "repeats": INGEST_REPEATS,
        "burst_s": INGEST_BURST_S,
        "devices": INGEST_DEVICES,
    }
    if args.quick:
        settings.update(QUICK_INGEST)
    say(
        f"ingest workers: {settings['workers']} x {settings['repeats']} run(s), "
        f"loadgen --max {settings['burst_s']:g} s from {settings['devices']} devices"
    )
    by_workers: dict[str, Any] = {}
    for n in settings["workers"]:
        runs = [
            ingest_run(n, k, settings, args, workdir, pg) for k in range(1, settings["repeats"] + 1)
        ]
        ok = [r for r in runs if not r["errors"]]

        def median(key: str, rows: list[dict[str, Any]] = ok) -> float | None:
            values = [r[key] for r in rows if r.get(key) is not None]
            return round(statistics.median(values), 1) if values else None

        by_workers[str(n)] = {
            "median_stored_rate": median("stored_rate"),
            "median_offered_rate": median("offered_rate"),
            "median_drain_s": median("drain_s"),
            "runs": runs,
        }
    base = by_workers.get("1", {}).get("median_stored_rate")
    for figures in by_workers.values():
        rate = figures["median_stored_rate"]
        figures["vs_one_worker"] = round(rate / base, 2) if rate and base else None
    return {
        "settings": {**settings, "workers": list(settings["workers"])},
        "by_workers": by_workers,
    }


# --- verdict ------------------------------------------------------------------------------------


def checks_for(
    args: argparse.Namespace,
    engines: dict[str, dict[str, Any]],
    references: dict[str, dict[str, list[SeriesPoint]]],
) -> dict[str, dict[str, Any]]:
    def p95(engine: str, kind: str) -> float | None:
        value = engines[engine].get("queries", {}).get(kind, {}).get("median", {}).get("p95_ms")
        return float(value) if value is not None else None

    checks: dict[str, dict[str, Any]] = {
        "config_meets_goal": {
            "ok": args.devices >= GOAL_DEVICES
            and args.readings_per_device >= GOAL_READINGS_PER_DEVICE
            and args.queries >= GOAL_QUERIES
            and set(args.engines) == set(ENGINES)
            and not args.quick,
            "value": {
                "devices": args.devices,
                "readings_per_device": args.readings_per_device,
                "queries": args.queries,
                "engines": args.engines,
            },
        },
        "all_engines_completed": {
            "ok": set(engines) == set(args.engines)
            and all(not e["errors"] for e in engines.values()),
            "value": {name: len(e["errors"]) for name, e in engines.items()},
        },
        "every_reading_stored": {
            "ok": bool(engines)
            and all(
                e.get("load", {}).get("readings") == args.devices * args.readings_per_device
                for e in engines.values()
            ),
            "value": {name: e.get("load", {}).get("readings") for name, e in engines.items()},
        },
        "counts_correct": {
            "ok": bool(engines)
            and all(
                kind.get("wrong_counts") == 0
                for e in engines.values()
                for where in ("queries", "http")
                for kind in (e.get(where) or {}).values()
                if isinstance(kind, dict) and "wrong_counts" in kind
            ),
            "value": {
                f"{name}.{where}.{k}": kind.get("wrong_counts")
                for name, e in engines.items()
                for where in ("queries", "http")
                for k, kind in (e.get(where) or {}).items()
                if isinstance(kind, dict) and "wrong_counts" in kind
            },
        },
    }
    if len(references) > 1:
        checks["engines_agree"] = {"ok": engines_agree(references), "value": sorted(references)}
    for engine in engines:
        for kind, goal in (
            ("device_7d_hourly", GOAL_DEVICE_P95_MS),
            ("fleet_24h_hourly", GOAL_FLEET_P95_MS),
        ):
            value = p95(engine, kind)
            checks[f"{engine}_{kind}_p95_at_goal"] = {
                "ok": value is not None and value <= goal,
                "value": value,
                "goal_ms": goal,
            }
    return checks


def engines_agree(references: dict[str, dict[str, list[SeriesPoint]]]) -> bool:
    """The fixed queries answer the same buckets, counts and (to rounding) values everywhere."""
    first, *others = references.values()
    for other in others:
        for key, points in first.items():
            theirs = other[key]
            if [(p.ts_us, p.count) for p in points] != [(p.ts_us, p.count) for p in theirs]:
                return False
            if any(
                not math.isclose(a.value, b.value, rel_tol=1e-9)
                for a, b in zip(points, theirs, strict=True)
            ):
                return False
    return True


# --- main ---------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.store",
        description="Store benchmark (load, then series query latency) on SQLite and "
        "PostgreSQL; writes bench/results/store.json.",
    )
    p.add_argument("--devices", type=int, default=GOAL_DEVICES, help="devices (default 1000)")
    p.add_argument(
        "--readings-per-device",
        type=int,
        default=GOAL_READINGS_PER_DEVICE,
        help="one a minute, ending now (default 10000, ~6.9 days)",
    )
    p.add_argument("--queries", type=int, default=GOAL_QUERIES, help="queries per round and kind")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds (medians reported)")
    p.add_argument("--batch", type=int, default=BATCH_MESSAGES, help="messages per write_batch")
    p.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="comma-separated: sqlite, postgresql (default both)",
    )
    p.add_argument("--no-http", action="store_true", help="skip the queries through fieldhub up")
    p.add_argument(
        "--neighbour",
        action="store_true",
        help="a process burns one core during the store queries (its CPU shows as others')",
    )
    p.add_argument(
        "--ingest",
        action="store_true",
        help="then stored msg/s of `fieldhub ingest --workers 1|2|3` on PostgreSQL (~6 min)",
    )
    p.add_argument("--ingest-only", action="store_true", help="only the --ingest part")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test the bench: 100 devices x 1,000 readings, 20 queries, 1 round",
    )
    p.add_argument(
        "--fieldhub",
        default=str(Path(sys.executable).parent / "fieldhub"),
        help="the fieldhub executable for the HTTP part (default: the venv's)",
    )
    p.add_argument("--output", type=Path, default=None, help="result file (default results/)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown or not args.engines:
        p.error(f"--engines: choose from {', '.join(ENGINES)} (got {unknown or 'none'})")
    if args.ingest_only:
        args.ingest, args.engines = True, []
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the store benchmark and write bench/results/store.json."""
    args = _parse_args(argv)
    bench = start_bench("store", "the store and its database")
    say(
        f"store bench: {args.devices:,} devices x {args.readings_per_device:,} readings, "
        f"{args.rounds} round(s) of {args.queries} queries, engines {', '.join(args.engines)}"
        f"{' (quick)' if args.quick else ''}; work dir {bench.workdir}"
    )
    errors: list[str] = []
    engines: dict[str, dict[str, Any]] = {}
    references: dict[str, dict[str, list[SeriesPoint]]] = {}
    postgres_config: dict[str, str] | None = None
    ingest: dict[str, Any] | None = None
    schedule = schedule_ending_now(args.devices, args.readings_per_device)
    try:
        with contextlib.ExitStack() as stack:
            pg = None
            if "postgresql" in args.engines or args.ingest:
                say("postgresql: starting a private cluster")
                pg = stack.enter_context(private_postgres(bench.workdir))
                postgres_config = postgres_settings(pg)
            for engine in args.engines:
                figures, reference = run_engine(engine, args, schedule, bench.workdir, pg)
                engines[engine] = figures
                if reference is not None:
                    references[engine] = reference
            if args.ingest:
                ingest = ingest_part(args, bench.workdir, pg)
    except KeyboardInterrupt:
        errors.append("interrupted")
        say("interrupted: writing what we have")
    except (OSError, RuntimeError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        say(f"error: {exc}")

    checks = checks_for(args, engines, references)
    ingest_errors = [
        f"ingest {n} worker(s) run {r['run']}: {err}"
        for n, figures in (ingest or {}).get("by_workers", {}).items()
        for r in figures["runs"]
        for err in r["errors"]
    ]
    if args.ingest:
        checks["ingest_runs_completed"] = {
            "ok": ingest is not None and not ingest_errors,
            "value": len(ingest_errors),
        }
    result: dict[str, Any] = {
        "bench": "store",
        "started_at": bench.started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "devices": args.devices,
            "readings_per_device": args.readings_per_device,
            "readings": schedule.readings,
            "metric": METRIC,
            "batch_messages": args.batch,
            "queries": args.queries,
            "rounds": args.rounds,
            "warmup_queries": WARMUP_QUERIES,
            "engines": args.engines,
            "http": not args.no_http,
            "quick": args.quick,
            "data_first": format_us(schedule.first_minute_us),
            "data_last_minute": format_us(
                schedule.first_minute_us + (schedule.minutes - 1) * MINUTE_US
            ),
            "postgres": postgres_config,
            "fieldhub_source": source_state(),
            "machine": {**machine_info(), "background_busy_percent": bench.background_percent},
        },
        "goals": {
            "device_7d_hourly_p95_ms": GOAL_DEVICE_P95_MS,
            "fleet_24h_hourly_p95_ms": GOAL_FLEET_P95_MS,
        },
        "summary": summary(engines),
        "checks": checks,
        "passed": all(c["ok"] for c in checks.values()),
        "engines": engines,
        "ingest_workers": ingest,
        "methods": METHODS,
        "notes": bench.notes + [f"{n}: {note}" for n, e in engines.items() for note in e["notes"]],
        "errors": errors
        + [f"{n}: {err}" for n, e in engines.items() for err in e["errors"]]
        + ingest_errors,
    }
    path = write_result("store", result, args.output)
    say(f"wrote {path}")
    print_summary(result)
    tidy_workdir(bench.workdir, keep=bool(result["errors"]))
    return 2 if result["errors"] else 0


def summary(engines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures a reader looks for first, per engine."""
    out: dict[str, Any] = {}
    for name, e in engines.items():
        row: dict[str, Any] = {"load_readings_per_s": e.get("load", {}).get("readings_per_s")}
        for where in ("queries", "http"):
            for kind, figures in (e.get(where) or {}).items():
                if isinstance(figures, dict) and "median" in figures:
                    prefix = "" if where == "queries" else "http_"
                    row[f"{prefix}{kind}_p50_ms"] = figures["median"]["p50_ms"]
                    row[f"{prefix}{kind}_p95_ms"] = figures["median"]["p95_ms"]
                    row[f"{prefix}{kind}_p99_ms"] = figures["median"]["p99_ms"]
        out[name] = row
    return out


def print_summary(result: dict[str, Any]) -> None:
    for engine, row in result["summary"].items():
        say(f"{engine}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    for n, figures in ((result["ingest_workers"] or {}).get("by_workers") or {}).items():
        say(
            f"ingest {n} worker(s): median {figures['median_stored_rate']} msg/s stored "
            f"(x{figures['vs_one_worker']} one worker's)"
        )
    for name, c in result["checks"].items():
        say(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {c['value']}")
    say(f"passed: {result['passed']}")
    for e in result["errors"]:
        say(f"error: {e.splitlines()[0]}")


if __name__ == "__main__":
    sys.exit(main())
