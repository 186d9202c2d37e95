"""The migration that moves the FastAPI/RabbitMQ stack's `uptime_s` to `uptime_ms`, on both engines.

Rows are written the way fieldhub stored them before it (the stack's `uptime` under `uptime_s`),
with the schema stopped one migration short; reopening runs the migration. Before and after are
read from the tables themselves: readings, both rollup tables and device_metrics.
"""

from __future__ import annotations

import importlib
from collections.abc import Generator
from typing import Any

import pytest

from fieldhub.protocol.messages import Decoded
from fieldhub.store import Store, WriteBatch, open_store
from fieldhub.store.ops import Op, Query
from fieldhub.store.rollups import MINUTE_US
from fieldhub.store.sqlite_schema import FASTAPI_UPTIME_S_TO_MS, fastapi_uptime_migration
from fieldhub.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from support.store_rows import T0, S, msg, schema_before

NODE = "3C:E9:0E:72:12:4C"  # a FastAPI stack node (command format `fastapi`)
TWIN = "3C:E9:0E:72:12:4D"  # a FastAPI node that already has one `uptime_ms` reading
NATIVE = "node-1"  # fieldhub's own firmware: its `uptime_s` is seconds and must stay
MINUTE0 = T0 - T0 % MINUTE_US
STALE_AFTER_S = {"native": 120}

# Each table as (device uid, metric name, the rest of the row...), sorted.
SNAPSHOT = {
    "readings": """SELECT d.uid, m.name, r.ts, r.value FROM readings r
        JOIN devices d ON d.id = r.device_id JOIN metrics m ON m.id = r.metric_id""",
    "rollup_minute": """SELECT d.uid, m.name, r.bucket, r.n, r.total, r.lo, r.hi, r.first_ts,
        r.first_value, r.last_ts, r.last_value FROM rollup_minute r
        JOIN devices d ON d.id = r.device_id JOIN metrics m ON m.id = r.metric_id""",
    "rollup_hour": """SELECT d.uid, m.name, r.bucket, r.n, r.total, r.lo, r.hi, r.first_ts,
        r.first_value, r.last_ts, r.last_value FROM rollup_hour r
        JOIN devices d ON d.id = r.device_id JOIN metrics m ON m.id = r.metric_id""",
    "device_metrics": """SELECT d.uid, m.name FROM device_metrics r
        JOIN devices d ON d.id = r.device_id JOIN metrics m ON m.id = r.metric_id""",
}
# Columns of a row that scale with the value, per table (indexes into the snapshot rows).
VALUE_COLUMNS = {
    "readings": (3,),
    "rollup_minute": (4, 5, 6, 8, 10),
    "rollup_hour": (4, 5, 6, 8, 10),
}

Tables = dict[str, list[tuple[Any, ...]]]


def _fastapi(message: Decoded, topic_id: str) -> Decoded:
    """`message` as it arrived on `devices/{MAC}/data`: the device speaks the `fastapi` format."""
    message.command_format = "fastapi"
    message.topic_id = topic_id
    return message


def _old_style_batches() -> list[WriteBatch]:
    """What the store held before: the node's `millis()` stored as `uptime_s`, over two minutes,
    next to other metrics; a fieldhub node's seconds; a node with an `uptime_ms` twin."""
    node = [
        _fastapi(
            msg(
                NODE,
                MINUTE0 + i * 20 * S,
                [
                    ("uptime_s", MINUTE0 + i * 20 * S, 5_000.0 + i * 20_000),
                    ("temperature", MINUTE0 + i * 20 * S, 24.0 + i),
                ],
            ),
            "3CE90E72124C",
        )
        for i in range(6)
    ]
    native = [
        msg(NATIVE, MINUTE0 + i * 30 * S, [("uptime_s", MINUTE0 + i * 30 * S, 600.0 + 30 * i)])
        for i in range(4)
    ]
    twin = [
        _fastapi(msg(TWIN, MINUTE0, [("uptime_s", MINUTE0, 7_000.0)]), "3CE90E72124D"),
        _fastapi(msg(TWIN, MINUTE0 + 1, [("uptime_ms", MINUTE0, 7_001.0)]), "3CE90E72124D"),
        _fastapi(
            msg(TWIN, MINUTE0 + MINUTE_US, [("uptime_s", MINUTE0 + MINUTE_US, 67_000.0)]),
            "3CE90E72124D",
        ),
    ]
    return [WriteBatch(decoded=node), WriteBatch(decoded=native), WriteBatch(decoded=twin)]


def _query(sql: str) -> Generator[Op, list[Any], list[tuple[Any, ...]]]:
    rows = yield Query(sql)
    return sorted(tuple(row) for row in rows)


async def _tables(store: Store) -> Tables:
    await store.fold_rollups()  # the rollup tables as they stand with every reading in them
    return {name: await store._read(_query(sql)) for name, sql in SNAPSHOT.items()}  # type: ignore[attr-defined]


