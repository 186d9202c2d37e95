"""`fieldhub sim`: simulated devices publishing like real firmware."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from fieldhub.cli.common import configure_logging, fail


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
        raise fail(f"--profile {profile!r}: choose one of {', '.join(SIM_PROFILES)}")
    try:
        endpoint = parse_mqtt_url(mqtt_url)
    except MqttUrlError as exc:
        raise fail(str(exc)) from None
    configure_logging("info")
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
