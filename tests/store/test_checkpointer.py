"""SQLite's background checkpointer: every interval while the WAL is small, far more often once
the WAL nears the writer's own backstop, so that the backstop (inside a commit) finds next to
nothing left to copy."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from fieldhub.store import sqlite as sqlite_module
from fieldhub.store.sqlite import _Checkpointer

WATCH_S = 1.0
INTERVAL_S = 0.2


def _wal_with_pages(path: Path, pages: int) -> sqlite3.Connection:
    """A database in WAL mode whose WAL holds about `pages` frames (kept: the connection stays
    open and nothing writes after, so a checkpoint copies them but the WAL keeps its frames)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("BEGIN")
    for _ in range(pages):
        conn.execute("INSERT INTO t VALUES (zeroblob(3500))")  # about a page each
    conn.execute("COMMIT")
    return conn


def _checkpoints_in(path: Path, seconds: float) -> int:
    checkpointer = _Checkpointer(path, interval_s=INTERVAL_S)
    checkpointer.start()
    try:
        time.sleep(seconds)
    finally:
        checkpointer.stop()
    return checkpointer.checkpoints


@pytest.mark.parametrize(("pages", "near"), [(50, False), (400, True)])
def test_checkpoints_come_often_only_near_the_backstop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pages: int, near: bool
) -> None:
    monkeypatch.setattr(sqlite_module, "WAL_AUTOCHECKPOINT_PAGES", 500)
    monkeypatch.setattr(sqlite_module, "BACKSTOP_NEAR_FRAMES", 200)  # near from 300 frames
    db = tmp_path / "c.db"
    writer = _wal_with_pages(db, pages)
    try:
        count = _checkpoints_in(db, WATCH_S)
    finally:
        writer.close()
    every_interval = WATCH_S / INTERVAL_S  # 5
    if near:
        # Every CHECKPOINT_NEAR_BACKSTOP_S (0.01 s) after the first: ~100; a loaded machine
        # may give fewer, never as few as the plain interval's.
        assert count > 4 * every_interval
    else:
        assert count <= every_interval + 1
