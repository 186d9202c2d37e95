"""`fieldhub up` and `fieldhub ingest`: running the platform, whole or as ingest workers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from fieldhub.cli.common import configure_logging, fail, settings_from
from fieldhub.config import (
    PREFERRED_HTTP_PORT,
    PREFERRED_MQTT_PORT,
    PREFERRED_MQTT_TLS_PORT,
    Settings,
)
from fieldhub.logs import LogFormat, say
from fieldhub.net import free_port, port_is_free
from fieldhub.security.files import restrict_new_files

# Default logins of the brokers fieldhub runs against, as placeholders are: refused with auth on.
DEFAULT_LOGINS = frozenset({"guest"})


def _refuse_placeholder_secrets(settings: Settings) -> None:
    """Outside demo mode, the broker and database URLs may not carry an empty, placeholder or
    default password: a fieldhub that requires credentials of everyone must not itself log in
    with `guest`/`changeme` (docs/security.md)."""
    from urllib.parse import unquote, urlsplit

    from fieldhub.security.passwords import PLACEHOLDERS

    if not settings.auth:
        return
    for flag, url in (("--mqtt-url", settings.mqtt_url), ("--db", settings.db)):
        if url is None:
            continue
        parts = urlsplit(url)
        if parts.username is None or parts.password is None:
            # No password in the URL: the server trusts the peer, or it comes from PGPASSWORD or
            # ~/.pgpass (docs/migrate.md), which is the recommended way.
            continue
        password = unquote(parts.password)
        if not password or password.lower() in PLACEHOLDERS | DEFAULT_LOGINS:
            raise fail(
                f"{flag} logs in as {parts.username!r} with an empty, placeholder or default "
                "password; give that account a real password (or run with --demo on 127.0.0.1)"
            )


def _choose_port(
    explicit: int | None,
    preferred: int,
    what: str,
    flag: str,
    host: str = "127.0.0.1",
    log_format: LogFormat = "text",
) -> int:
    if explicit is not None:
        if not port_is_free(host, explicit):
            raise fail(
                f"{what} port {explicit} is already in use; pick another with {flag} or omit it"
            )
        return explicit
    if port_is_free(host, preferred):
        return preferred
    chosen = free_port(host)
    say(f"{what} port {preferred} is in use; using {chosen} instead ({flag} to choose)", log_format)
    return chosen


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
    mqtt_host: Annotated[
        str | None,
        typer.Option(help="Address the embedded broker listens on (0.0.0.0: every interface)"),
    ] = None,
    mqtt_tls_port: Annotated[
        int | None, typer.Option(help="TLS listener of the embedded broker, e.g. 8883")
    ] = None,
    mqtt_legacy_port: Annotated[
        int | None,
        typer.Option(
            help="Listener for fleets flashed for the earlier stacks: no credentials, "
            "per-profile ACLs (docs/security.md); off unless given"
        ),
    ] = None,
    http_host: Annotated[str | None, typer.Option(help="Address the HTTP API listens on")] = None,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP port (default 8000 or a free one)")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Server certificate (PEM): HTTPS and MQTT over TLS")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM)")] = None,
    tls_ca: Annotated[
        Path | None, typer.Option(help="The CA that signed it (`fieldhub certs init`)")
    ] = None,
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth/--no-auth",
            help="Require credentials (default; --demo turns it off: 127.0.0.1 only)",
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error")] = None,
    log_format: Annotated[
        str | None,
        typer.Option(help="text, or json: one object a line with the ids [FIELDHUB_LOG_FORMAT]"),
    ] = None,
    ingest: Annotated[
        bool | None,
        typer.Option(
            "--ingest/--no-ingest",
            help="--no-ingest: API and dashboard only, beside `fieldhub ingest` workers that "
            "store what the broker delivers (needs --mqtt-url and --db)",
        ),
    ] = None,
    run_as: Annotated[
        str | None,
        typer.Option(
            help="Started as root: the user to run as after binding (default: fieldhub, else "
            "the data dir's owner; root keeps root) [FIELDHUB_RUN_AS]"
        ),
    ] = None,
    ml_mode: Annotated[
        str | None,
        typer.Option(
            help="The window loop for devices without their own setting: off, shadow (decide "
            "and record, never move; the default) or act (docs/ml.md) [FIELDHUB_ML_MODE]"
        ),
    ] = None,
) -> None:
    """Run the platform: embedded broker (unless --mqtt-url), ingest, storage and the HTTP API.

    Credentials are required unless --demo: the first start prints a one-time link that creates
    the first admin (docs/security.md).
    """
    # Before anything is created: the database, broker files and secrets are for us alone.
    restrict_new_files()
    if demo and auth is None:
        # The demo's simulated devices connect without credentials: demo mode is open, and the
        # settings refuse it on any address but loopback.
        auth = False
    if demo and ml_mode is None and not os.environ.get("FIELDHUB_ML_MODE"):
        # The demo's windows are simulated: the loop may move them, so it can be seen closing.
        ml_mode = "act"
    settings = settings_from(
        data_dir=data_dir,
        db=db,
        mqtt_url=mqtt_url,
        mqtt_port=mqtt_port,
        mqtt_host=mqtt_host,
        mqtt_tls_port=mqtt_tls_port,
        mqtt_legacy_port=mqtt_legacy_port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        auth=auth,
        http_host=http_host,
        http_port=http_port,
        log_level=log_level,
        log_format=log_format,
        ingest=ingest,
        run_as=run_as,
        ml_mode=ml_mode,
    )
    configure_logging(settings.log_level, settings.log_format)
    _refuse_placeholder_secrets(settings)
    if not settings.ingest and (settings.mqtt_url is None or settings.db is None):
        raise fail(
            "--no-ingest serves what `fieldhub ingest` workers store: give it their broker "
            "(--mqtt-url mqtt://host:port) and their database (--db postgresql://...)"
        )
    embedded_port = tls_port = None
    if settings.mqtt_url is None:
        embedded_port = _choose_port(
            settings.mqtt_port,
            PREFERRED_MQTT_PORT,
            "MQTT",
            "--mqtt-port",
            settings.mqtt_host,
            settings.log_format,
        )
        if settings.tls_cert is not None and settings.auth:
            # Demo mode's broker is anonymous on loopback: no TLS listener to protect there.
            tls_port = _choose_port(
                settings.mqtt_tls_port,
                PREFERRED_MQTT_TLS_PORT,
                "MQTT over TLS",
                "--mqtt-tls-port",
                settings.mqtt_host,
                settings.log_format,
            )
    port = _choose_port(
        settings.http_port,
        PREFERRED_HTTP_PORT,
        "HTTP",
        "--http-port",
        settings.http_host,
        settings.log_format,
    )
    from fieldhub.broker.errors import BrokerError
    from fieldhub.security.run_as import RunAsError, start_unprivileged
    from fieldhub.server import serve
    from fieldhub.store.types import StoreError

    try:
        # Started as root: binds the HTTP port, then runs as an unprivileged user from here on.
        sockets = start_unprivileged(settings, http_port=port)
    except (RunAsError, OSError) as exc:
        raise fail(str(exc), 1) from None
    try:
        asyncio.run(
            serve(
                settings,
                http_port=port,
                mqtt_port=embedded_port,
                mqtt_tls_port=tls_port,
                demo=demo,
                sockets=sockets,
            )
        )
    except BrokerError as exc:
        raise fail(str(exc), 1) from None
    except StoreError as exc:
        raise fail(str(exc), 1) from None
    except KeyboardInterrupt:
        pass


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
    log_format: Annotated[
        str | None,
        typer.Option(help="text, or json: one object a line with the ids [FIELDHUB_LOG_FORMAT]"),
    ] = None,
    worker_index: Annotated[
        int | None, typer.Option(hidden=True, help="Run as worker N (set by the supervisor)")
    ] = None,
) -> None:
    """Run ingest only (no HTTP API): N workers on one MQTT shared subscription, one database.

    The API then runs as its own process (`fieldhub up` against the same database and broker).
    Workers that die are started again; their persistent sessions keep what they had not
    stored. Scale-out shape and its limits: docs/scale-out.md.
    """
    restrict_new_files()  # the workers inherit it
    settings = settings_from(db=db, mqtt_url=mqtt_url, log_level=log_level, log_format=log_format)
    configure_logging(settings.log_level, settings.log_format)
    _refuse_placeholder_secrets(settings)
    if settings.mqtt_url is None:
        raise fail("fieldhub ingest needs the broker to share: --mqtt-url mqtt://host:port")
    if workers > 1 and not settings.db_url.startswith(("postgresql:", "postgres:")):
        raise fail(
            "several workers need PostgreSQL (SQLite has one writer): "
            "--db postgresql://user@host:port/database"
        )
    from fieldhub.ingest.workers import WorkerSupervisor, retire_sessions, worker_main
    from fieldhub.store.types import StoreError

    if worker_index is not None:
        try:
            worker_main(settings, worker_index, workers)
        except StoreError as exc:
            raise fail(str(exc), 1) from None
        return
    try:
        for index, held in retire_sessions(settings, workers):
            say(
                f"fieldhub ingest: worker {index} of an earlier run with more workers: stored "
                f"the {held:,} messages its session held and ended the session",
                settings.log_format,
            )
    except (StoreError, OSError) as exc:
        raise fail(f"could not check for sessions of an earlier run: {exc}", 1) from None
    # Flags reach the workers as the variables Settings reads.
    for name, value in (
        ("DB", db),
        ("MQTT_URL", mqtt_url),
        ("LOG_LEVEL", log_level),
        ("LOG_FORMAT", log_format),
    ):
        if value is not None:
            os.environ[f"FIELDHUB_{name}"] = value
    raise typer.Exit(WorkerSupervisor(workers, log_format=settings.log_format).run())
