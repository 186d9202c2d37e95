"""The scheduled backup of `fieldhub up`: every `backup_every_h` a new backup in `backup_dir`,
keeping the newest `backup_keep` (FIELDHUB_BACKUP_DIR, _EVERY_H, _KEEP; docs/backups.md).

platform.py starts and stops it; `start` runs `run_once` with `clock.run_every`, so the first
backup is made one interval after the start. A failed backup is logged with its reason, counted in
`fieldhub_backup_failures_total`, and leaves the earlier backups alone; the next interval tries
again. `fieldhub_backup_last_success_timestamp_seconds` says when one last succeeded, so an
alert can fire on its age whatever the reason.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from fieldhub import clock
from fieldhub.backup.contents import MANIFEST, BackupError
from fieldhub.backup.make import PARTIAL_MARK, make_backup
from fieldhub.config import Settings
from fieldhub.store.types import StoreError

log = logging.getLogger("fieldhub.backup")

# fieldhub-backup-20261205T131500.123456Z: sorts by time, so rotation keeps the last names
# (microseconds: two backups in one second, a short interval, still get two names).
NAME_PREFIX = "fieldhub-backup-"
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
S_PER_H = 3600.0


class BackupJob:
    """Makes a backup when run and rotates the old ones out, with its metrics."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry) -> None:
        if settings.backup_dir is None:
            raise ValueError("the scheduled backup needs backup_dir")
        self.settings = settings
        self.directory: Path = settings.backup_dir
        self.keep = settings.backup_keep
        self.interval_s = settings.backup_every_h * S_PER_H
        self.failures = Counter(
            "fieldhub_backup_failures",
            "Scheduled backups that failed (the reason is logged)",
            registry=registry,
        )
        self.last_success = Gauge(
            "fieldhub_backup_last_success_timestamp_seconds",
            "When the last scheduled backup completed and verified (0: none yet)",
            registry=registry,
        )
        self.last_bytes = Gauge(
            "fieldhub_backup_last_bytes", "Size of the last successful backup", registry=registry
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Back up every interval from now on (the first one interval from now)."""
        self._task = asyncio.create_task(
            clock.run_every(self.interval_s, self.run_once, log, "scheduled backup"),
            name="backup.schedule",
        )

    async def stop(self) -> None:
        """Stop the timer; a backup under way is abandoned (its partial directory removed)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def run_once(self) -> Path | None:
        """Make one backup and rotate; its path, or None when it failed (logged, counted)."""
        stamp = datetime.datetime.now(datetime.UTC).strftime(STAMP_FORMAT)
        dest = self.directory / f"{NAME_PREFIX}{stamp}"
        try:
            await asyncio.to_thread(_prepare, self.directory)
            result = await make_backup(self.settings, dest)
        except (BackupError, StoreError, OSError, sqlite3.Error) as exc:
            self.failures.inc()
            log.error(
                "scheduled backup into %s failed: %s (earlier backups are kept; next try in "
                "%.3g h)",
                dest,
                exc,
                self.interval_s / S_PER_H,
            )
            return None
        except Exception:
            self.failures.inc()
            raise  # run_every logs it with its traceback
        self.last_success.set(time.time())
        self.last_bytes.set(result.bytes)
        removed = await asyncio.to_thread(rotate, self.directory, self.keep)
        log.info(
            "backup %s: %.1f MB in %.1f s%s",
            dest,
            result.bytes / 1e6,
            result.seconds,
            f"; removed {len(removed)} older (keeping {self.keep})" if removed else "",
        )
        return dest


def _prepare(directory: Path) -> None:
    """Make the backup directory (private) and remove what crashed backups left there."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in directory.glob(f".{NAME_PREFIX}*{PARTIAL_MARK}*"):
        pid = path.name.rsplit(PARTIAL_MARK, 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rotate(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete scheduled backups in `directory`; the deleted.
    Anything else there (a backup made by hand, other files) is left alone."""
    backups = sorted(
        p
        for p in directory.glob(f"{NAME_PREFIX}*")
        if p.is_dir() and not p.is_symlink() and (p / MANIFEST).is_file()
    )
    old = backups[: max(len(backups) - keep, 0)]
    for path in old:
        shutil.rmtree(path)
    return old
