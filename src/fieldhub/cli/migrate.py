"""`fieldhub migrate`: copy a SQLite installation into PostgreSQL (fieldhub.store.migrate does
the work), drawing its progress and printing its verification."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Annotated

import typer

from fieldhub.cli.common import fail

# `fieldhub migrate` draws a progress bar for readings and any table at least this long.
MIGRATE_BAR_ROWS = 100_000
# Without a terminal (logs, CI) a progress line instead, this often.
MIGRATE_REPORT_S = 10.0


def _shown(text: str | None) -> str | None:
    return text


class _MigrateProgress:
    """`fieldhub migrate`'s output: a line per table; for readings (and other long tables) a
    progress bar with rows/s on a terminal, a line every MIGRATE_REPORT_S otherwise."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self._terminal = sys.stdout.isatty()
        self._bar: Callable[[int, str], None] | None = None
        self._total = 0
        self._copied = 0
        self._started = self._reported = 0.0
        self.done = False

    def step(self, text: str) -> None:
        typer.echo(text)

    def committed(self) -> None:
        self.done = True
        typer.echo("committed")

    def table_started(self, table: str, rows: int) -> None:
        self._started = self._reported = time.monotonic()
        self._total, self._copied = rows, 0
        if self._terminal and rows and (table == "readings" or rows >= MIGRATE_BAR_ROWS):
            bar = self._stack.enter_context(
                typer.progressbar(length=rows, label=f"  {table:<17}", item_show_func=_shown)
            )

            def advance(rows: int, rate: str) -> None:
                bar.current_item = rate
                bar.update(rows)

            self._bar = advance

    def rows_copied(self, table: str, rows: int) -> None:
        self._copied += rows
        now = time.monotonic()
        rate = f"{self._copied / max(now - self._started, 1e-9):,.0f} rows/s"
        if self._bar is not None:
            self._bar(rows, rate)
        elif now - self._reported >= MIGRATE_REPORT_S:
            self._reported = now
            typer.echo(
                f"  {table:<17} {self._copied:>12,} of {self._total:,} rows "
                f"({self._copied / max(self._total, 1):.0%}), {rate}"
            )

    def table_done(self, table: str, rows: int, seconds: float) -> None:
        if self._bar is not None:
            self._stack.close()  # ends the bar's line
            self._bar = None
        rate = f"  ({rows / seconds:,.0f} rows/s)" if rows and seconds > 0.5 else ""
        typer.echo(f"  {table:<17} {rows:>12,} rows  {seconds:6.1f} s{rate}")


def migrate(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE", help="The SQLite database to copy, e.g. sqlite:///data/fieldhub.db"
        ),
    ],
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="An empty PostgreSQL database, e.g. postgresql://user@host:5432/fieldhub",
        ),
    ],
) -> None:
    """Copy a SQLite installation into an empty PostgreSQL database, then verify the copy
    (docs/migrate.md). Stop fieldhub first.

    Exit status: 0 copied and verified; 1 failed (rolled back) or the verification found a
    difference; 2 refused, nothing written (wrong URLs, a target that holds data).
    """
    from fieldhub.store.migrate import MigrationRefused, migrate_sqlite_to_postgres, safe_url
    from fieldhub.store.types import StoreError

    typer.echo(f"migrating {source} -> {safe_url(target)}")
    with contextlib.ExitStack() as stack:
        progress = _MigrateProgress(stack)
        try:
            result = asyncio.run(migrate_sqlite_to_postgres(source, target, progress=progress))
        except MigrationRefused as exc:
            raise fail(str(exc), 2) from None
        except StoreError as exc:
            raise fail(str(exc), 1) from None
        except KeyboardInterrupt:
            raise fail(
                "interrupted after the commit: the target holds the copy, not verified"
                if progress.done
                else "interrupted: nothing was committed to the target",
                1,
            ) from None
    typer.echo(f"\n  {'table':<17} {'sqlite':>12} {'postgresql':>12}")
    for count in result.counts:
        mark = "" if count.ok else "  DIFFERS"
        typer.echo(f"  {count.table:<17} {count.source:>12,} {count.target:>12,}{mark}")
    bad = [s for s in result.series if not s.ok]
    typer.echo(
        f"series compared (count, min, max, sum): {len(result.series)} of "
        f"{result.series_total:,}, {len(bad)} differ"
    )
    for check in bad:
        typer.echo(f"  {check.device} {check.metric}: sqlite {check.source}, pg {check.target}")
    if result.source_changed:
        raise fail(
            "the SQLite database changed while it was copied (is fieldhub still running on it?): "
            "the target holds its state from the start. Stop fieldhub, empty the target and "
            "migrate again",
            1,
        )
    if not result.ok:
        raise fail("the copy differs from the source (see above)", 1)
    typer.echo(
        f"done: {result.rows:,} rows in {result.seconds:.1f} s; start fieldhub with "
        f"--db {safe_url(target)}"
    )
