"""Copying a SQLite database with SQLite's online backup API, while fieldhub writes to it.

The copy is read from `SqliteSource`'s connection, inside the read transaction it opened (the
snapshot its row counts were taken in): `sqlite3_backup_step` reuses a transaction the source
connection holds, so every step reads the same snapshot, the copy is consistent, and commits by
the running writer never restart it (they would between steps without one). fieldhub's database
is in WAL mode, where a reader never blocks the writer: the writer goes on committing, and only
the WAL grows, by what is written during the copy, until the snapshot ends (the checkpoints are
PASSIVE: store/sqlite.py). The copy goes in steps of BACKUP_STEP_PAGES so its progress can be
shown and each call into SQLite stays short.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from fieldhub.backup.contents import BackupError
from fieldhub.store.migrate_source import SqliteSource

# Pages per backup step (4 KiB each: 16 MiB). Smaller shows progress more often at more calls
# (each step costs a few microseconds beyond its I/O); larger makes Ctrl-C and progress lag.
BACKUP_STEP_PAGES = 4096

PagesDone = Callable[[int, int], None]


def copy_sqlite(source: SqliteSource, target: Path, on_pages: PagesDone) -> None:
    """Copy the database `source` reads (its snapshot) into the new file `target` (0600), as a
    single file in rollback-journal mode, and check the copy's integrity. `on_pages(done,
    total)` after every step."""
    # Created private before SQLite opens it: SQLite keeps an existing file's mode.
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    copy = sqlite3.connect(target, isolation_level=None)
    try:
        source.conn.backup(
            copy,
            pages=BACKUP_STEP_PAGES,
            progress=lambda _status, remaining, total: on_pages(total - remaining, total),
        )
        # One self-contained file: a restore copies it as is, and fieldhub sets WAL on open.
        copy.execute("PRAGMA journal_mode = DELETE")
        check_integrity(copy, target)
    finally:
        copy.close()


def check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """BackupError unless `PRAGMA integrity_check` finds the database sound."""
    problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    if problems != ["ok"]:
        raise BackupError(
            f"{path} failed SQLite's integrity check ({'; '.join(problems[:5])}): the copy is "
            "damaged; check the disk it is on and back up again"
        )
