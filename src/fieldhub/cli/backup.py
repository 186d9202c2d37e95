"""`fieldhub backup` and `fieldhub restore` (fieldhub.backup does the work; docs/backups.md)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from fieldhub.cli.common import fail, settings_from
from fieldhub.security.files import restrict_new_files

DataDir = Annotated[Path | None, typer.Option(help="fieldhub's data directory [FIELDHUB_DATA_DIR]")]
Db = Annotated[
    str | None, typer.Option(help="Database URL; default the data dir's SQLite [FIELDHUB_DB]")
]
# A database at least this many pages (4 KiB: 64 MiB) gets a progress bar on a terminal.
BAR_PAGES = 16_384
# Without a terminal (logs, cron), a progress line this often instead.
REPORT_S = 10.0


class _Progress:
    """The backup's output: a line per phase, and for a big SQLite database a progress bar (a
    terminal) or a line every REPORT_S (otherwise)."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self._terminal = sys.stdout.isatty()
        self._bar: Callable[[int], None] | None = None
        self._done = 0
        self._reported = time.monotonic()

    def step(self, text: str) -> None:
        if self._bar is not None:
            self._stack.close()  # ends the bar's line
            self._bar = None
        typer.echo(text)

    def pages(self, done: int, total: int) -> None:
        if total < BAR_PAGES:
            return
        if self._terminal:
            if self._bar is None:
                bar = self._stack.enter_context(
                    typer.progressbar(length=total, label="  pages", show_pos=True)
                )
                self._bar = bar.update
            self._bar(done - self._done)
        elif time.monotonic() - self._reported >= REPORT_S:
            self._reported = time.monotonic()
            typer.echo(f"  {done:,} of {total:,} pages ({done / total:.0%})")
        self._done = done


def backup(
    dest: Annotated[
        Path,
        typer.Argument(
            metavar="DEST", help="A new directory for the backup, e.g. backups/fieldhub-2026-12-05"
        ),
    ],
    data_dir: DataDir = None,
    db: Db = None,
) -> None:
    """Back up the database and the data dir's models, certificates and secrets into DEST, then
    verify the copy (docs/backups.md). fieldhub may be running.

    Exit status: 0 written and verified; 1 failed (nothing left at DEST); 2 refused, nothing
    written (DEST exists, not a fieldhub database).
    """
    from fieldhub.backup.contents import BackupError, BackupRefused
    from fieldhub.backup.make import make_backup
    from fieldhub.store.types import StoreError

    restrict_new_files()  # the backup holds password hashes and private keys
    settings = settings_from(data_dir=data_dir, db=db)
    with contextlib.ExitStack() as stack:
        try:
            result = asyncio.run(make_backup(settings, dest, progress=_Progress(stack)))
        except BackupRefused as exc:
            raise fail(str(exc), 2) from None
        except (BackupError, StoreError, OSError) as exc:
            raise fail(f"the backup failed, nothing was kept at {dest}: {exc}", 1) from None
        except KeyboardInterrupt:
            raise fail(f"interrupted: nothing was kept at {dest}", 1) from None
    counts = result.manifest.facts.counts
    if result.verification is not None:
        bad = [c.table for c in result.verification.counts if not c.ok]
        typer.echo(
            f"verified: integrity_check ok; rows per table equal to the database's snapshot "
            f"({sum(counts.values()):,} rows, {counts.get('readings', 0):,} readings); "
            f"{len(result.verification.series)} series compared, "
            f"{len(bad)} differ"
        )
    else:
        typer.echo(
            f"verified: pg_restore reads the dump; {sum(counts.values()):,} rows "
            f"({counts.get('readings', 0):,} readings) in its snapshot"
        )
    for path in result.skipped:
        typer.echo(f"  skipped {path}: not a regular file (symlinks are not followed)")
    parts = ", ".join(result.manifest.parts) or "no other files"
    typer.echo(
        f"done: {dest} ({result.bytes / 1e6:,.1f} MB: the database and {parts}) in "
        f"{result.seconds:.1f} s"
    )


def restore(
    source: Annotated[
        Path, typer.Argument(metavar="SRC", help="A directory `fieldhub backup` wrote")
    ],
    data_dir: DataDir = None,
    db: Db = None,
) -> None:
    """Restore a backup into a stopped install whose database is empty, then verify it with the
    counts and sums `fieldhub migrate` uses (docs/backups.md).

    Exit status: 0 restored and verified; 1 failed, or the verification found a difference;
    2 refused, nothing changed (fieldhub running, a database that holds data, not a backup).
    """
    from fieldhub.backup.contents import BackupError, BackupRefused
    from fieldhub.backup.restore import restore_backup
    from fieldhub.store.types import StoreError

    restrict_new_files()
    settings = settings_from(data_dir=data_dir, db=db)
    typer.echo(f"restoring {source} into {settings.data_dir}")
    try:
        result = asyncio.run(restore_backup(settings, source))
    except BackupRefused as exc:
        raise fail(str(exc), 2) from None
    except (BackupError, StoreError, OSError) as exc:
        raise fail(f"the restore failed: {exc}", 1) from None
    except KeyboardInterrupt:
        raise fail(
            "interrupted: the restore may be partial; empty the target database (a new "
            "--data-dir, or drop and recreate the PostgreSQL database) and restore again",
            1,
        ) from None
    check = result.verification
    typer.echo(f"\n  {'table':<17} {'backup':>12} {'restored':>12}")
    for count in check.counts:
        mark = "" if count.ok else "  DIFFERS"
        typer.echo(f"  {count.table:<17} {count.source:>12,} {count.target:>12,}{mark}")
    bad = [s for s in check.series if not s.ok]
    typer.echo(
        f"series compared (count, min, max, sum): {len(check.series)} of "
        f"{check.series_total:,}, {len(bad)} differ"
    )
    for series in bad:
        typer.echo(f"  {series.device} {series.metric}: backup {series.source}, {series.target}")
    if result.moved_aside is not None:
        typer.echo(f"what the install had of {', '.join(result.parts)} is in {result.moved_aside}")
    if not check.ok:
        raise fail("the restored database differs from the backup (see above)", 1)
    typer.echo(
        f"done in {result.seconds:.1f} s: the database and {', '.join(result.parts) or 'no files'}"
        f"; start fieldhub with --data-dir {settings.data_dir}"
    )
