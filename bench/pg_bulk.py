"""PostgreSQL readings bulk insert: the store's unnest INSERT against COPY (+ ON CONFLICT).

The question (from the issue): "Bulk writes use COPY (asyncpg) or an equivalent measured to be as
fast." The PostgreSQL store writes a batch's readings with one
``INSERT ... SELECT * FROM unnest(arrays) ON CONFLICT DO NOTHING RETURNING ...``: ON CONFLICT
absorbs MQTT redeliveries, RETURNING hands the rollups only the rows really inserted. Plain COPY
can do neither, so the fair competitor is COPY into a temporary table followed by the same
INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING; plain COPY straight into ``readings`` is
the upper bound (no conflict handling at all). Run ``./scripts/bench pg_bulk`` (or ``--quick``
to smoke-test the benchmark itself); the result goes to ``bench/results/pg_bulk.json``.

1. A private PostgreSQL cluster (tests/support/postgres.py) with durability switched back on
   (fsync, synchronous_commit, full_page_writes: what a real server pays per commit), a fresh
   database, and the real schema made by opening the real store (``open_store(url).open()``).
2. Devices and metrics through ``Store.write_batch`` (one message of 4 readings per device), then
   ``--prefill`` readings by COPY so the primary key index is not tiny, VACUUM ANALYZE, CHECKPOINT.
3. ``--rounds`` rounds; in each, for every cell (batch size x case) the methods one after the
   other (a, b, c, a, b, c, ...), each writing ``--rows`` readings in batches, one transaction per
   batch, on its own asyncpg connection. Cases: ``fresh`` (no key stored yet) and ``dup50`` (half
   of each batch are keys already stored: redeliveries; method (c) cannot run it).
4. Per method and cell, the median over rounds of rows/s, and the ratios (a)/(b) and (a)/(c).

See bench/README.md ("pg_bulk") for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench.common import (
    REPO_ROOT,
    Sampler,
    descendants,
    machine_info,
    say,
    start_bench,
    write_result,
)
from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.protocol.timestamps import format_us
from fieldhub.store import WriteBatch, open_store

# --- what is measured ---------------------------------------------------------------------------

COLUMNS = ("device_id", "metric_id", "ts", "value", "received_at")
# (a) The store's statement, as src/fieldhub/store/postgres.py writes it.
UNNEST_SQL = (
    "INSERT INTO readings (device_id, metric_id, ts, value, received_at) "
    "SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::float8[], "
    "$5::bigint[]) ON CONFLICT DO NOTHING RETURNING device_id, metric_id, ts, value"
)
# (b) A temporary table per connection, emptied by every commit, COPYed into, then moved.
STAGE_TABLE = "readings_in"
STAGE_DDL = f"CREATE TEMP TABLE {STAGE_TABLE} (LIKE readings) ON COMMIT DELETE ROWS"
STAGE_SQL = (
    "INSERT INTO readings (device_id, metric_id, ts, value, received_at) "
    f"SELECT device_id, metric_id, ts, value, received_at FROM {STAGE_TABLE} "
    "ON CONFLICT DO NOTHING RETURNING device_id, metric_id, ts, value"
)

METHOD_NAMES = {
    "a": "unnest INSERT ... ON CONFLICT DO NOTHING RETURNING (the store's)",
    "b": "COPY into a temp table + INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING",
    "c": "plain COPY into readings (no conflict handling: upper bound, fresh keys only)",
}
CASES = {
    "fresh": "every key new (no conflict)",
    "dup50": "half of each batch are keys already stored (redeliveries), shuffled in",
}
METHODS_BY_CASE = {"fresh": ("a", "b", "c"), "dup50": ("a", "b")}

# --- the data -----------------------------------------------------------------------------------

DEVICES = 1_000
# The loadgen's telemetry: one message of four readings per device and step.
METRICS = ("temperature", "humidity", "pressure", "rssi")
DEVICE_PREFIX = "pgbulk-"
STEP_US = 10_000_000
# The readings start a day before now: inside the partitions the store creates (the previous
# month onwards), so rows land in monthly partitions, not the default one.
START_BEFORE_NOW_US = 24 * 3600 * 1_000_000
# Duplicates are drawn from the most recently stored keys: redeliveries are of recent messages.
DUP_WINDOW = 200_000
DUP_FRACTION = 0.5
PREFILL_COPY_ROWS = 50_000

# --- the run ------------------------------------------------------------------------------------

BATCH_SIZES = (1_000, 5_000)
DEFAULT_ROWS = 200_000
DEFAULT_ROUNDS = 5
DEFAULT_PREFILL = 1_000_000
# Batches of each method and cell before the rounds, not counted: statement preparation, the
# temp table's first use, asyncpg's COPY introspection query.
WARMUP_BATCHES = 3
# Above this share of one core taken by other processes during a measurement, a note.
OTHERS_CPU_WARN_PERCENT = 20.0
QUICK = {"rows": 10_000, "rounds": 2, "prefill": 20_000}

METHODS = {
    "rows_per_s": "rows handed to the method (duplicates included) / the sum over its batches "
    "of the time from BEGIN to the end of COMMIT (time.perf_counter around `async with "
    "conn.transaction()`); building the batch's Python lists/tuples is done before and not "
    "timed, asyncpg's encoding is. new_rows_per_s counts only the rows inserted",
    "median": "the median over rounds of each method's rows_per_s in a cell; ratio a_over_b = "
    "median(a) / median(b): above 1 the store's statement is faster",
    "connections": "one asyncpg connection per method (the temp table of (b) lives on its "
    "own), opened after the store created the schema; the store is closed during the timing",
    "order": "round-major: every round runs every cell, and in a cell the methods in turn "
    "(a, b, c), so a drift of the machine or the growing table spreads over all of them",
    "keys": "a stream of readings of 1,000 devices x 4 metrics, one message per device every "
    "10 s (each device at its own offset in the step), device after device as ingest batches "
    "them; every batch touches about min(batch, 4000) series' rightmost index pages",
    "duplicates": "dup50: half of a batch (rounded down) new keys from the stream, the other "
    "half sampled without replacement from the last 200,000 stored keys, with the stored "
    "values, shuffled together",
    "checks": "(a) and (b) must return exactly the new rows, (c)'s COPY must report every row; "
    "the table's final row count must equal the keys written",
    "cpu": "CPU time between the start and the end of a measurement: bench = this process, "
    "postgres = the cluster's processes; 100 = one core; machine_busy 100 = both cores; "
    "others = every other process, in % of one core",
}


# --- keys and batches ---------------------------------------------------------------------------


SERIES = DEVICES * len(METRICS)


def position(pos: int, base_us: int) -> tuple[int, int, int, float]:
    """(device index, metric index, ts, value) of stream position ``pos``."""
    step, series = divmod(pos, SERIES)
    device, metric = divmod(series, len(METRICS))
    ts = base_us + step * STEP_US + (device * 7_919_003) % STEP_US
    value = round(20.0 + (device % 50) / 10 + ((pos * 104_729) % 1000) / 1000, 3)
    return device, metric, ts, value


@dataclass(frozen=True, slots=True)
class Stream:
    """Readings by stream position: position p is device (p // 4) % 1000's metric p % 4 at step
    p // 4000. Every position is a distinct key."""

    device_ids: tuple[int, ...]
    metric_ids: tuple[int, ...]
    base_us: int

    def row(self, pos: int) -> tuple[int, int, int, float, int]:
        device, metric, ts, value = position(pos, self.base_us)
        return (self.device_ids[device], self.metric_ids[metric], ts, value, ts + 5_000)


class Feed:
    """Hands out batches: fresh positions from the head of the stream, duplicates from behind it.

    The head advances when a batch is built; every method writes every batch it is given, so all
    positions below the head are stored once the measurement that got them committed.
    """

    def __init__(self, stream: Stream, head: int, seed: str) -> None:
        self.stream = stream
        self.head = head
        self.rng = random.Random(seed)

    def batch(self, size: int, case: str) -> tuple[list[tuple[int, int, int, float, int]], int]:
        """(rows, how many of them are new keys)."""
        new = size if case == "fresh" else size - int(size * DUP_FRACTION)
        positions = list(range(self.head, self.head + new))
        if new < size:
            low = max(0, self.head - DUP_WINDOW)
            positions += self.rng.sample(range(low, self.head), size - new)
            self.rng.shuffle(positions)
        self.head += new
        return [self.stream.row(p) for p in positions], new


# --- the methods --------------------------------------------------------------------------------

Rows = list[tuple[int, int, int, float, int]]


async def unnest_insert(conn: asyncpg.Connection, rows: Rows, columns: list[list[Any]]) -> int:
    inserted = await conn.fetch(UNNEST_SQL, *columns)
    return len(inserted)


async def copy_then_insert(conn: asyncpg.Connection, rows: Rows, columns: list[list[Any]]) -> int:
    await conn.copy_records_to_table(STAGE_TABLE, records=rows, columns=COLUMNS)
    inserted = await conn.fetch(STAGE_SQL)
    return len(inserted)


async def plain_copy(conn: asyncpg.Connection, rows: Rows, columns: list[list[Any]]) -> int:
    status = await conn.copy_records_to_table("readings", records=rows, columns=COLUMNS)
    return int(status.split()[-1])  # "COPY 5000"


Method = Callable[[asyncpg.Connection, Rows, list[list[Any]]], Awaitable[int]]
RUN: dict[str, Method] = {"a": unnest_insert, "b": copy_then_insert, "c": plain_copy}


@dataclass
class Prepared:
    rows: Rows
    columns: list[list[Any]]
    new: int


def build(feed: Feed, total: int, size: int, case: str, method: str) -> list[Prepared]:
    """The batches of one measurement, in the form the method takes (not timed)."""
    out = []
    for start in range(0, total, size):
        rows, new = feed.batch(min(size, total - start), case)
        # (a) binds five arrays, (b) and (c) stream records: each gets only what it sends.
        columns = [list(c) for c in zip(*rows, strict=True)] if method == "a" else []
        out.append(Prepared(rows if method != "a" else [], columns, new))
    return out


# --- CPU ----------------------------------------------------------------------------------------


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


class CpuWatch:
    """CPU per process group over one measurement: a sample at its start and one at its end."""

    def __init__(self, data_dir: Path) -> None:
        self.sampler = Sampler()
        self.sampler.add("bench", lambda: [psutil.Process()])
        self.sampler.add("postgres", postgres_processes(data_dir))

    def start(self) -> float:
        self.sampler.sample()
        return time.time()

    def stop(self, since: float) -> dict[str, Any]:
        self.sampler.sample()
        s = self.sampler.summary(since, time.time() + 1)
        return {
            "bench_percent": s["bench"]["cpu_mean_percent"],
            "postgres_percent": s["postgres"]["cpu_mean_percent"],
            "machine_busy_percent": s["machine_busy_mean_percent"],
            "others_percent": s["others_cpu_mean_percent"],
        }


# --- measuring ----------------------------------------------------------------------------------


async def measure(
    conn: asyncpg.Connection, method: str, batches: Sequence[Prepared], cpu: CpuWatch | None
) -> dict[str, Any]:
    """Write the batches, one transaction each; the measurement's figures."""
    run = RUN[method]
    times: list[float] = []
    rows = new = inserted = 0
    since = cpu.start() if cpu is not None else 0.0
    for b in batches:
        n = len(b.rows) or len(b.columns[0])
        t0 = time.perf_counter()
        async with conn.transaction():
            got = await run(conn, b.rows, b.columns)
        times.append(time.perf_counter() - t0)
        rows += n
        new += b.new
        inserted += got
    total = sum(times)
    ordered = sorted(times)
    return {
        "rows": rows,
        "new_rows": new,
        "inserted": inserted,
        "batches": len(batches),
        "seconds": round(total, 3),
        "rows_per_s": round(rows / total),
        "new_rows_per_s": round(new / total),
        "batch_ms_p50": round(1000 * statistics.median(ordered), 2),
        "batch_ms_max": round(1000 * ordered[-1], 2),
        "cpu": cpu.stop(since) if cpu is not None else None,
    }


def cells() -> Iterator[tuple[str, int, str]]:
    for case in CASES:
        for size in BATCH_SIZES:
            yield f"{case}_{size}", size, case


# --- setup --------------------------------------------------------------------------------------


@contextlib.contextmanager
def private_postgres(durable: bool) -> Iterator[Any]:
    """A private cluster (tests/support/postgres.py); durable like a real server unless asked."""
    # The tests' cluster helper is the one way this repository starts PostgreSQL; it lives under
    # tests/ (importable as `support`), not in the installed package.
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    postgres = importlib.import_module("support.postgres")
    server = postgres.PostgresServer().start()
    try:
        if durable:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                server.psql(f"ALTER SYSTEM SET {setting} = on")  # one per call: no transaction
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
        "wal_level",
        "shared_buffers",
        "temp_buffers",
        "max_wal_size",
        "autovacuum",
    )
    return {name: server.psql(f"SHOW {name}").strip() for name in names}


