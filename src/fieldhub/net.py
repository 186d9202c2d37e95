"""Small TCP helpers: pick a free port, probe a bind, wait for a listener.

Used by the embedded broker supervisor (is the port free before we spawn
Mosquitto? is it listening yet?) and by tests that need private ports.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time

# How long one connection attempt may take on a local address. Loopback answers
# (accept or RST) in microseconds; the bound only matters for a filtered remote
# host, where a long connect would overshoot the caller's deadline.
CONNECT_ATTEMPT_TIMEOUT_S = 0.5

# Pause between two connection attempts while waiting for a listener. Mosquitto
# binds within ~10-30 ms of exec on our machines: 20 ms keeps the added startup
# latency small without spinning a CPU core the broker itself needs.
PORT_POLL_INTERVAL_S = 0.02


def _family_for(host: str) -> socket.AddressFamily:
    """Return the address family a literal or resolvable `host` binds with."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return infos[0][0]


def is_loopback(host: str) -> bool:
    """True when `host` is a loopback address (127.0.0.0/8, ::1) or `localhost`: only this
    machine can reach a listener there. Names other than localhost count as reachable."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now.

    The kernel picks it (bind to port 0), so two callers never get the same port
    while both are bound; after we close the socket another process may still
    take it before the caller binds. Callers that spawn a server therefore check
    the outcome (the broker supervisor reports a taken port as a start error).
    """
    with socket.socket(_family_for(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def bind_error(host: str, port: int) -> OSError | None:
    """Try to bind `host:port` the way a server would; return the error, or None.

    SO_REUSEADDR is set because Mosquitto (like most servers) sets it: a port
    held only by TIME_WAIT connections is then free for the server, and a port
    with a live listener (on `host` or on the wildcard address) still fails with
    EADDRINUSE, so the probe predicts what the real bind will do.
    """
    try:
        family = _family_for(host)
    except OSError as exc:  # socket.gaierror: the host does not resolve
        return exc
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def port_is_free(host: str, port: int) -> bool:
    """Return True if a server could bind `host:port` now (see `bind_error`)."""
    return bind_error(host, port) is None


def describe_bind_error(host: str, port: int, exc: OSError) -> str:
    """Explain a failed bind of `host:port` in words an operator can act on."""
    if exc.errno == errno.EADDRINUSE:
        return f"{host}:{port} is already in use by another process"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine, so port {port} cannot be bound there"
    if exc.errno == errno.EACCES:
        return f"binding {host}:{port} needs privileges this process lacks (ports < 1024)"
    return f"cannot bind {host}:{port}: {exc}"


def can_connect(host: str, port: int, *, timeout_s: float = CONNECT_ATTEMPT_TIMEOUT_S) -> bool:
    """Make one TCP connection attempt to `host:port`; True if it was accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """Block until `host:port` accepts TCP connections; False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if can_connect(host, port, timeout_s=max(0.001, min(CONNECT_ATTEMPT_TIMEOUT_S, remaining))):
            return True
        if time.monotonic() + PORT_POLL_INTERVAL_S > deadline:
            return False
        time.sleep(PORT_POLL_INTERVAL_S)


async def async_can_connect(
    host: str, port: int, *, timeout_s: float = CONNECT_ATTEMPT_TIMEOUT_S
) -> bool:
    """Make one TCP connection attempt without blocking the event loop."""
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        # The peer may reset the connection we opened only to probe it; the
        # probe already succeeded, so a reset on close changes nothing.
        pass
    return True


async def async_wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """Wait until `host:port` accepts TCP connections; False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        attempt_s = max(0.001, min(CONNECT_ATTEMPT_TIMEOUT_S, remaining))
        if await async_can_connect(host, port, timeout_s=attempt_s):
            return True
        if time.monotonic() + PORT_POLL_INTERVAL_S > deadline:
            return False
        await asyncio.sleep(PORT_POLL_INTERVAL_S)