def _expected(before: Tables, factor: int) -> Tables:
    """`before` with the migration's rule applied: every `uptime_s` row of the FastAPI node
    becomes `uptime_ms`, its values times the factor; the twin (it has `uptime_ms` already) and
    the native node are left as they are."""
    after: Tables = {}
    for table, rows in before.items():
        out = []
        for row in rows:
            if row[0] == NODE and row[1] == "uptime_s":
                moved = list(row)
                moved[1] = "uptime_ms"
                for column in VALUE_COLUMNS.get(table, ()):
                    moved[column] = row[column] * factor
                out.append(tuple(moved))
            else:
                out.append(row)
        after[table] = sorted(out)
    return after


def test_the_factor_relabels_the_milliseconds_already_stored() -> None:
    """The node's `uptime` is `millis()` and ingest only renamed it: the stored numbers are
    milliseconds already (docs/protocol.md), so the migration must not scale them."""
    assert FASTAPI_UPTIME_S_TO_MS == 1


@pytest.mark.asyncio(loop_scope="function")
# The shipped factor, and 1000 to prove the SQL scales every value column if it is ever needed.
@pytest.mark.parametrize("factor", [FASTAPI_UPTIME_S_TO_MS, 1000])
async def test_fastapi_uptime_s_becomes_uptime_ms_and_others_stay(
    backend_url: str, monkeypatch: pytest.MonkeyPatch, factor: int
) -> None:
    """Old-style rows written one migration short, then the store reopened on the full schema."""
    engine = (
        "fieldhub.store.sqlite" if backend_url.startswith("sqlite") else "fieldhub.store.postgres"
    )
    full = importlib.import_module(engine).MIGRATIONS
    # The schema as it was just before this migration (later ones come after it again).
    at = next(i for i, (_, _, sql) in enumerate(full) if sql == fastapi_uptime_migration())
    monkeypatch.setattr(f"{engine}.MIGRATIONS", schema_before(full, at))
    old = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await old.open()
    try:
        for batch in _old_style_batches():
            await old.write_batch(batch)
        before = await _tables(old)
    finally:
        await old.close()
    version, description, _ = full[at]
    monkeypatch.setattr(
        f"{engine}.MIGRATIONS",
        [*full[:at], (version, description, fastapi_uptime_migration(factor)), *full[at + 1 :]],
    )

    new = open_store(backend_url, stale_after_s=STALE_AFTER_S)
    await new.open()
    try:
        after = await _tables(new)
        # The new name is usable at once: the writer's caches were loaded after the migration.
        await new.write_batch(
            WriteBatch(
                decoded=[
                    _fastapi(
                        msg(NODE, MINUTE0 + 200 * S, [("uptime_ms", MINUTE0 + 200 * S, 205_000.0)]),
                        "3CE90E72124C",
                    )
                ]
            )
        )
        latest = await _tables(new)
    finally:
        await new.close()

    assert after == _expected(before, factor)
    # Spelled out: the node's uptimes are the numbers it sent, now named for their unit.
    node_uptimes = [(r[2], r[3]) for r in after["readings"] if r[0] == NODE and r[1] == "uptime_ms"]
    assert node_uptimes == [
        (MINUTE0 + i * 20 * S, (5_000.0 + i * 20_000) * factor) for i in range(6)
    ]
    assert not [r for r in after["readings"] if r[0] == NODE and r[1] == "uptime_s"]
    node_minutes = [r for r in after["rollup_minute"] if r[0] == NODE and r[1] == "uptime_ms"]
    assert [(r[2], r[3], r[4], r[5], r[6]) for r in node_minutes] == [
        (MINUTE0, 3, 75_000.0 * factor, 5_000.0 * factor, 45_000.0 * factor),
        (MINUTE0 + MINUTE_US, 3, 255_000.0 * factor, 65_000.0 * factor, 105_000.0 * factor),
    ]
    assert [(r[3], r[4]) for r in after["rollup_hour"] if r[0] == NODE and r[1] == "uptime_ms"] == [
        (6, 330_000.0 * factor)
    ]
    assert (NODE, "uptime_ms") in after["device_metrics"]
    assert (NODE, "uptime_s") not in after["device_metrics"]
    # fieldhub's own node keeps its seconds.
    native_before = [r for r in before["readings"] if r[0] == NATIVE]
    assert [r for r in after["readings"] if r[0] == NATIVE] == native_before
    assert (NATIVE, "uptime_s") in after["device_metrics"]
    # The twin already has `uptime_ms`: merging could collide, so its `uptime_s` stays whole.
    twin = [(r[1], r[2], r[3]) for r in after["readings"] if r[0] == TWIN]
    assert twin == [
        ("uptime_ms", MINUTE0, 7_001.0),
        ("uptime_s", MINUTE0, 7_000.0),
        ("uptime_s", MINUTE0 + MINUTE_US, 67_000.0),
    ]
    assert {(TWIN, "uptime_ms"), (TWIN, "uptime_s")} <= set(after["device_metrics"])
    assert (NODE, "uptime_ms", MINUTE0 + 200 * S, 205_000.0) in latest["readings"]
    assert [v for v, _, sql in SQLITE_MIGRATIONS if sql == fastapi_uptime_migration()] == [5]
