"""`fieldhub backup`: the database and the data dir's other state into a new directory, verified.

Written into a hidden sibling `.<name>.partial-<pid>` and renamed to its name at the end: a
backup directory that exists is complete and verified, and one interrupted leaves no directory
that could pass for a backup (rotation counts only complete ones).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fieldhub import __version__, clock
from fieldhub.backup import pg_copy
from fieldhub.backup.contents import (
    FILES_DIR,
    PG_DUMP_FILE,
    SQLITE_FILE,
    BackupError,
    BackupRefused,
    Engine,
    Manifest,
)
from fieldhub.backup.files import copy_private
from fieldhub.backup.sqlite_copy import copy_sqlite
from fieldhub.config import Settings
from fieldhub.store.migrate_outcome import MigrationRefused, MigrationResult
from fieldhub.store.migrate_source import SqliteSource
from fieldhub.store.migrate_verify import SourceFacts, SqliteSide, compare, sample_source
from fieldhub.store.open import sqlite_path
from fieldhub.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS

PARTIAL_MARK = ".partial-"


class BackupProgress(Protocol):
    """What a backup reports while it runs (the CLI draws it)."""

    def step(self, text: str) -> None:
        """A phase begins (the database, the files, the verification)."""

    def pages(self, done: int, total: int) -> None:
        """SQLite: `done` of `total` pages copied."""


class Quiet:
    """The BackupProgress of a caller that gave none (the scheduled backup)."""

    def step(self, text: str) -> None:
        pass

    def pages(self, done: int, total: int) -> None:
        pass


@dataclass(slots=True)
class BackupResult:
    """A backup written and verified."""

    path: Path
    manifest: Manifest
    # SQLite: the copy beside the live database's snapshot; None for PostgreSQL, whose dump is
    # checked by pg_restore reading it (its counts are compared by the restore).
    verification: MigrationResult | None
    bytes: int = 0
    seconds: float = 0.0
    skipped: list[Path] = field(default_factory=list)


def partial_path(dest: Path) -> Path:
    """Where the backup is written until it is complete."""
    return dest.with_name(f".{dest.name}{PARTIAL_MARK}{os.getpid()}")


def check_destination(dest: Path) -> None:
    """BackupRefused unless `dest` is absent or an empty directory, in an existing directory."""
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise BackupRefused(
            f"{dest} exists and is not an empty directory: pass a new path for the backup "
            "(e.g. with the date in its name)"
        )
    if not dest.parent.is_dir():
        raise BackupRefused(f"{dest.parent} does not exist: create it or pass another DEST")


async def make_backup(
    settings: Settings, dest: Path, *, progress: BackupProgress | None = None
) -> BackupResult:
    """Back up the install `settings` describe into the new directory `dest` and verify it
    (see the package's docstring). BackupRefused before anything is written; BackupError when
    the backup failed (nothing is left at `dest`)."""
    report: BackupProgress = progress or Quiet()
    started = time.monotonic()
    work = await asyncio.to_thread(_start, dest)
    try:
        manifest, result = await _database(settings, work, report)
        skipped: list[Path] = []
        for part, source in parts_of(settings).items():
            left = await asyncio.to_thread(_copy_part, source, work / FILES_DIR / part)
            if left is not None:
                report.step(f"copied {source}")
                skipped += [Path(part) / p for p in left]
                manifest.parts.append(part)
        size = await asyncio.to_thread(_finish, work, dest, manifest)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)
        raise
    return BackupResult(dest, manifest, result, size, time.monotonic() - started, skipped)


def _start(dest: Path) -> Path:
    check_destination(dest)
    work = partial_path(dest)
    work.mkdir(mode=0o700)
    os.chmod(work, 0o700)
    return work


def _copy_part(source: Path, target: Path) -> list[Path] | None:
    """The skipped paths of a part copied; None when the install has no such part."""
    if not source.is_dir():
        return None
    return copy_private(source, target)[1]


def _finish(work: Path, dest: Path, manifest: Manifest) -> int:
    """Write the manifest and give the backup its name; its size in bytes."""
    manifest.write(work)
    if dest.exists():
        dest.rmdir()  # the empty directory check_destination allowed
    work.rename(dest)
    return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())


def parts_of(settings: Settings) -> dict[str, Path]:
    """The data dir's parts a backup carries, by their name in the backup."""
    return {
        "models": settings.model_registry,
        "certs": settings.data_dir / "certs",
        "secrets": settings.data_dir / "secrets",
    }


async def _database(
    settings: Settings, work: Path, report: BackupProgress
) -> tuple[Manifest, MigrationResult | None]:
    url = settings.db_url
    if not url.startswith("sqlite:"):
        report.step("dumping the database (pg_dump, custom format)")
        # Verified by pg_restore reading it back (pg_copy.check_archive); the counts were read
        # in the dump's snapshot, so they are what it holds, and a restore compares them.
        facts, schema, line = await pg_copy.dump(url, work / PG_DUMP_FILE)
        return _manifest("postgresql", schema, facts, line), None
    path = sqlite_path(url)
    if not await asyncio.to_thread(path.is_file):
        raise BackupRefused(
            f"no database at {path}: pass the --data-dir (or --db) fieldhub runs with"
        )
    report.step(f"copying {path} (SQLite online backup)")
    try:
        source = await asyncio.to_thread(SqliteSource, path)
    except MigrationRefused as exc:
        raise BackupRefused(str(exc)) from None
    try:
        facts = await sample_source(SqliteSide(source.conn), counts=source.counts)
        await asyncio.to_thread(copy_sqlite, source, work / SQLITE_FILE, report.pages)
    finally:
        source.close()
    report.step("verifying the copy: rows per table and a sample of series")
    result = MigrationResult()
    copy = sqlite3.connect(
        f"{(work / SQLITE_FILE).resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
    )
    try:
        await compare(facts, SqliteSide(copy), result)
    finally:
        copy.close()
    if not result.ok:
        differ = [f"{c.table} {c.source} -> {c.target}" for c in result.counts if not c.ok]
        raise BackupError(
            f"the backup's copy differs from the database ({', '.join(differ) or 'series'}): "
            "back up again; if it persists, run PRAGMA integrity_check on the database"
        )
    return _manifest("sqlite", max(v for v, _, _ in SQLITE_MIGRATIONS), facts, None), result


def _manifest(engine: Engine, schema: int, facts: SourceFacts, tool: str | None) -> Manifest:
    return Manifest(
        engine=engine,
        created_us=clock.now_us(),
        fieldhub_version=__version__,
        schema_version=schema,
        facts=facts,
        tool=tool,
    )
