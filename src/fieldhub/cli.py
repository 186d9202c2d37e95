"""The `fieldhub` command line. Commands stay synchronous and call `asyncio.run` themselves
(Typer never awaits an `async def` command: it exits 0 without running it; docs/field-notes.md)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from pydantic import ValidationError

from fieldhub import __version__
from fieldhub.config import PREFERRED_HTTP_PORT, PREFERRED_MQTT_PORT, Settings
from fieldhub.net import free_port, port_is_free

app = typer.Typer(
    name="fieldhub",
    help="An open platform for fleets of ESP32 sensor and actuator nodes.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _settings(**flags: Any) -> Settings:
    """Settings from flags over FIELDHUB_* variables; validation errors become one clear message."""
    given = {key: value for key, value in flags.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise _fail(
            "invalid settings (flags or FIELDHUB_* variables):\n" + "\n".join(lines)
        ) from None


def _choose_port(explicit: int | None, preferred: int, what: str, flag: str) -> int:
    if explicit is not None:
        if not port_is_free("127.0.0.1", explicit):
            raise _fail(
                f"{what} port {explicit} is already in use; pick another with {flag} or omit it"
            )
        return explicit
    if port_is_free("127.0.0.1", preferred):
        return preferred
    chosen = free_port()
    typer.echo(f"{what} port {preferred} is in use; using {chosen} instead ({flag} to choose)")
    return chosen


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option(help="Also run simulated devices so there is data to see")
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Database and broker state [FIELDHUB_DATA_DIR]")
    ] = None,
    db: Annotated[
        str | None, typer.Option(help="Database URL, e.g. sqlite:///data/fieldhub.db")
    ] = None,
    mqtt_url: Annotated[
        str | None, typer.Option(help="Use this external broker instead of the embedded one")
    ] = None,
    mqtt_port: Annotated[
        int | None, typer.Option(help="Port of the embedded broker (default 1883 or free)")
    ] = None,
    http_host: Annotated[str | None, typer.Option(help="Address the HTTP API listens on")] = None,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP port (default 8000 or a free one)")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error")] = None,
    ingest: Annotated[
        bool | None,
        typer.Option(
            "--ingest/--no-ingest",
            help="--no-ingest: API and dashboard only, beside `fieldhub ingest` workers that "
            "store what the broker delivers (needs --mqtt-url and --db)",
        ),
    ] = None,
) -> None:
    """Run the platform: embedded broker (unless --mqtt-url), ingest, storage and the HTTP API."""
    settings = _settings(
        data_dir=data_dir,
        db=db,
        mqtt_url=mqtt_url,
        mqtt_port=mqtt_port,
        http_host=http_host,
        http_port=http_port,
        log_level=log_level,
        ingest=ingest,
    )
    _configure_logging(settings.log_level)
    if not settings.ingest and (settings.mqtt_url is None or settings.db is None):
        raise _fail(
            "--no-ingest serves what `fieldhub ingest` workers store: give it their broker "
            "(--mqtt-url mqtt://host:port) and their database (--db postgresql://...)"
        )
    embedded_port = None
    if settings.mqtt_url is None:
        embedded_port = _choose_port(settings.mqtt_port, PREFERRED_MQTT_PORT, "MQTT", "--mqtt-port")
    port = _choose_port(settings.http_port, PREFERRED_HTTP_PORT, "HTTP", "--http-port")
    from fieldhub.broker.errors import BrokerError
    from fieldhub.server import serve
    from fieldhub.store.types import StoreError

    try:
        asyncio.run(serve(settings, http_port=port, mqtt_port=embedded_port, demo=demo))
    except BrokerError as exc:
        raise _fail(str(exc), 1) from None
    except StoreError as exc:
        raise _fail(str(exc), 1) from None
    except KeyboardInterrupt:
        pass


@app.command()
def sim(
    mqtt_url: Annotated[str, typer.Option(help="Broker to publish to")] = "mqtt://127.0.0.1:1883",
    devices: Annotated[
        int, typer.Option(min=1, max=10_000, help="Number of simulated devices")
    ] = 5,
    rate: Annotated[
        float,
        typer.Option(
            min=0.001,
            max=100.0,
            help="Messages per second per native device and readings gateway (fastapi, "
            "iot-node and sensor devices keep their firmware's own periods)",
        ),
    ] = 1.0,
    profile: Annotated[
        str,
        typer.Option(
            help="native, readings, fastapi, iot-node, sensor, or mixed (cycles through all)"
        ),
    ] = "native",
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Stop after this many seconds")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the sensor models")] = 0,
) -> None:
    """Simulated devices publishing like real firmware (demos and functional tests; load
    testing lives in bench/)."""
    from fieldhub.mqtt.endpoint import MqttUrlError, parse_mqtt_url
    from fieldhub.sim.fleet import SIM_PROFILES, run_sim

    # The typed profile itself (not the str), so mypy knows it is one of SIM_PROFILES.
    kind = next((known for known in SIM_PROFILES if known == profile), None)
    if kind is None:
        raise _fail(f"--profile {profile!r}: choose one of {', '.join(SIM_PROFILES)}")
    try:
        endpoint = parse_mqtt_url(mqtt_url)
    except MqttUrlError as exc:
        raise _fail(str(exc)) from None
    _configure_logging("info")
    stop = threading.Event()
    try:
        stats = run_sim(
            endpoint=endpoint,
            profile=kind,
            devices=devices,
            rate_hz=rate,
            duration_s=duration,
            stop=stop,
            seed=seed,
            log=typer.echo,
        )
    except KeyboardInterrupt:
        stop.set()
        return
    typer.echo(f"sent {stats.sent}, acked {stats.acked}, failed {stats.failed}")


@contextlib.contextmanager
def _fieldhub_http(
    request: urllib.request.Request, *, url: str, timeout: float
) -> Iterator[http.client.HTTPResponse]:
    """An HTTP call to fieldhub at `url`, its open response to read inside the `with`.

    Failures exit 2 with one line: a 4xx/5xx with fieldhub's own error message, an unreachable
    server, or a connection that broke while the answer was being read.
    """
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise _fail(f"{exc.code}: {message}") from None
    except ValueError as exc:  # not an http(s) URL
        raise _fail(f"--url {url!r}: {exc}") from None
    except OSError as exc:
        raise _fail(f"cannot reach fieldhub at {url} ({exc}); is `fieldhub up` running?") from None
    with response:
        try:
            yield response
        except (OSError, http.client.HTTPException) as exc:
            raise _fail(f"the connection to fieldhub at {url} broke mid-answer ({exc!r})") from None


# `fieldhub export`: bytes read per call, and the longest silence from the server accepted.
EXPORT_READ_BYTES = 256 * 1024
EXPORT_READ_TIMEOUT_S = 300.0


def _param(text: str) -> tuple[str, Any]:
    """`key=value`; the value is JSON when it parses (`40`, `true`, `"on"`), else the text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise _fail(f"parameter {text!r} is not key=value (e.g. position=40)")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


