"""PostgreSQL's monthly readings partitions: their names and bounds, creating the months around
now, and dropping whole months that retention has passed.

Partitions exist PARTITION_MONTHS_BEHIND months before and PARTITION_MONTHS_AHEAD after now
(created at open and by the maintenance job); a default partition takes whatever falls outside
them. Creating and dropping happen under the migration lock: ingest workers starting together
would otherwise race to create the same partition ("already exists" despite IF NOT EXISTS).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fieldhub.store.dialect import POSTGRES
from fieldhub.store.ops import Query, Script, Statements

# Late data of the previous month and a clock running a little ahead land in a partition of
# their own, not in the default one.
PARTITION_MONTHS_BEHIND = 1
PARTITION_MONTHS_AHEAD = 2


def month_index(ts_us: int) -> int:
    """Months since year 0 of a time: year * 12 + month - 1 (exact in integers: float seconds
    would round the last microsecond of a month into the next)."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_us)
    return moment.year * 12 + moment.month - 1


def month_start_us(month: int) -> int:
    """Epoch microseconds at the start of a `month_index`."""
    return int(datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC).timestamp()) * 1_000_000


def partition_month(name: str) -> int | None:
    """The `month_index` of a readings partition's name (None for the default partition)."""
    match = re.fullmatch(r"readings_p(\d{4})(\d{2})", name)
    return None if match is None else int(match[1]) * 12 + int(match[2]) - 1


def partition_ddl(month: int) -> tuple[str, str]:
    """(name, CREATE statement) of the readings partition of a `month_index`."""
    name = f"readings_p{month // 12:04d}{month % 12 + 1:02d}"
    return name, (
        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF readings "
        f"FOR VALUES FROM ({month_start_us(month)}) TO ({month_start_us(month + 1)})"
    )


def months_around(now_us: int) -> range:
    """The months whose partitions should exist at `now_us`."""
    now = month_index(now_us)
    return range(now - PARTITION_MONTHS_BEHIND, now + PARTITION_MONTHS_AHEAD + 1)


def create_partition(month: int) -> Script[None]:
    """Create one month's partition if it does not exist (in its own transaction)."""
    assert POSTGRES.lock_migrations is not None
    yield Query(POSTGRES.lock_migrations)
    yield Statements(partition_ddl(month)[1])


def drop_partitions_before(cutoff_us: int) -> Script[list[tuple[str, int]]]:
    """Drop the partitions whose whole month ends by `cutoff_us`; (name, readings) of each."""
    assert POSTGRES.lock_migrations is not None
    yield Query(POSTGRES.lock_migrations)
    names = yield Query(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'readings'::regclass ORDER BY c.relname"
    )
    gone: list[tuple[str, int]] = []
    for (name,) in names:
        month = partition_month(name)
        if month is None or month_start_us(month + 1) > cutoff_us:
            continue
        ((rows,),) = yield Query(f"SELECT count(*) FROM {name}")
        yield Statements(f"DROP TABLE {name}")
        gone.append((name, int(rows)))
    return gone
