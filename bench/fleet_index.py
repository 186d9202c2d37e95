"""Does an index led by (metric_id, bucket) on the rollup tables speed up the fleet query on
PostgreSQL? An A/B on the same data in one run.

The fleet's 24-hour hourly series (`Store.query_fleet_series`, every device reporting a metric)
reads hour rollups for the whole hours, minute rollups and raw readings for the ragged edges,
device by device along the primary key (device_id, metric_id, bucket). An index led by metric
and bucket would let PostgreSQL read one range instead of a seek per device.

1. A private PostgreSQL cluster (tests/support/postgres.py, via bench.pg_bulk's helper), the real
   schema (`open_store(url).open()`), 1,000 devices with one metric created through
   `Store.write_batch`.
2. Data shaped like `./scripts/bench store`'s: one reading a minute per device for 10,000
   minutes, as minute rollups (filled by SQL), hour rollups made from them, and the last 1,500
   minutes as raw readings; VACUUM ANALYZE.
3. `--rounds` rounds of: `--queries` fleet queries (end = now, start = 24 h before, hourly, avg)
   without the index, then CREATE INDEX on both rollup tables + ANALYZE, the same queries,
   DROP INDEX. Wall time of each awaited store call; p50/p95 per round; medians over rounds.
4. `--neighbour` burns one core with a busy process during the queries (the issue's "a
   neighbour on one core").

Run `./scripts/bench fleet_index [--neighbour]`; the result is bench/results/fleet_index.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import asyncpg

from bench.common import busy_neighbour, machine_info, say, start_bench, write_result
from bench.pg_bulk import private_postgres
from fieldhub.protocol.messages import Decoded, Reading
from fieldhub.store import WriteBatch, open_store
from fieldhub.store.base import Store

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
DEVICES = 1_000
MINUTES = 10_000
RAW_MINUTES = 1_500
METRIC = "temperature"
INDEXES = (
    "CREATE INDEX rollup_minute_metric_bucket ON rollup_minute (metric_id, bucket); "
    "CREATE INDEX rollup_hour_metric_bucket ON rollup_hour (metric_id, bucket); ANALYZE"
)
DROP = "DROP INDEX rollup_minute_metric_bucket; DROP INDEX rollup_hour_metric_bucket; ANALYZE"


async def fill(store: Store, url: str, now_us: int) -> float:
    """The devices through the store, then the rollups and raw readings by SQL; seconds."""
    end = now_us - now_us % MINUTE_US
    start = end - MINUTES * MINUTE_US
    decoded = [
        Decoded(f"dev-{i:04d}", "native", "telemetry", now_us, [Reading(METRIC, start, 20.0)])
        for i in range(DEVICES)
    ]
    await store.write_batch(WriteBatch(decoded=decoded))
    t = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        minute = f"{start} + g * {MINUTE_US}"
        await conn.execute(
            f"INSERT INTO rollup_minute SELECT d.id, m.id, {minute}, 1, 20, 20, 20, {minute}, 20, "
            f"{minute}, 20 FROM devices d, metrics m, generate_series(1::bigint, "
            f"{MINUTES - 1}::bigint) g WHERE m.name = '{METRIC}' ON CONFLICT DO NOTHING"
        )
        await conn.execute(
            f"INSERT INTO rollup_hour SELECT device_id, metric_id, bucket - bucket % {HOUR_US}, "
            "count(*), sum(total), min(lo), max(hi), min(first_ts), 20, max(last_ts), 20 "
            "FROM rollup_minute GROUP BY 1, 2, 3 ON CONFLICT DO NOTHING"
        )
        raw = f"{end} - g * {MINUTE_US}"
        await conn.execute(
            f"INSERT INTO readings SELECT d.id, m.id, {raw}, 20, {raw} FROM devices d, "
            f"metrics m, generate_series(1::bigint, {RAW_MINUTES}::bigint) g "
            f"WHERE m.name = '{METRIC}' ON CONFLICT DO NOTHING"
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - t


async def timed_queries(store: Store, n: int) -> dict[str, float]:
    """`n` fleet queries; p50/p95 in ms (nearest rank)."""
    times = []
    for _ in range(n):
        end = time.time_ns() // 1_000
        t = time.perf_counter()
        points = await store.query_fleet_series(
            METRIC, device_ids=None, start_us=end - DAY_US, end_us=end, interval_us=HOUR_US,
            agg="avg",
        )  # fmt: skip
        times.append((time.perf_counter() - t) * 1e3)
        if not points:
            raise RuntimeError("the fleet query answered nothing")
    times.sort()
    return {
        "p50_ms": round(times[len(times) // 2], 2),
        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 2),
    }


async def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(url, stale_after_s={})
    await store.open()
    rounds: list[dict[str, Any]] = []
    try:
        filled_s = await fill(store, url, time.time_ns() // 1_000)
        say(f"filled in {filled_s:.1f} s")
        conn = await asyncpg.connect(url)
        try:
            with busy_neighbour(args.neighbour):
                for k in range(args.rounds):
                    without = await timed_queries(store, args.queries)
                    await conn.execute(INDEXES)
                    with_index = await timed_queries(store, args.queries)
                    await conn.execute(DROP)
                    rounds.append({"without": without, "with_index": with_index})
                    say(f"round {k + 1}: without {without}, with the index {with_index}")
        finally:
            await conn.close()
    finally:
        await store.close()
    median = {
        side: {key: statistics.median(r[side][key] for r in rounds) for key in ("p50_ms", "p95_ms")}
        for side in ("without", "with_index")
    }
    return {"filled_s": round(filled_s, 1), "rounds": rounds, "median": median}


def main(argv: list[str] | None = None) -> int:
    """Run the A/B and write bench/results/fleet_index.json."""
    p = argparse.ArgumentParser(prog="./scripts/bench fleet_index", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--queries", type=int, default=60, help="fleet queries per side and round")
    p.add_argument("--neighbour", action="store_true", help="burn one core during the queries")
    args = p.parse_args(argv)
    bench = start_bench("fleet_index", "PostgreSQL and this bench")
    loadavg_before = list(os.getloadavg())
    with private_postgres(durable=True) as pg:
        figures = asyncio.run(run(pg.new_database("fleet_index"), args))
    result = {
        "bench": "fleet_index",
        "started_at": bench.started.isoformat(),
        "config": {**vars(args), "devices": DEVICES, "minutes": MINUTES},
        "machine": machine_info(),
        "background_busy_percent": bench.background_percent,
        "load_average": {"before": loadavg_before, "after": list(os.getloadavg())},
        **figures,
        "notes": bench.notes,
    }
    say(f"medians: {figures['median']}; wrote {write_result('fleet_index', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
