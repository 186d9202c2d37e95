"""What every fault test asserts after its fault: nothing lost, nothing stored twice, and
fieldhub's counters agree with the rows in its database."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson

from support.fieldhub_process import FieldhubProcess
from support.mqtt import count_rows

__all__ = [
    "assert_counters_equal_rows",
    "assert_each_seq_once",
    "fill",
    "seq_messages",
    "tmpfs",
]


def seq_messages(
    prefix: str, total: int, *, start_ms: int, devices: int = 20, offset: int = 0
) -> list[tuple[str, bytes]]:
    """`total` native telemetry messages over `devices` devices, each with its own `ts` and a
    `seq` reading numbering it (so loss and duplicates can be counted)."""
    messages = []
    for n in range(offset, offset + total):
        device, seq = n % devices, n // devices
        payload = orjson.dumps({"ts": start_ms + seq, "seq": n, "temperature": 20 + seq % 7})
        messages.append((f"devices/{prefix}-{device:03d}/telemetry", payload))
    return messages


def assert_each_seq_once(db: Path, prefix: str, total: int) -> None:
    """Every `seq` published for devices `prefix*` is stored, and none twice."""
    where = (
        "FROM readings r JOIN devices d ON d.id = r.device_id JOIN metrics m "
        "ON m.id = r.metric_id WHERE d.uid LIKE ? AND m.name = 'seq'"
    )
    stored = count_rows(db, f"SELECT count(*) {where}", prefix + "%")
    distinct = count_rows(db, f"SELECT count(DISTINCT r.value) {where}", prefix + "%")
    assert distinct == total, f"{total - distinct} of {total} readings lost"
    assert stored == total, f"{stored - total} readings stored twice"


def assert_counters_equal_rows(fh: FieldhubProcess, db: Path) -> None:
    """fieldhub's own counters (since its start on an empty database) say what the database
    holds: readings written, dead letters (per reason and in all)."""
    readings = count_rows(db, "SELECT count(*) FROM readings")
    assert fh.metric("fieldhub_readings_written_total") == readings
    dead = count_rows(db, "SELECT count(*) FROM dead_letters")
    assert fh.metric("fieldhub_dead_letters_total") == dead
    for (reason,) in _rows(db, "SELECT DISTINCT reason FROM dead_letters"):
        rows = count_rows(db, "SELECT count(*) FROM dead_letters WHERE reason = ?", reason)
        assert fh.metric("fieldhub_dead_letters_total", {"reason": reason}) == rows, reason


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` mounted at `path` for the block (needs root: CI runs as root)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(path: Path) -> Path:
    """Take every free byte of `path`'s file system with one file (returned: delete it to give
    the space back)."""
    filler = path / "filler"
    chunk = b"\0" * (64 * 1024)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError:
                break
        # The last partial chunk: what is left is smaller than 64 KiB.
        for size in (4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler
