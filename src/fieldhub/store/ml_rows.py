"""The window-control loop's tables in the store, written once for every engine (issue 17): one
row per decision (`ml_decisions`) and per device the loop's guard configuration and state
(`ml_devices`), as scripts (ops.py).

What the JSON values mean (features, verdicts, fieldhub.ml.guards' GuardConfig and GuardState)
is fieldhub.ml's business: here they are JSON values. A decision's `seq` is drawn by the
database (ascending, never reused), so it is the list's cursor; its `decision_id` is unique, so
a decision recorded twice is a StoreError, not two rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fieldhub.store.dialect import Dialect, Params
from fieldhub.store.ops import Count, Query, Row, Script
from fieldhub.store.types import ML_OUTCOMES, MlDecisionRow, MlDecisionStats, MlDeviceRow

# -- decisions ---------------------------------------------------------------------------------

DECISION_COLUMNS = (
    "seq, decision_id, device_uid, at_us, trigger, reason, inputs, zscores, model_name, "
    "model_version, position, confidence, verdicts, outcome, target_position, command_id, "
    "latency_us, request, committed_us"
)
# The confidence histogram's buckets: [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]. A CASE ladder, not
# floor(confidence * 10): SQLite has no floor() unless built with its math functions, and
# PostgreSQL's CAST to an integer rounds where SQLite's truncates.
CONFIDENCE_BUCKETS = 10
CONFIDENCE_BUCKET = (
    "CASE WHEN confidence IS NULL THEN NULL "
    + " ".join(f"WHEN confidence < 0.{i + 1} THEN {i}" for i in range(CONFIDENCE_BUCKETS - 1))
    + f" ELSE {CONFIDENCE_BUCKETS - 1} END"
)
LATENCY_PERCENTILES = (50, 99)


def _json_or_null(d: Dialect, value: object | None) -> object | None:
    # SQL NULL for an absent value (SQLite's json_param would store the text `null`).
    return None if value is None else d.json_param(value)


def _loads_or_none(d: Dialect, value: object | None) -> Any:
    return None if value is None else d.json_loads(value)


def _decision(row: Row, d: Dialect) -> MlDecisionRow:
    return MlDecisionRow(
        seq=row[0],
        decision_id=row[1],
        device_id=row[2],
        at_us=row[3],
        trigger=row[4],
        reason=row[5],
        inputs=d.json_loads(row[6]),
        zscores=_loads_or_none(d, row[7]),
        model_name=row[8],
        model_version=row[9],
        position=row[10],
        confidence=row[11],
        verdicts=d.json_loads(row[12]),
        outcome=row[13],
        target_position=row[14],
        command_id=row[15],
        latency_us=row[16],
        request=_loads_or_none(d, row[17]),
        committed_us=row[18],
    )


def append_ml_decision(d: Dialect, row: MlDecisionRow) -> Script[int]:
    """Append one decision; returns its seq (what `row.seq` says is ignored). A decision id
    that is already stored is a StoreError (a UUID never repeats: a bug, not a retry)."""
    p = Params(d)
    ((seq,),) = yield Query(
        "INSERT INTO ml_decisions (decision_id, device_uid, at_us, trigger, reason, inputs, "
        "zscores, model_name, model_version, position, confidence, verdicts, outcome, "
        "target_position, command_id, latency_us, request, committed_us) VALUES ("
        f"{p(row.decision_id)}, {p(row.device_id)}, {p(row.at_us)}, {p(row.trigger)}, "
        f"{p(row.reason)}, {p(d.json_param(row.inputs))}, {p(_json_or_null(d, row.zscores))}, "
        f"{p(row.model_name)}, {p(row.model_version)}, {p(row.position)}, "
        f"{p(row.confidence)}, {p(d.json_param(row.verdicts))}, {p(row.outcome)}, "
        f"{p(row.target_position)}, {p(row.command_id)}, {p(row.latency_us)}, "
        f"{p(_json_or_null(d, row.request))}, {p(row.committed_us)}) RETURNING seq",
        p.values,
    )
    return int(seq)


def append_ml_decisions(d: Dialect, rows: Sequence[MlDecisionRow]) -> Script[list[int]]:
    """Append several decisions in order (the caller's one transaction); returns their seqs."""
    seqs: list[int] = []
    for row in rows:
        seqs.append((yield from append_ml_decision(d, row)))
    return seqs


def get_ml_decision(d: Dialect, decision_id: str) -> Script[MlDecisionRow | None]:
    rows = yield Query(
        f"SELECT {DECISION_COLUMNS} FROM ml_decisions WHERE decision_id = {d.mark(1)}",
        (decision_id,),
    )
    return _decision(rows[0], d) if rows else None


def list_ml_decisions(
    d: Dialect,
    *,
    device: str | None,
    limit: int,
    before_seq: int | None,
    outcome: str | None,
) -> Script[list[MlDecisionRow]]:
    """Decisions newest first (by seq), below the `before_seq` cursor, filtered by device and
    outcome (exactly)."""
    p = Params(d)
    where: list[str] = []
    if device is not None:
        where.append(f"device_uid = {p(device)}")
    if outcome is not None:
        where.append(f"outcome = {p(outcome)}")
    if before_seq is not None:
        where.append(f"seq < {p(before_seq)}")
    sql = f"SELECT {DECISION_COLUMNS} FROM ml_decisions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY seq DESC LIMIT {p(limit)}"
    return [_decision(r, d) for r in (yield Query(sql, p.values))]


def _since(p: Params, since_us: int, device: str | None) -> str:
    where = f"at_us >= {p(since_us)}"
    if device is not None:
        where += f" AND device_uid = {p(device)}"
    return where


def ml_decision_stats(d: Dialect, *, since_us: int, device: str | None) -> Script[MlDecisionStats]:
    """Counts per outcome, the confidence histogram and the latency percentiles of the
    decisions at or after `since_us` (of one device), counted by the database: one grouped
    count, then one ordered seek per percentile (nearest rank: the ceil(p/100 * n)-th smallest
    latency). Nothing but the counts and two latencies leaves the database, whatever the span."""
    p = Params(d)
    groups = yield Query(
        f"SELECT outcome, {CONFIDENCE_BUCKET} AS bucket, count(*), count(latency_us) "
        f"FROM ml_decisions WHERE {_since(p, since_us, device)} GROUP BY outcome, bucket",
        p.values,
    )
    outcomes: dict[str, int] = dict.fromkeys(ML_OUTCOMES, 0)
    histogram = [0] * CONFIDENCE_BUCKETS
    timed = 0
    for outcome, bucket, count, latencies in groups:
        outcomes[outcome] = outcomes.get(outcome, 0) + int(count)
        if bucket is not None:
            histogram[int(bucket)] += int(count)
        timed += int(latencies)
    percentiles: list[int | None] = []
    for percentile in LATENCY_PERCENTILES:
        if not timed:
            percentiles.append(None)
            continue
        rank = max(1, -(-percentile * timed // 100))  # ceil without floats
        p = Params(d)
        rows = yield Query(
            f"SELECT latency_us FROM ml_decisions WHERE {_since(p, since_us, device)} "
            f"AND latency_us IS NOT NULL ORDER BY latency_us LIMIT 1 OFFSET {p(rank - 1)}",
            p.values,
        )
        # Empty only when rows were deleted since the count (retention): no figure then.
        percentiles.append(int(rows[0][0]) if rows else None)
    return MlDecisionStats(
        total=sum(outcomes.values()),
        outcomes=outcomes,
        confidence=tuple(histogram),
        latency_p50_us=percentiles[0],
        latency_p99_us=percentiles[1],
    )


def delete_ml_decisions_before(d: Dialect, cutoff_us: int) -> Script[int]:
    """Delete the decisions made before `cutoff_us` (retention); returns how many."""
    ((deleted,),) = yield Count(f"DELETE FROM ml_decisions WHERE at_us < {d.mark(1)}", (cutoff_us,))
    return int(deleted)


# -- devices -----------------------------------------------------------------------------------

DEVICE_COLUMNS = "device_uid, config, state, updated_us"


def _device(row: Row, d: Dialect) -> MlDeviceRow:
    return MlDeviceRow(
        device_id=row[0],
        config=d.json_loads(row[1]),
        state=d.json_loads(row[2]),
        updated_us=row[3],
    )


def put_ml_device(d: Dialect, row: MlDeviceRow) -> Script[None]:
    """Insert or replace a device's configuration and state."""
    p = Params(d)
    yield Query(
        f"INSERT INTO ml_devices ({DEVICE_COLUMNS}) VALUES ({p(row.device_id)}, "
        f"{p(d.json_param(row.config))}, {p(d.json_param(row.state))}, {p(row.updated_us)}) "
        "ON CONFLICT (device_uid) DO UPDATE SET config = excluded.config, "
        "state = excluded.state, updated_us = excluded.updated_us",
        p.values,
    )


def get_ml_device(d: Dialect, device_id: str) -> Script[MlDeviceRow | None]:
    rows = yield Query(
        f"SELECT {DEVICE_COLUMNS} FROM ml_devices WHERE device_uid = {d.mark(1)}", (device_id,)
    )
    return _device(rows[0], d) if rows else None


def list_ml_devices(d: Dialect) -> Script[list[MlDeviceRow]]:
    """Every device's row, by device id (bytewise)."""
    rows = yield Query(f"SELECT {DEVICE_COLUMNS} FROM ml_devices ORDER BY device_uid{d.collate}")
    return [_device(r, d) for r in rows]
