"""`fieldhub export`: readings as CSV or JSON lines from fieldhub's API to a file or stdout, with
a progress line on stderr."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from fieldhub.cli.api_client import DEFAULT_URL, TokenOption, UrlOption, fieldhub_http
from fieldhub.cli.common import fail

# `fieldhub export`: bytes read per call, and the longest silence from the server accepted.
EXPORT_READ_BYTES = 256 * 1024
EXPORT_READ_TIMEOUT_S = 300.0


def _comma_list(values: list[str] | None) -> str | None:
    """Repeated and comma-separated option values as one comma-separated string."""
    if not values:
        return None
    return ",".join(part.strip() for value in values for part in value.split(",") if part.strip())


def _size(count: int) -> str:
    """`812 B`, `1.4 MiB`: a byte count for people."""
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class _Progress:
    """Bytes and rows written so far, reported on stderr about once a second (one line kept
    up to date on a terminal, a line per report otherwise)."""

    def __init__(self, *, header_lines: int) -> None:
        self.header_lines = header_lines
        self.bytes = 0
        self.lines = 0
        self.began = self.reported = time.monotonic()
        self.terminal = sys.stderr.isatty()

    def add(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        self.lines += chunk.count(b"\n")
        now = time.monotonic()
        if now - self.reported >= 1.0:
            self.reported = now
            typer.echo(f"\r{self}" if self.terminal else str(self), err=True, nl=not self.terminal)

    def done(self, where: str) -> None:
        typer.echo(f"{chr(13) if self.terminal else ''}exported {self} to {where}", err=True)

    def __str__(self) -> str:
        rows = max(self.lines - self.header_lines, 0)
        return f"{_size(self.bytes)}, {rows:,} rows, {time.monotonic() - self.began:.1f} s"


def export(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    devices: Annotated[
        list[str] | None,
        typer.Option(help="Device ids, comma-separated or repeated (default: every device)"),
    ] = None,
    metrics: Annotated[
        list[str] | None,
        typer.Option(help="Metric names, comma-separated or repeated (default: all of them)"),
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="ISO 8601 or epoch time (default: 24 h before --end)")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="ISO 8601 or epoch time, exclusive (default: now)")
    ] = None,
    interval: Annotated[
        str | None, typer.Option(help="Aggregate into buckets (30s, 5m, 1h, 1d); default: raw")
    ] = None,
    agg: Annotated[
        str | None, typer.Option(help="avg, min, max, sum, count, first, last (default avg)")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="csv or jsonl (default: jsonl for -o *.jsonl or *.ndjson, else csv)"
        ),
    ] = None,
    layout: Annotated[
        str | None, typer.Option(help="wide or long (default: wide for csv, long for jsonl)")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout)")
    ] = None,
) -> None:
    """Export readings as CSV or JSON lines to a file or stdout (docs/export.md).

    Progress (bytes and rows so far) goes to stderr. -o FILE is written as
    FILE.part and renamed to FILE once the export is complete.

    Exit status: 0 complete; 1 stdout's reader closed it early (`| head`);
    2 refused, unreachable or cut short (the message says which; no FILE).
    """
    if fmt is None:
        jsonl = output is not None and output.suffix.lower() in (".jsonl", ".ndjson")
        fmt = "jsonl" if jsonl else "csv"
    query = {
        "devices": _comma_list(devices),
        "metrics": _comma_list(metrics),
        "start": start,
        "end": end,
        "interval": interval,
        "agg": agg,
        "format": fmt,
        "layout": layout,
    }
    target = f"{url.rstrip('/')}/api/v1/export?" + urllib.parse.urlencode(
        {key: value for key, value in query.items() if value is not None}
    )
    # A regular file is written as FILE.part and renamed when complete, so an export cut short
    # never looks whole; stdout, a pipe or a device (-o /dev/stdout) is written in place.
    in_place = output is None or (output.exists() and not output.is_file())
    partial = None if output is None or in_place else output.with_name(output.name + ".part")
    progress = _Progress(header_lines=1 if fmt == "csv" else 0)
    request = urllib.request.Request(target, method="GET")
    with contextlib.ExitStack() as stack:
        response = stack.enter_context(
            fieldhub_http(request, url=url, token=token, timeout=EXPORT_READ_TIMEOUT_S)
        )
        where = partial or output
        try:
            sink: BinaryIO = (
                sys.stdout.buffer if where is None else stack.enter_context(where.open("wb"))
            )
        except OSError as exc:
            raise fail(f"cannot write {where}: {exc}") from None
        if partial is not None:
            # Removed when the export fails (unlinking a renamed .part does nothing).
            stack.callback(partial.unlink, missing_ok=True)
        while chunk := response.read1(EXPORT_READ_BYTES):
            try:
                sink.write(chunk)
            except BrokenPipeError:
                # `fieldhub export | head`: the reader has what it wanted; no traceback at exit.
                if where is None:
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(1) from None
            except OSError as exc:
                raise fail(f"cannot write {where or 'stdout'}: {exc}") from None
            progress.add(chunk)
        try:
            sink.flush()
            if partial is not None and output is not None:
                sink.close()
                partial.replace(output)
        except OSError as exc:
            raise fail(f"cannot write {output or 'stdout'}: {exc}") from None
    progress.done("stdout" if output is None else str(output))