async def seed(url: str, base_us: int) -> Stream:
    """The real schema (the store migrates it); devices, metrics and the stream's first step
    (positions [0, 4000): one message of 4 readings per device) through write_batch."""
    store = open_store(url, stale_after_s={"native": 120})
    await store.open()
    try:
        messages: dict[int, list[Reading]] = {}
        for pos in range(SERIES):
            device, metric, ts, value = position(pos, base_us)
            messages.setdefault(device, []).append(Reading(METRICS[metric], ts, value))
        decoded = [
            Decoded(
                device_id=f"{DEVICE_PREFIX}{d:04d}",
                profile="native",
                channel="telemetry",
                received_us=readings[0].ts_us + 5_000,
                readings=readings,
                device_time=True,
            )
            for d, readings in messages.items()
        ]
        result = await store.write_batch(WriteBatch(decoded=decoded))
        if result.readings_written != SERIES:
            raise RuntimeError(f"seeding wrote {result.readings_written} readings, not {SERIES}")
    finally:
        await store.close()
    conn = await asyncpg.connect(url)
    try:
        devices = {r["uid"]: r["id"] for r in await conn.fetch("SELECT id, uid FROM devices")}
        metrics = {r["name"]: r["id"] for r in await conn.fetch("SELECT id, name FROM metrics")}
    finally:
        await conn.close()
    return Stream(
        tuple(devices[f"{DEVICE_PREFIX}{d:04d}"] for d in range(DEVICES)),
        tuple(metrics[m] for m in METRICS),
        base_us,
    )


