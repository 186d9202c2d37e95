"""Dead-letter upkeep scripts: their size, and deleting them by age and by total size
(retention.py decides when; docs/limits.md lists the bounds)."""

from __future__ import annotations

from collections.abc import Sequence

from fieldhub.store.dialect import Dialect
from fieldhub.store.ops import Count, Query, Script

# What a row costs beyond its payload, topic and detail (its other columns, the row and index
# entries): an estimate, so the byte budget counts a flood of empty payloads too.
ROW_OVERHEAD_BYTES = 100
# A row's size as the budget counts it, in SQL (the same on both engines: `length` of a blob or
# bytea is its size in bytes, of text its length in characters).
ROW_BYTES_SQL = f"(length(payload) + length(topic) + length(detail) + {ROW_OVERHEAD_BYTES})"


def dead_letter_bytes(d: Dialect) -> Script[int]:
    """The dead letters' size as the byte budget counts it (ROW_BYTES_SQL summed)."""
    ((total,),) = yield Query(f"SELECT coalesce(sum({ROW_BYTES_SQL}), 0) FROM dead_letters", ())
    return int(total)


def delete_dead_letters_before(
    d: Dialect,
    cutoff_us: int,
    *,
    reasons: Sequence[str] = (),
    except_reasons: Sequence[str] = (),
) -> Script[int]:
    """Delete dead letters received before `cutoff_us`: of `reasons` when given, else of every
    reason but `except_reasons` (they have rules of their own); returns how many."""
    args: list[object] = [cutoff_us]
    sql = f"DELETE FROM dead_letters WHERE received_at < {d.mark(1)}"
    chosen, negate = (reasons, False) if reasons else (except_reasons, True)
    if chosen:
        marks = ", ".join(d.mark(i) for i in range(2, len(chosen) + 2))
        sql += f" AND reason {'NOT IN' if negate else 'IN'} ({marks})"
        args += list(chosen)
    ((deleted,),) = yield Count(sql, tuple(args))
    return int(deleted)


def prune_dead_letters(d: Dialect, max_bytes: int) -> Script[int]:
    """Delete the oldest dead letters until the rest fit in `max_bytes` (ROW_BYTES_SQL);
    returns how many. One statement: the newest rows' running size finds the cut."""
    ((deleted,),) = yield Count(
        "DELETE FROM dead_letters WHERE id <= ("
        "SELECT id FROM (SELECT id, sum("
        f"{ROW_BYTES_SQL}) OVER (ORDER BY id DESC) AS newer FROM dead_letters) AS sized "
        f"WHERE newer > {d.mark(1)} ORDER BY id DESC LIMIT 1)",
        (max_bytes,),
    )
    return int(deleted)
