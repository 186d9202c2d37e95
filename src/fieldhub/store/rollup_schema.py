"""The rollup tables and their backfill, one text for both engines' migrations.

Only the column types and SQLite's WITHOUT ROWID differ; the backfill (rollups of the readings an
upgraded installation already holds) is the same SQL on both.
"""

from __future__ import annotations

from fieldhub.store.rollups import HOUR_US, MINUTE_US


def _table(name: str, *, ids: str, count: str, real: str, suffix: str) -> str:
    return f"""
        CREATE TABLE {name} (
            device_id {ids} NOT NULL,
            metric_id INTEGER NOT NULL,
            bucket {ids} NOT NULL,
            n {count} NOT NULL,
            total {real} NOT NULL,
            lo {real} NOT NULL,
            hi {real} NOT NULL,
            first_ts {ids} NOT NULL,
            first_value {real} NOT NULL,
            last_ts {ids} NOT NULL,
            last_value {real} NOT NULL,
            PRIMARY KEY (device_id, metric_id, bucket)
        ){suffix};"""


def rollup_migration(*, ids: str, count: str, real: str, suffix: str = "") -> str:
    """CREATE both rollup tables with these column types, then fill them from `readings`."""
    m, h = MINUTE_US, HOUR_US
    tables = "".join(
        _table(name, ids=ids, count=count, real=real, suffix=suffix)
        for name in ("rollup_minute", "rollup_hour")
    )
    return f"""{tables}
        -- Rollups of the readings already stored (an existing installation upgrading).
        INSERT INTO rollup_minute
        SELECT q.device_id, q.metric_id, q.b, q.n, q.total, q.lo, q.hi, q.first_ts,
            (SELECT x.value FROM readings x WHERE x.device_id = q.device_id
                AND x.metric_id = q.metric_id AND x.ts = q.first_ts),
            q.last_ts,
            (SELECT x.value FROM readings x WHERE x.device_id = q.device_id
                AND x.metric_id = q.metric_id AND x.ts = q.last_ts)
        FROM (SELECT device_id, metric_id, ts - ts % {m} AS b, count(*) AS n,
                sum(value) AS total, min(value) AS lo, max(value) AS hi, min(ts) AS first_ts,
                max(ts) AS last_ts
            FROM readings GROUP BY device_id, metric_id, b) q;
        INSERT INTO rollup_hour
        SELECT q.device_id, q.metric_id, q.b, q.n, q.total, q.lo, q.hi, q.first_ts,
            (SELECT x.first_value FROM rollup_minute x WHERE x.device_id = q.device_id
                AND x.metric_id = q.metric_id AND x.bucket = q.first_ts - q.first_ts % {m}),
            q.last_ts,
            (SELECT x.last_value FROM rollup_minute x WHERE x.device_id = q.device_id
                AND x.metric_id = q.metric_id AND x.bucket = q.last_ts - q.last_ts % {m})
        FROM (SELECT device_id, metric_id, bucket - bucket % {h} AS b, sum(n) AS n,
                sum(total) AS total, min(lo) AS lo, max(hi) AS hi, min(first_ts) AS first_ts,
                max(last_ts) AS last_ts
            FROM rollup_minute GROUP BY device_id, metric_id, b) q;
        """
