"""`fieldhub sim`: simulated devices publishing like real firmware."""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from typing import Annotated

import typer

from fieldhub.cli.api_client import TokenOption, fieldhub_http
from fieldhub.cli.common import configure_logging, fail

PROVISION_TIMEOUT_S = 15.0


def _provision(url: str, token: str | None, device_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Broker credentials for each simulated native device, issued by fieldhub's API (each call
    replaces the device's previous secret): simulated devices log in as real ones do."""
    logins: dict[str, tuple[str, str]] = {}
    for device_id in device_ids:
        path = f"/api/v1/devices/{urllib.parse.quote(device_id, safe='')}/credentials"
        request = urllib.request.Request(f"{url.rstrip('/')}{path}", method="POST")
        with fieldhub_http(request, url=url, token=token, timeout=PROVISION_TIMEOUT_S) as answer:
            issued = json.loads(answer.read())
        logins[device_id] = (issued["username"], issued["password"])
    return logins


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
            help="native, readings, fastapi, iot-node, sensor, mixed (cycles through all), or "
            "room (sensor nodes in simulated rooms whose window matters: src/fieldhub/sim/room.py)"
        ),
    ] = "native",
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Stop after this many seconds")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the sensor models")] = 0,
    url: Annotated[
        str | None,
        typer.Option(
            help="fieldhub's HTTP address: give native devices broker credentials through its "
            "API first (authentication on; needs an admin --token)"
        ),
    ] = None,
    token: TokenOption = None,
    speedup: Annotated[
        float,
        typer.Option(
            min=0.001,
            max=100_000.0,
            help="room: simulated seconds of the room per wall second (360: an hour per 10 s)",
        ),
    ] = 1.0,
    start_hour: Annotated[
        float, typer.Option(min=0.0, max=24.0, help="room: the rooms' time of day at the start")
    ] = 12.0,
    period: Annotated[
        float,
        typer.Option(
            min=0.1, max=3600.0, help="room: seconds between a node's reading cycles (firmware: 10)"
        ),
    ] = 10.0,
    persons: Annotated[
        bool,
        typer.Option(
            help="room: a person now and then moves the window, through fieldhub's API "
            "(a manual set_window) with --url, else by hand (fieldhub does not see it)"
        ),
    ] = True,
    legacy_mqtt_url: Annotated[
        str | None,
        typer.Option(
            help="fieldhub's legacy listener, for the earlier stacks' kinds (the fastapi kind "
            "logs in with its firmware's compiled-in login there); default --mqtt-url"
        ),
    ] = None,
) -> None:
    """Simulated devices publishing like real firmware (demos and functional tests; load
    testing lives in bench/)."""
    from fieldhub.mqtt.endpoint import MqttUrlError, parse_mqtt_url
    from fieldhub.sim.fleet import NATIVE_ID_FORMAT, SIM_PROFILES, native_count, run_sim

    if profile == "room":
        _sim_rooms(
            mqtt_url=legacy_mqtt_url or mqtt_url,
            devices=devices,
            duration=duration,
            seed=seed,
            period=period,
            speedup=speedup,
            start_hour=start_hour,
            persons=persons,
            url=url,
            token=token,
        )
        return
    # The typed profile itself (not the str), so mypy knows it is one of SIM_PROFILES.
    kind = next((known for known in SIM_PROFILES if known == profile), None)
    if kind is None:
        raise fail(f"--profile {profile!r}: choose one of {', '.join(SIM_PROFILES)}, room")
    try:
        endpoint = parse_mqtt_url(mqtt_url)
        legacy = parse_mqtt_url(legacy_mqtt_url) if legacy_mqtt_url else None
    except MqttUrlError as exc:
        raise fail(str(exc)) from None
    configure_logging("info")
    logins: dict[str, tuple[str, str]] = {}
    if url is not None:
        ids = [NATIVE_ID_FORMAT.format(n + 1) for n in range(native_count(kind, devices))]
        logins = _provision(url, token, ids)
        typer.echo(f"sim: issued broker credentials to {len(logins)} native devices")
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
            logins=logins,
            legacy_endpoint=legacy,
        )
    except KeyboardInterrupt:
        stop.set()
        return
    typer.echo(f"sent {stats.sent}, acked {stats.acked}, failed {stats.failed}")


def _sim_rooms(
    *,
    mqtt_url: str,
    devices: int,
    duration: float | None,
    seed: int,
    period: float,
    speedup: float,
    start_hour: float,
    persons: bool,
    url: str | None,
    token: str | None,
) -> None:
    """`--profile room`: window-control nodes in simulated rooms (fieldhub.sim.room). A room
    node is the window-control stack's, so it goes to the legacy listener when one is given."""
    from fieldhub.mqtt.endpoint import MqttUrlError, parse_mqtt_url
    from fieldhub.sim.room import api_override, run_rooms

    try:
        endpoint = parse_mqtt_url(mqtt_url)
    except MqttUrlError as exc:
        raise fail(str(exc)) from None
    configure_logging("info")
    stop = threading.Event()
    try:
        stats, _nodes = run_rooms(
            endpoint=endpoint,
            devices=devices,
            stop=stop,
            duration_s=duration,
            seed=seed,
            period_s=period,
            speedup=speedup,
            start_hour=start_hour,
            persons=persons,
            override=api_override(url, token) if url is not None else None,
            log_line=typer.echo,
        )
    except KeyboardInterrupt:
        stop.set()
        return
    typer.echo(f"sent {stats.sent}, acked {stats.acked}, failed {stats.failed}")