@app.command()
def command(
    device: Annotated[str, typer.Argument(help="Device id (any MAC spelling)")],
    name: Annotated[str, typer.Argument(help="Command name, e.g. set_window")],
    params: Annotated[
        list[str] | None, typer.Argument(help="Parameters as key=value, e.g. position=40")
    ] = None,
    url: Annotated[str, typer.Option(help="fieldhub's HTTP address")] = "http://127.0.0.1:8000",
    wait: Annotated[
        float, typer.Option(min=0, max=30, help="Seconds to wait for the device's answer")
    ] = 10.0,
    timeout: Annotated[
        float | None, typer.Option(min=0.5, max=3600, help="Seconds the device has to answer")
    ] = None,
) -> None:
    """Send a command to a device and print how it ended (docs/commands.md).

    Exit status: 0 succeeded, 1 failed/timed out/expired/cancelled or still open after --wait,
    2 refused by fieldhub (the message says why).
    """
    body: dict[str, Any] = {"name": name, "params": dict(_param(p) for p in params or [])}
    if timeout is not None:
        body["timeout_s"] = timeout
    target = (
        f"{url.rstrip('/')}/api/v1/devices/{urllib.parse.quote(device, safe='')}/commands"
        f"?wait_s={wait:g}"
    )
    request = urllib.request.Request(
        target,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with _fieldhub_http(request, url=url, timeout=wait + 10) as response:
        answer = json.loads(response.read())
    for step in answer.get("history") or []:
        typer.echo(f"{step['at']}  {step['state']:<10} {step['detail']}")
    state = answer["state"]
    if answer.get("result") is not None:
        typer.echo(f"result: {json.dumps(answer['result'])}")
    if state not in ("succeeded", "failed", "timed_out", "expired", "cancelled"):
        typer.echo(
            f"still {state} after {wait:g} s; follow it: GET {target.split('?')[0]}/{answer['id']}"
        )
    raise typer.Exit(0 if state == "succeeded" else 1)


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


@app.command()
def export(
    url: Annotated[str, typer.Option(help="fieldhub's HTTP address")] = "http://127.0.0.1:8000",
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
            _fieldhub_http(request, url=url, timeout=EXPORT_READ_TIMEOUT_S)
        )
        where = partial or output
        try:
            sink: BinaryIO = (
                sys.stdout.buffer if where is None else stack.enter_context(where.open("wb"))
            )
        except OSError as exc:
            raise _fail(f"cannot write {where}: {exc}") from None
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
                raise _fail(f"cannot write {where or 'stdout'}: {exc}") from None
            progress.add(chunk)
        try:
            sink.flush()
            if partial is not None and output is not None:
                sink.close()
                partial.replace(output)
        except OSError as exc:
            raise _fail(f"cannot write {output or 'stdout'}: {exc}") from None
    progress.done("stdout" if output is None else str(output))


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


@app.command()
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
            raise _fail(str(exc), 2) from None
        except StoreError as exc:
            raise _fail(str(exc), 1) from None
        except KeyboardInterrupt:
            raise _fail(
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
        raise _fail(
            "the SQLite database changed while it was copied (is fieldhub still running on it?): "
            "the target holds its state from the start. Stop fieldhub, empty the target and "
            "migrate again",
            1,
        )
    if not result.ok:
        raise _fail("the copy differs from the source (see above)", 1)
    typer.echo(
        f"done: {result.rows:,} rows in {result.seconds:.1f} s; start fieldhub with "
        f"--db {safe_url(target)}"
    )


@app.command()
def ingest(
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes sharing one subscription")
    ] = 1,
    db: Annotated[
        str | None, typer.Option(help="Database URL (postgresql://... for several workers)")
    ] = None,
    mqtt_url: Annotated[
        str | None, typer.Option(help="The broker the workers share (required)")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error")] = None,
    worker_index: Annotated[
        int | None, typer.Option(hidden=True, help="Run as worker N (set by the supervisor)")
    ] = None,
) -> None:
    """Run ingest only (no HTTP API): N workers on one MQTT shared subscription, one database.

    The API then runs as its own process (`fieldhub up` against the same database and broker).
    Workers that die are started again; their persistent sessions keep what they had not
    stored. Scale-out shape and its limits: docs/scale-out.md.
    """
    settings = _settings(db=db, mqtt_url=mqtt_url, log_level=log_level)
    _configure_logging(settings.log_level)
    if settings.mqtt_url is None:
        raise _fail("fieldhub ingest needs the broker to share: --mqtt-url mqtt://host:port")
    if workers > 1 and not settings.db_url.startswith(("postgresql:", "postgres:")):
        raise _fail(
            "several workers need PostgreSQL (SQLite has one writer): "
            "--db postgresql://user@host:port/database"
        )
    from fieldhub.ingest.workers import WorkerSupervisor, retire_sessions, worker_main
    from fieldhub.store.types import StoreError

    if worker_index is not None:
        try:
            worker_main(settings, worker_index, workers)
        except StoreError as exc:
            raise _fail(str(exc), 1) from None
        return
    try:
        for index, held in retire_sessions(settings, workers):
            typer.echo(
                f"fieldhub ingest: worker {index} of an earlier run with more workers: stored "
                f"the {held:,} messages its session held and ended the session"
            )
    except (StoreError, OSError) as exc:
        raise _fail(f"could not check for sessions of an earlier run: {exc}", 1) from None
    # Flags reach the workers as the variables Settings reads.
    for name, value in (("DB", db), ("MQTT_URL", mqtt_url), ("LOG_LEVEL", log_level)):
        if value is not None:
            os.environ[f"FIELDHUB_{name}"] = value
    raise typer.Exit(WorkerSupervisor(workers).run())


@app.command()
def version() -> None:
    """Print the fieldhub version."""
    typer.echo(__version__)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
