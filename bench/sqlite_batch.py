"""What one SQLite batch costs the writer, by batch size and by statement.

Ingest's SQLite writer commits whatever arrived while the previous commit ran, so its batch size
follows the load: 200-1,000 messages at 10,000 msg/s, up to BATCH_MAX_MESSAGES when it falls
behind. This bench writes the same messages through the real store (`SqliteStore.write_batch`,
fieldhub's write script, one transaction per batch, the background checkpointer running) in
batches of each size, and times every statement the script runs (the engine's `_execute`,
wrapped in this process only), classed by what it writes:

- `stage`: the batch's readings into the staging table;
- `insert`: the staging table into `readings`;
- `rollups`: the upserts of the minute and hour rollups;
- `other_sql`: everything else (last seen, the staging table's emptying, ...);
- `rest`: the batch's wall time minus those: BEGIN and COMMIT (the WAL writes of every dirty
  page), the script's Python (`plan_rows`), the hand-off to the writer thread.

The messages: `--devices` devices (default 1,000) sending 4 readings each, in turn, 100 us apart
(10,000 msg/s). First the database is grown to `--grow` messages in large batches (so each
series already fills B-tree leaves of its own, as in a running installation), then each batch
size writes `--messages` messages; sizes are interleaved over `--rounds` rounds on one database.
Result: `bench/results/sqlite_batch.json`, per size the medians over rounds, in us a message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import git, machine_info, say, start_bench, write_result
from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.store import WriteBatch, open_store
from fieldhub.store import sqlite as sqlite_engine
from fieldhub.store.ops import Bulk, Count, Op

NAME = "sqlite_batch"
METRICS = ("temperature", "humidity", "rssi", "seq")
T0_US = 1_764_000_000_000_000
STEP_US = 100  # 10,000 msg/s
SIZES = (500, 2_000, 10_000)
GROW_BATCH = 10_000


def classify(op: Op) -> str:
    """Which part of a batch's work `op` is (see the module docstring)."""
    if isinstance(op, Bulk) and "staging_readings" in op.head:
        return "stage"
    if isinstance(op, Count) and op.sql.startswith("INSERT INTO readings"):
        return "insert"
    if isinstance(op, Count) and op.sql.startswith("INSERT INTO rollup_"):
        return "rollups"
    return "other_sql"


class Timings:
    """Seconds spent per class of statement, while `active`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.active = False

    def wrap(self, execute: Callable[..., Any]) -> Callable[..., Any]:
        def timed(conn: Any, op: Op) -> Any:
            if not self.active:
                return execute(conn, op)
            started = time.perf_counter()
            try:
                return execute(conn, op)
            finally:
                self.seconds[classify(op)] += time.perf_counter() - started

        return timed


class Messages:
    """The fleet's messages in order: device i of n sends at T0 + k * STEP_US."""

    def __init__(self, devices: int) -> None:
        self.devices = devices
        self.sent = 0

    def batch(self, size: int) -> WriteBatch:
        decoded = []
        for _ in range(size):
            k = self.sent
            self.sent += 1
            ts = T0_US + k * STEP_US
            value = float(k % 997)
            decoded.append(
                Decoded(
                    device_id=f"bench-{k % self.devices:04d}",
                    profile="native",
                    channel="telemetry",
                    received_us=ts,
                    readings=[Reading(m, ts, value) for m in METRICS],
                    device_time=True,
                )
            )
        return WriteBatch(decoded=decoded)


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    timings = Timings()
    original = sqlite_engine._execute
    sqlite_engine._execute = timings.wrap(original)  # this process only: a bench probe
    store = open_store(f"sqlite:///{workdir}/batch.db")
    await store.open()
    messages = Messages(args.devices)
    try:
        grown = 0
        while grown < args.grow:
            await store.write_batch(messages.batch(GROW_BATCH))
            grown += GROW_BATCH
            if grown % 200_000 == 0:
                say(f"  grown to {grown:,} messages ({grown * len(METRICS):,} readings)")
        rounds: dict[int, list[dict[str, float]]] = {size: [] for size in args.sizes}
        for round_no in range(1, args.rounds + 1):
            for size in args.sizes:
                timings.seconds.clear()
                timings.active = True
                written = 0
                wall = 0.0
                while written < args.messages:
                    batch = messages.batch(size)
                    started = time.perf_counter()
                    await store.write_batch(batch)
                    wall += time.perf_counter() - started
                    written += size
                timings.active = False
                parts = {k: 1e6 * v / written for k, v in timings.seconds.items()}
                parts["rest"] = 1e6 * wall / written - sum(parts.values())
                parts["all"] = 1e6 * wall / written
                rounds[size].append(parts)
                say(
                    f"  round {round_no}/{args.rounds}, batch {size:>6,}: "
                    + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
                    + " us a message"
                )
    finally:
        sqlite_engine._execute = original
        await store.close()
    keys = ("stage", "insert", "rollups", "other_sql", "rest", "all")
    return {
        str(size): {
            "median_us_per_message": {
                k: round(statistics.median(r.get(k, 0.0) for r in runs), 2) for k in keys
            },
            "runs": runs,
        }
        for size, runs in rounds.items()
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.sqlite_batch",
        description="What a SQLite batch costs the writer, by batch size and statement; writes "
        "bench/results/sqlite_batch.json.",
    )
    p.add_argument("--devices", type=int, default=1_000)
    p.add_argument("--grow", type=int, default=600_000, help="messages written before measuring")
    p.add_argument("--messages", type=int, default=100_000, help="messages per size and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke-test: 100 devices, small runs")
    args = p.parse_args(argv)
    args.sizes = SIZES
    if args.quick:
        args.devices, args.grow, args.messages, args.rounds = 100, 20_000, 20_000, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    start = start_bench(NAME, "nothing: one process writes")
    say(
        f"{NAME}: {args.devices} devices x 4 readings, grown to {args.grow:,} messages, then "
        f"{args.messages:,} messages per batch size {list(args.sizes)} x {args.rounds} round(s)"
    )
    try:
        sizes = asyncio.run(measure(args, start.workdir))
    finally:
        shutil.rmtree(start.workdir, ignore_errors=True)
    result = {
        "bench": NAME,
        "started_at": start.started.isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "config": {**vars(args), "sizes": list(args.sizes), "machine": machine_info()},
        "background_busy_percent": round(start.background_percent, 1),
        "load_average_end": os.getloadavg(),
        "notes": start.notes,
        "by_batch_size": sizes,
    }
    say(f"wrote {write_result(NAME, result)}")
    for size, figures in sizes.items():
        say(f"batch {int(size):>6,}: {figures['median_us_per_message']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
