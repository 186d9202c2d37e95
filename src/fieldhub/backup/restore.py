"""`fieldhub restore`: a backup into a stopped install whose database is empty, verified.

Everything that can refuse is checked before anything is written: the backup's manifest and
files, the engine and schema version, fieldhub not running on the data dir (its lock,
in_use.py; for PostgreSQL no other session on the database either) and the target database
holding no fieldhub rows. Then the database goes in (SQLite: copied beside the target and
renamed over it; PostgreSQL: pg_restore in one transaction), then the data dir's parts; a part
the install already has (the shipped model a first start copied) is moved aside into
`<data_dir>/before-restore-<time>/`, never deleted. Last the database is verified against what
the backup recorded: rows per table and the sampled series' count, min, max and sum, the same
checks as `fieldhub migrate` (store/migrate_verify.py).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fieldhub.backup import pg_copy
from fieldhub.backup.contents import (
    FILES_DIR,
    PARTS,
    BackupError,
    BackupRefused,
    Manifest,
)
from fieldhub.backup.files import COPY_CHUNK_BYTES, copy_private
from fieldhub.backup.in_use import DataDirBusy, hold_exclusive
from fieldhub.backup.make import parts_of
from fieldhub.backup.sqlite_copy import check_integrity
from fieldhub.config import Settings
from fieldhub.store.migrate import safe_url
from fieldhub.store.migrate_outcome import MigrationResult
from fieldhub.store.migrate_tables import TABLES
from fieldhub.store.migrate_verify import PostgresSide, SqliteSide, compare
from fieldhub.store.open import sqlite_path
from fieldhub.store.postgres_schema import MIGRATIONS as POSTGRES_MIGRATIONS
from fieldhub.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS

ASIDE_DIR = "before-restore-{}"


@dataclass(slots=True)
class RestoreResult:
    """What a restore put back and how its verification went."""

    manifest: Manifest
    verification: MigrationResult
    parts: list[str] = field(default_factory=list)
    moved_aside: Path | None = None
    seconds: float = 0.0


async def restore_backup(settings: Settings, source: Path) -> RestoreResult:
    """Restore the backup at `source` into the install `settings` describe (see the module
    docstring). BackupRefused when nothing was changed; BackupError when the restore failed."""
    started = time.monotonic()
    manifest = await asyncio.to_thread(_check_backup, source, settings.db_url)
    lock = await asyncio.to_thread(_lock, settings.data_dir)
    try:
        url = settings.db_url
        database = source / manifest.database_file
        result = MigrationResult()
        if manifest.engine == "sqlite":
            target = sqlite_path(url)
            await asyncio.to_thread(_refuse_unless_empty_sqlite, target)
            await asyncio.to_thread(_replace_sqlite, database, target)
        else:
            conn = await pg_copy.connect(url)
            try:
                await pg_copy.refuse_unless_empty(conn, url)
            finally:
                await conn.close()
            await pg_copy.restore(database, url)
        parts, aside = await asyncio.to_thread(_restore_parts, settings, source, manifest)
        await _verify(manifest, url, result)
    finally:
        lock.close()
    return RestoreResult(manifest, result, parts, aside, time.monotonic() - started)


def _check_backup(source: Path, url: str) -> Manifest:
    manifest = Manifest.read(source)
    if not (source / manifest.database_file).is_file():
        raise BackupRefused(
            f"{source} lacks {manifest.database_file}: the backup is incomplete; restore another"
        )
    is_sqlite = url.startswith("sqlite:")
    if (manifest.engine == "sqlite") != is_sqlite:
        made, given = (
            ("SQLite", "PostgreSQL") if manifest.engine == "sqlite" else ("PostgreSQL", "SQLite")
        )
        raise BackupRefused(
            f"{source} is a backup of a {made} install and the target database is {given} "
            f"({safe_url(url)}): restore into a {made} database (--db), then move it with "
            "`fieldhub migrate` if you want PostgreSQL"
        )
    migrations = SQLITE_MIGRATIONS if is_sqlite else POSTGRES_MIGRATIONS
    known = max(v for v, _, _ in migrations)
    if manifest.schema_version != known:
        raise BackupRefused(
            f"{source} holds schema version {manifest.schema_version}, this fieldhub "
            f"{known}: restore it with the fieldhub version that made it "
            f"({manifest.fieldhub_version}), then start this version on it to bring it up to "
            "date"
        )
    return manifest


def _lock(data_dir: Path) -> IO[bytes]:
    try:
        return hold_exclusive(data_dir)
    except DataDirBusy as exc:
        raise BackupRefused(str(exc)) from None


def _refuse_unless_empty_sqlite(target: Path) -> None:
    if not target.exists():
        return
    try:
        conn = sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True)
        try:
            present = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            }
            filled = [
                t.name
                for t in TABLES
                if t.name in present
                and conn.execute(f"SELECT EXISTS (SELECT 1 FROM {t.name})").fetchone()[0]
            ]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupRefused(
            f"{target} exists and cannot be read as a database ({exc}): move it away and "
            "restore again; nothing was changed"
        ) from None
    if filled:
        raise BackupRefused(
            f"{target} already holds fieldhub data (rows in {', '.join(filled)}); nothing was "
            "changed. Restore into an empty install: a new --data-dir, or move this database "
            "away first"
        )


def _replace_sqlite(backup: Path, target: Path) -> None:
    """Copy the backup's database beside `target`, check it, and rename it over `target` and
    its journal files (an empty database a start made)."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.restoring")
    staging.unlink(missing_ok=True)  # an earlier restore's, interrupted
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with backup.open("rb") as reader, os.fdopen(fd, "wb") as writer:
        shutil.copyfileobj(reader, writer, COPY_CHUNK_BYTES)
        writer.flush()
        os.fsync(writer.fileno())
    conn = sqlite3.connect(staging)
    try:
        check_integrity(conn, backup)
    finally:
        conn.close()
    for suffix in ("-wal", "-shm", "-journal"):
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    staging.replace(target)


def _restore_parts(
    settings: Settings, source: Path, manifest: Manifest
) -> tuple[list[str], Path | None]:
    aside_dir: Path | None = None
    restored = []
    targets = parts_of(settings)
    for part in manifest.parts:
        if part not in PARTS:
            continue  # a part of a later fieldhub: not ours to place
        target = targets[part]
        if target.exists():
            if aside_dir is None:
                stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
                aside_dir = settings.data_dir / ASIDE_DIR.format(stamp)
                aside_dir.mkdir(mode=0o700, parents=True)
            shutil.move(target, aside_dir / part)
        copy_private(source / FILES_DIR / part, target)
        restored.append(part)
    return restored, aside_dir


async def _verify(manifest: Manifest, url: str, result: MigrationResult) -> None:
    if manifest.engine == "postgresql":
        pg = await pg_copy.connect(url)
        try:
            await compare(manifest.facts, PostgresSide(pg), result)
        finally:
            await pg.close()
        return
    target = sqlite_path(url)
    conn = sqlite3.connect(
        f"{target.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
    )
    try:
        await compare(manifest.facts, SqliteSide(conn), result)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read the restored database {target}: {exc}") from exc
    finally:
        conn.close()
