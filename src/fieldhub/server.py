"""Serving the app with uvicorn, printing where everything listens, and the demo fleet."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from fieldhub import interpreter, logs
from fieldhub.app import create_app
from fieldhub.config import Settings
from fieldhub.net import is_loopback
from fieldhub.platform import Platform

if TYPE_CHECKING:
    # Only a type here: the simulator is imported when --demo asks for it.
    from fieldhub.sim.fleet import SimProfile

# Demo fleet: native devices plus one node of every legacy stack fieldhub replaces, so the fleet
# page shows each profile side by side; few enough devices for a laptop. Each kind is its own
# background fleet because `mixed` cycles kinds one by one and the demo wants more natives.
DEMO_FLEET: tuple[tuple[SimProfile, int], ...] = (
    ("native", 4),
    ("readings", 1),
    ("fastapi", 1),
    ("iot-node", 1),
    ("sensor", 1),
)
# Native telemetry and readings cycles every 2 s: lively charts without flooding the store. The
# fastapi, iot-node and sensor nodes run at their firmware's own periods (fieldhub.sim.fleet).
DEMO_RATE_HZ = 0.5


async def serve(
    settings: Settings,
    *,
    http_port: int,
    mqtt_port: int | None,
    demo: bool,
    mqtt_tls_port: int | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (uvicorn handles both and runs the lifespan shutdown).

    `sockets`: listeners bound before root was dropped (`fieldhub.security.run_as`); None:
    uvicorn binds `settings.http_host`:`http_port` itself."""
    interpreter.tune_for_service()
    platform = Platform(settings, mqtt_port=mqtt_port, mqtt_tls_port=mqtt_tls_port)
    # HTTPS when a certificate is configured (`fieldhub certs init`); uvicorn then marks every
    # request's scope "https", which is what makes session cookies Secure (request.url.scheme).
    scheme = "https" if settings.tls_cert is not None else "http"
    http_url = f"{scheme}://{settings.http_host}:{http_port}"

    def say(line: str) -> None:
        logs.say(line, settings.log_format)

    def ready() -> None:
        broker = "embedded Mosquitto" if platform.broker is not None else "external"
        say("fieldhub is running")
        say(f"  Dashboard: {http_url}/")
        say(f"  HTTP API: {http_url}  (OpenAPI docs at {http_url}/docs)")
        say(f"  MQTT broker: {_listeners(platform, settings)}  ({broker})")
        say(f"  Database: {settings.db_url}")
        if not settings.auth:
            say(
                "  Authentication: OFF (demo mode): anyone on this machine may read, command "
                "and publish as any device; it listens on 127.0.0.1 only"
            )
        else:
            say("  Authentication: on (docs/security.md)")
            for warning in _cleartext_warnings(settings):
                say(f"  Warning: {warning}")
        token = platform.auth.setup_url_token
        if token is not None:
            say(
                f"  No user yet: create the first admin at {http_url}/setup?token={token}\n"
                "  (this link works once, until fieldhub stops)"
            )
        if demo:
            _start_demo(platform, say)
        say("Press Ctrl-C to stop.")
        interpreter.freeze_startup_heap()

    app = create_app(platform, on_ready=ready)
    if settings.log_level != "debug":
        logging.getLogger("uvicorn.error").addFilter(_quiet_websocket_chatter)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=http_port,
        log_level=settings.log_level,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        # No logging config of uvicorn's own: its records go to the root logger's handler, in the
        # process's text or JSON format (fieldhub/logs.py). Its access log is off because the
        # request-id middleware writes a fuller one (api/request_ids.py: duration, request id).
        log_config=None,
        access_log=False,
        # No permessage-deflate: it compresses each viewer's copy of a shared live frame
        # separately, ~9 ms CPU per viewer-second at 10k readings/s (bench/live.py), which 50
        # wall screens turn into half a core. Dashboards run on a LAN; bytes are cheap there.
        ws_per_message_deflate=False,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )
    await uvicorn.Server(config).serve(sockets=sockets)


def _cleartext_warnings(settings: Settings) -> list[str]:
    """Listeners the network can reach without TLS: passwords and tokens would cross it in the
    clear. Said at every start, not refused: a trusted LAN or a TLS proxy in front is a choice."""
    warnings = []
    if settings.tls_cert is None and not is_loopback(settings.http_host):
        warnings.append(
            f"HTTP on {settings.http_host} without TLS: passwords, cookies and tokens cross the "
            "network in the clear (`fieldhub certs init`, then --tls-cert/--tls-key, or a TLS "
            "proxy in front)"
        )
    embedded_on_network = settings.mqtt_url is None and not is_loopback(settings.mqtt_host)
    if embedded_on_network and settings.tls_cert is None:
        warnings.append(
            f"MQTT on {settings.mqtt_host} without TLS: device secrets cross the network in the "
            "clear (a TLS listener comes with --tls-cert/--tls-key)"
        )
    return warnings


def _listeners(platform: Platform, settings: Settings) -> str:
    """The embedded broker's listeners as devices see them, or the external broker's URL."""
    broker = platform.broker
    if broker is None:
        return platform.mqtt_endpoint.url
    process = broker.process
    parts = [process.url]
    if process.tls is not None:
        host = f"[{process.host}]" if ":" in process.host else process.host
        parts.append(f"mqtts://{host}:{process.tls.port}")
    if process.legacy is not None:
        host = process.legacy.host
        host = f"[{host}]" if ":" in host else host
        parts.append(f"mqtt://{host}:{process.legacy.port} (legacy stacks, no credentials)")
    return ", ".join(parts)


def _quiet_websocket_chatter(record: logging.LogRecord) -> bool:
    """Drop uvicorn's per-connection WebSocket lines: a wall of dashboards would fill the log.
    They are access-log lines in all but name, and come back with --log-level debug."""
    message = record.getMessage()
    return not (
        message in ("connection open", "connection closed")
        or (message.endswith("[accepted]") and '"WebSocket ' in message)
    )


def _start_demo(platform: Platform, say: Callable[[str], None]) -> None:
    from fieldhub.sim.fleet import start_sim_in_background

    quiet = logging.getLogger("fieldhub.sim").debug
    threads = [
        start_sim_in_background(
            endpoint=platform.mqtt_endpoint,
            profile=profile,
            devices=devices,
            rate_hz=DEMO_RATE_HZ,
            log=quiet,
            # The Flask stack's gateways also report a temperature, so theirs has a chart.
            readings_temperature=profile == "readings",
        )
        for profile, devices in DEMO_FLEET
    ]
    described = ", ".join(f"{devices} {profile}" for profile, devices in DEMO_FLEET)
    say(f"  Demo: simulated devices publishing ({described})")

    def stop_demo() -> None:
        for _, stop in threads:
            stop.set()
        for thread, _ in threads:
            thread.join(timeout=5)

    platform.on_stop.append(stop_demo)
