"""The SQLite side of `fieldhub migrate`: a read-only snapshot of the source file, checked to be
an up-to-date fieldhub database, and the reads the copy makes of it (the verification reads it
through migrate_verify.SqliteSide)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fieldhub.store.migrate_outcome import MigrationRefused
from fieldhub.store.migrate_tables import NOT_COPIED, TABLES, check_known
from fieldhub.store.postgres_partitions import month_index, month_start_us
from fieldhub.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS


class SqliteSource:
    """A read-only connection to the SQLite file, inside one read transaction (a snapshot)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise MigrationRefused(f"no SQLite database at {path}: SOURCE must be an existing file")
        try:
            self.conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,  # chunks are read on a worker thread, one at a time
            )
        except sqlite3.Error as exc:
            raise MigrationRefused(f"cannot open SQLite database {path}: {exc}") from exc
        self.path = path
        try:
            self._check_schema()
            self._check_tables()
            self.data_version = self._data_version()
            self.conn.execute("BEGIN")
            self.counts = {t.name: self._count(t.name) for t in TABLES}
        except sqlite3.Error as exc:
            self.conn.close()
            raise MigrationRefused(f"cannot read SQLite database {path}: {exc}") from exc
        except BaseException:
            self.conn.close()
            raise

    def _check_schema(self) -> None:
        try:
            (version,) = self.conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        except sqlite3.DatabaseError as exc:
            raise MigrationRefused(
                f"{self.path} is not a fieldhub SQLite database ({exc})"
            ) from None
        known = max(v for v, _, _ in SQLITE_MIGRATIONS)
        if version != known:
            advice = (
                f"start this fieldhub on it once (fieldhub up --db sqlite:///{self.path}) to bring "
                "it up to date, stop it, then migrate"
                if (version or 0) < known
                else "use the fieldhub version that wrote it"
            )
            raise MigrationRefused(
                f"{self.path} has schema version {version}, this fieldhub migrates version "
                f"{known}: {advice}"
            )

    def _check_tables(self) -> None:
        names = [
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        found = {
            name: {r[1] for r in self.conn.execute(f"PRAGMA table_info({name})")}
            for name in names
            if name not in NOT_COPIED
        }
        check_known("SQLite", found)

    def check_rollups_complete(self) -> None:
        """Refuse to migrate a file whose rollups lack readings it holds: fieldhub adds them at
        its next start (or stop), and the copy and its verification compare rollups as they
        stand. (A backup copies the pending table with the rest: the restored file folds it.)"""
        (pending,) = self.conn.execute("SELECT count(*) FROM rollup_pending").fetchone()
        if pending:
            raise MigrationRefused(
                f"{self.path} holds {pending} readings not yet added to the rollups (fieldhub "
                f"did not stop cleanly): start fieldhub on it once (fieldhub up --db "
                f"sqlite:///{self.path}), stop it, then migrate"
            )

    def _data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def _count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def sequence_floors(self) -> dict[str, int]:
        """AUTOINCREMENT high-water marks: ids SQLite would never hand out again."""
        try:
            rows = self.conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall()
        except sqlite3.OperationalError:  # no AUTOINCREMENT table was ever written
            return {}
        return {str(name): int(seq) for name, seq in rows}

    def months_with_readings(self, first_month: int, end_month: int) -> set[int]:
        """The months in [first_month, end_month) holding readings, found by seeking each
        series' next reading (a primary-key seek per series and month, not a scan)."""
        months: set[int] = set()
        end_us = month_start_us(end_month)
        series = self.conn.execute("SELECT device_id, metric_id FROM device_metrics").fetchall()
        for device_pk, metric_pk in series:
            at_us = month_start_us(first_month)
            while True:
                row = self.conn.execute(
                    "SELECT ts FROM readings WHERE device_id = ? AND metric_id = ? AND ts >= ? "
                    "AND ts < ? ORDER BY ts LIMIT 1",
                    (device_pk, metric_pk, at_us, end_us),
                ).fetchone()
                if row is None:
                    break
                month = month_index(row[0])
                months.add(month)
                at_us = month_start_us(month + 1)
        return months

    def finish(self) -> bool:
        """End the snapshot; True when another connection committed to the file meanwhile."""
        self.conn.execute("COMMIT")
        return self._data_version() != self.data_version

    def close(self) -> None:
        self.conn.close()
