"""What every fault test asserts after its fault: nothing lost, nothing stored twice, and
fieldhub's counters agree with the rows in its database.

`Database` is where fieldhub stores: a SQLite file's path or a PostgreSQL URL. Each check is
written once, in SQL both engines run, with `?` for parameters (numbered for PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TypeAlias

import asyncpg
import orjson

from support.fieldhub_process import FieldhubProcess, wait_until

__all__ = [
    "Database",
    "SteppedClock",
    "assert_counters_equal_rows",
    "assert_each_seq_once",
    "assert_recovered",
    "fill",
    "find_libfaketime",
    "read_only_writes",
    "rows",
    "seq_messages",
    "stored_seq",
    "tmpfs",
]

# A SQLite database file, or a PostgreSQL URL (postgresql://...).
Database: TypeAlias = Path | str

# The `seq` readings of the devices whose id starts with the parameter.
_SEQ_READINGS = (
    "FROM readings r JOIN devices d ON d.id = r.device_id JOIN metrics m "
    "ON m.id = r.metric_id WHERE d.uid LIKE ? AND m.name = 'seq'"
)


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


def stored_seq(db: Database, prefix: str) -> int:
    """How many `seq` readings are stored for devices `prefix*` (0 before the schema exists)."""
    try:
        return _count(db, f"SELECT count(*) {_SEQ_READINGS}", prefix + "%")
    except (sqlite3.OperationalError, asyncpg.UndefinedTableError):
        return 0


def assert_each_seq_once(db: Database, prefix: str, total: int) -> None:
    """Every `seq` published for devices `prefix*` is stored, and none twice."""
    stored = _count(db, f"SELECT count(*) {_SEQ_READINGS}", prefix + "%")
    distinct = _count(db, f"SELECT count(DISTINCT r.value) {_SEQ_READINGS}", prefix + "%")
    assert distinct == total, f"{total - distinct} of {total} readings lost"
    assert stored == total, f"{stored - total} readings stored twice"


def assert_counters_equal_rows(fh: FieldhubProcess, db: Database) -> None:
    """fieldhub's own counters (since its start on an empty database) say what the database
    holds: readings written, dead letters (per reason and in all)."""
    # Messages say both numbers: pytest rewrites the assertions of test modules, not these.
    readings = _count(db, "SELECT count(*) FROM readings")
    written = fh.metric("fieldhub_readings_written_total")
    assert written == readings, f"readings written counted {written:.0f}, stored {readings}"
    dead = _count(db, "SELECT count(*) FROM dead_letters")
    counted = fh.metric("fieldhub_dead_letters_total")
    assert counted == dead, f"dead letters counted {counted:.0f}, stored {dead}"
    for (reason,) in rows(db, "SELECT DISTINCT reason FROM dead_letters"):
        count = _count(db, "SELECT count(*) FROM dead_letters WHERE reason = ?", reason)
        counted = fh.metric("fieldhub_dead_letters_total", {"reason": str(reason)})
        assert counted == count, f"dead letters {reason} counted {counted:.0f}, stored {count}"


def assert_recovered(fh: FieldhubProcess, db: Database, prefix: str, total: int) -> None:
    """After a store outage: every `seq` of `prefix` arrives once, /healthz is ok again, no
    dead letter was made of the outage, its failed writes were counted and are over, and the
    counters equal the rows."""
    wait_until(
        lambda: stored_seq(db, prefix) >= total,
        timeout_s=60,
        what=f"{total} readings after the outage",
    )
    wait_until(
        lambda: fh.get("/healthz").status_code == 200 and (fh.health() or {}).get("store") == "ok",
        timeout_s=30,
        what="/healthz ok again",
    )
    assert_each_seq_once(db, prefix, total)
    assert _count(db, "SELECT count(*) FROM dead_letters") == 0
    assert fh.metric("fieldhub_store_writes_failing_seconds") == 0
    assert fh.metric("fieldhub_ingest_write_errors_total") > 0
    assert_counters_equal_rows(fh, db)


def rows(db: Database, sql: str, *params: object) -> list[tuple[object, ...]]:
    """The rows `sql` returns, read-only on SQLite (`?` marks each parameter, on either engine)."""
    if isinstance(db, Path):
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return list(conn.execute(sql, params).fetchall())
        finally:
            conn.close()
    numbers = itertools.count(1)
    numbered = re.sub(r"\?", lambda _: f"${next(numbers)}", sql)

    async def fetch() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(db)
        try:
            return [tuple(row) for row in await conn.fetch(numbered, *params)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _count(db: Database, sql: str, *params: object) -> int:
    value = rows(db, sql, *params)[0][0]
    assert isinstance(value, int), value
    return value


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


# strace's answer to an attach it could not make shows within this long; attached, it says
# nothing (-qq) until it is stopped.
STRACE_ATTACH_S = 1.0


@contextlib.contextmanager
def read_only_writes(pid: int) -> Iterator[None]:
    """Within the block, every file write (`pwrite64`, how SQLite writes its database and WAL)
    of process `pid` and its threads fails with EROFS, as on a file system gone read-only.

    `mount -o remount,ro` cannot do this: Linux refuses it (EBUSY) while a file on it is open
    for writing, as the database is, and a file system that an error forces read-only stays so
    until unmounted. strace attached to the process injects the error and, when stopped,
    detaches: the writes succeed again, with the files never closed, as after `remount,rw`.
    Needs root (or ptrace rights over `pid`) and strace.
    """
    tracer = subprocess.Popen(
        [
            *("strace", "-qq", "-f", "-p", str(pid), "-o", "/dev/null"),
            *("-e", "trace=pwrite64", "-e", "inject=pwrite64:error=EROFS"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            tracer.wait(STRACE_ATTACH_S)
        except subprocess.TimeoutExpired:
            pass  # attached and injecting
        else:
            assert tracer.stderr is not None
            raise AssertionError(f"strace could not attach: {tracer.stderr.read().decode()}")
        yield
    finally:
        # SIGTERM: strace detaches from every thread and they run on untouched (SIGKILL would
        # leave them stopped).
        tracer.terminate()
        tracer.wait(30)


# Debian's libfaketime (package `faketime`, scripts/_env.sh installs it); the MT build is the
# one for programs with threads, as fieldhub is.
LIBFAKETIME_GLOB = "/usr/lib/*/faketime/libfaketimeMT.so.1"


def find_libfaketime() -> Path | None:
    """The installed libfaketime to preload, or None."""
    found = sorted(glob.glob(LIBFAKETIME_GLOB))
    return Path(found[0]) if found else None


class SteppedClock:
    """The wall clock of one process (and only it), stepped at will: libfaketime preloaded,
    reading its offset from a file that `step_to()` rewrites. The machine's clock is untouched.

    Only the wall clock moves (FAKETIME_DONT_FAKE_MONOTONIC): as under an NTP step, the
    monotonic clock that timers and timeouts use goes on undisturbed.
    """

    def __init__(self, offset_file: Path) -> None:
        library = find_libfaketime()
        assert library is not None, f"libfaketime not found ({LIBFAKETIME_GLOB})"
        self.offset_file = offset_file
        self.offset_s = 0
        self.step_to(0)
        self.env = {
            "LD_PRELOAD": str(library),
            "FAKETIME_TIMESTAMP_FILE": str(offset_file),
            # Read the file at every clock read, so a step takes effect at once (the default
            # cache would keep the old offset for up to 10 s).
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def step_to(self, offset_s: int) -> None:
        """From now on the process's wall clock reads the real time plus `offset_s`."""
        # Written whole, then renamed: a clock read never sees a half-written file.
        partial = self.offset_file.with_suffix(".partial")
        partial.write_text(f"{offset_s:+d}\n")
        partial.replace(self.offset_file)
        self.offset_s = offset_s