async def prefill(url: str, stream: Stream, rows: int) -> float:
    """Positions [4000, rows) by COPY (write_batch wrote the first 4000), then VACUUM ANALYZE
    and CHECKPOINT; the seconds it took."""
    t0 = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        next_note = t0 + 5
        for start in range(SERIES, rows, PREFILL_COPY_ROWS):
            records = [stream.row(p) for p in range(start, min(rows, start + PREFILL_COPY_ROWS))]
            await conn.copy_records_to_table("readings", records=records, columns=COLUMNS)
            if time.perf_counter() >= next_note:
                say(f"  prefill: {start + len(records):,} / {rows:,} readings")
                next_note += 5
        say("  prefill: VACUUM ANALYZE, CHECKPOINT")
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return time.perf_counter() - t0


async def connect(url: str, method: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    if method == "b":
        await conn.execute(STAGE_DDL)
    return conn


# --- the bench ----------------------------------------------------------------------------------


async def run_bench(
    url: str, args: argparse.Namespace, data_dir: Path, figures: dict[str, Any]
) -> None:
    now = time.time_ns() // 1_000
    base_us = now - START_BEFORE_NOW_US
    say("seeding devices and metrics through the store (open_store(url).open(), write_batch)")
    stream = await seed(url, base_us)
    figures["data_first"] = format_us(base_us)
    say(f"prefilling {args.prefill:,} readings by COPY")
    figures["prefill_s"] = round(await prefill(url, stream, args.prefill), 1)
    feed = Feed(stream, args.prefill, "pg_bulk")
    conns = {m: await connect(url, m) for m in RUN}
    try:
        say(f"warm-up: {WARMUP_BATCHES} batches of each method and cell (not counted)")
        for _, size, case in cells():
            for method in METHODS_BY_CASE[case]:
                batches = build(feed, WARMUP_BATCHES * size, size, case, method)
                await measure(conns[method], method, batches, None)
        cpu = CpuWatch(data_dir)
        results: dict[str, Any] = figures["cells"]
        for k in range(args.rounds):
            for cell, size, case in cells():
                for method in METHODS_BY_CASE[case]:
                    batches = build(feed, args.rows, size, case, method)
                    # A full collection now rather than one triggered inside the timing.
                    gc.collect()
                    got = await measure(conns[method], method, batches, cpu)
                    results[cell]["rounds"][method].append(got)
                    check(got, method, cell, figures["errors"])
                    c = got["cpu"]
                    say(
                        f"round {k + 1}/{args.rounds} {cell:>11} ({method}): "
                        f"{got['rows']:,} rows in {got['seconds']:.2f} s = "
                        f"{got['rows_per_s']:>7,} rows/s (batch p50 {got['batch_ms_p50']} ms); "
                        f"postgres {c['postgres_percent']}%, bench {c['bench_percent']}%, "
                        f"others {c['others_percent']}% cpu"
                    )
        stored = await conns["a"].fetchval("SELECT count(*) FROM readings")
        figures["rows_stored"] = stored
        if stored != feed.head:
            figures["errors"].append(f"readings holds {stored} rows, {feed.head} keys written")
    finally:
        for conn in conns.values():
            await conn.close()


def check(got: dict[str, Any], method: str, cell: str, errors: list[str]) -> None:
    want = got["rows"] if method == "c" else got["new_rows"]
    if got["inserted"] != want:
        errors.append(f"{cell} ({method}): {got['inserted']} rows inserted, {want} expected")


def summarise(cells_figures: dict[str, Any]) -> dict[str, Any]:
    """Median rows/s per method and cell, and the ratios."""
    out: dict[str, Any] = {}
    for cell, c in cells_figures.items():
        medians = {
            m: round(statistics.median(r["rows_per_s"] for r in rounds))
            for m, rounds in c["rounds"].items()
            if rounds
        }
        row: dict[str, Any] = {f"{m}_rows_per_s": v for m, v in medians.items()}
        if "a" in medians and "b" in medians:
            row["a_over_b"] = round(medians["a"] / medians["b"], 3)
        if "a" in medians and "c" in medians:
            row["a_over_c"] = round(medians["a"] / medians["c"], 3)
        for m, rounds in c["rounds"].items():
            if rounds:
                values = [r["rows_per_s"] for r in rounds]
                row[f"{m}_min_max"] = [min(values), max(values)]
        c["median"] = dict(medians)
        out[cell] = row
    return out


# --- main ---------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.pg_bulk",
        description="PostgreSQL readings bulk insert: the store's unnest INSERT ... ON CONFLICT "
        "against COPY into a temp table + INSERT ... ON CONFLICT and plain COPY; writes "
        "bench/results/pg_bulk.json.",
    )
    p.add_argument(
        "--rows", type=int, default=DEFAULT_ROWS, help="rows per measurement (default 200000)"
    )
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds (default 5)")
    p.add_argument(
        "--prefill",
        type=int,
        default=DEFAULT_PREFILL,
        help="readings stored before the rounds (default 1000000)",
    )
    p.add_argument(
        "--no-durability",
        action="store_true",
        help="keep the test cluster's fsync/synchronous_commit/full_page_writes off",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test the bench: 10,000 rows per measurement, 2 rounds, 20,000 prefilled",
    )
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.rows < max(BATCH_SIZES) or args.rounds < 1 or args.prefill < SERIES:
        p.error(f"--rows must be >= {max(BATCH_SIZES)}, --rounds >= 1, --prefill >= {SERIES}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the PostgreSQL bulk insert benchmark and write bench/results/pg_bulk.json."""
    args = _parse_args(argv)
    bench = start_bench("pg_bulk", "PostgreSQL and this bench")
    say(
        f"pg_bulk bench: {args.rows:,} rows per measurement, batches {BATCH_SIZES}, "
        f"{args.rounds} round(s), {args.prefill:,} prefilled"
        f"{' (quick)' if args.quick else ''}; the machine is shared (2 cores): background "
        f"{bench.background_percent:.0f}% busy"
    )
    figures: dict[str, Any] = {
        "cells": {
            cell: {
                "batch_rows": size,
                "case": case,
                "rounds": {m: [] for m in METHODS_BY_CASE[case]},
            }
            for cell, size, case in cells()
        },
        "errors": [],
    }
    postgres_config: dict[str, str] | None = None
    try:
        with private_postgres(durable=not args.no_durability) as pg:
            postgres_config = postgres_settings(pg)
            say(f"postgresql {postgres_config['server_version']} on port {pg.port}")
            url = pg.new_database("pg_bulk")
            asyncio.run(run_bench(url, args, pg.data_dir, figures))
    except KeyboardInterrupt:
        figures["errors"].append("interrupted")
        say("interrupted: writing what we have")
    except (OSError, RuntimeError, asyncpg.PostgresError) as exc:
        figures["errors"].append(f"{type(exc).__name__}: {exc}")
        say(f"error: {exc}")

    summary = summarise(figures["cells"])
    notes = list(bench.notes)
    notes.append(
        "the machine is shared (2 cores): PostgreSQL, this bench and any other tenant compete; "
        "cells' cpu.others_percent says how much others took during each measurement"
    )
    for cell, c in figures["cells"].items():
        for m, rounds in c["rounds"].items():
            for k, r in enumerate(rounds):
                others = (r.get("cpu") or {}).get("others_percent")
                if others is not None and others > OTHERS_CPU_WARN_PERCENT:
                    notes.append(
                        f"{cell} ({m}) round {k + 1}: other processes used {others}% of a core"
                    )
    result: dict[str, Any] = {
        "bench": "pg_bulk",
        "started_at": bench.started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "rows_per_measurement": args.rows,
            "rounds": args.rounds,
            "batch_sizes": list(BATCH_SIZES),
            "prefill_rows": args.prefill,
            "warmup_batches": WARMUP_BATCHES,
            "devices": DEVICES,
            "metrics": list(METRICS),
            "dup_fraction": DUP_FRACTION,
            "dup_window": DUP_WINDOW,
            "durable": not args.no_durability,
            "quick": args.quick,
            "asyncpg": asyncpg.__version__,
            "postgres": postgres_config,
            "machine": {**machine_info(), "background_busy_percent": bench.background_percent},
        },
        "statements": {
            "a": UNNEST_SQL,
            "b": [STAGE_DDL, "COPY ... FROM STDIN (FORMAT binary)", STAGE_SQL],
            "c": "COPY readings (...) FROM STDIN (FORMAT binary)",
        },
        "method_names": METHOD_NAMES,
        "cases": CASES,
        "summary": summary,
        "data_first": figures.get("data_first"),
        "prefill_s": figures.get("prefill_s"),
        "rows_stored": figures.get("rows_stored"),
        "cells": figures["cells"],
        "methods": METHODS,
        "notes": notes,
        "errors": figures["errors"],
    }
    path = write_result("pg_bulk", result)
    say(f"wrote {path}")
    for cell, row in summary.items():
        say(f"{cell}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    for e in result["errors"]:
        say(f"error: {e.splitlines()[0]}")
    return 2 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
