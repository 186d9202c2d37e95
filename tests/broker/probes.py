"""Probes the broker tests share: a raw MQTT handshake, paho clients, waiting, process checks."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Protocol

import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion

# Deadline for anything that should happen "soon" (a restart, a message). Tests
# poll for the condition and return as soon as it holds; this only bounds a hang.
DEADLINE_S = 10.0
POLL_S = 0.02

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


class Listener(Protocol):
    """Where a broker listens (a MosquittoProcess or a BrokerProcess)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


def mqtt_connect_packet(client_id: str) -> bytes:
    """Hand-built MQTT 3.1.1 CONNECT: clean session, keepalive 60 s."""
    cid = client_id.encode()
    variable_header = b"\x00\x04MQTT" + bytes([4, 0x02]) + (60).to_bytes(2, "big")
    payload = len(cid).to_bytes(2, "big") + cid
    remaining = variable_header + payload
    assert len(remaining) < 128  # one-byte remaining length
    return bytes([0x10, len(remaining)]) + remaining


def mqtt_handshake(host: str, port: int) -> bytes:
    """Send CONNECT and return the 4 bytes the broker answers with."""
    with socket.create_connection((host, port), timeout=DEADLINE_S) as sock:
        sock.sendall(mqtt_connect_packet("fieldhub-test"))
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                break
            answer += chunk
        return answer


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S} s waiting for {what}")
        time.sleep(POLL_S)


async def async_wait_until(condition: Callable[[], bool], what: str) -> None:
    """`wait_until` for async tests: yields to the event loop while polling."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def is_gone(pid: int) -> bool:
    """True if `pid` has exited (a zombie counts: it no longer runs)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def mqtt_client(broker: Listener, **kwargs: object) -> mqtt.Client:
    """A connected paho client running its network loop in a thread."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, **kwargs)  # type: ignore[arg-type]
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def stop_client(client: mqtt.Client) -> None:
    """Disconnect first: it wakes the network thread, so loop_stop() is instant."""
    client.disconnect()
    client.loop_stop()
