"""The `fieldhub` command line. Commands stay synchronous and call `asyncio.run` themselves
(Typer never awaits an `async def` command: NOTES.md trap 11)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

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
    )
    _configure_logging(settings.log_level)
    embedded_port = None
    if settings.mqtt_url is None:
        embedded_port = _choose_port(settings.mqtt_port, PREFERRED_MQTT_PORT, "MQTT", "--mqtt-port")
    port = _choose_port(settings.http_port, PREFERRED_HTTP_PORT, "HTTP", "--http-port")
    from fieldhub.broker.supervisor import BrokerError
    from fieldhub.server import serve
    from fieldhub.store.base import StoreError

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
    from fieldhub.mqtt.client import MqttUrlError, parse_mqtt_url
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


@app.command()
def version() -> None:
    """Print the fieldhub version."""
    typer.echo(__version__)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
