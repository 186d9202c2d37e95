"""MQTT clients for the access-control tests: log in, publish, subscribe, see what arrives."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from broker.probes import DEADLINE_S, wait_until


@dataclass
class Client:
    """A paho client that records what it receives, its SUBACKs and its disconnects."""

    paho: mqtt.Client
    received: list[tuple[str, bytes]] = field(default_factory=list)
    granted: list[list[int]] = field(default_factory=list)
    connack: list[int] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def topics(self) -> list[str]:
        with self.lock:
            return [topic for topic, _ in self.received]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1, waiting for PUBACK (Mosquitto acks an unauthorised publish too, for 3.1.1)."""
        self.paho.publish(topic, payload, qos=1, retain=retain).wait_for_publish(DEADLINE_S)

    def subscribe(self, *filters: str) -> list[int]:
        """Subscribe QoS 1 and return the granted codes (0x80 = refused)."""
        before = len(self.granted)
        self.paho.subscribe([(f, 1) for f in filters])
        wait_until(lambda: len(self.granted) > before, "SUBACK")
        return self.granted[before]

    def stop(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def connect(
    host: str,
    port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    client_id: str | None = None,
    clean_session: bool = True,
    will: tuple[str, bytes] | None = None,
    tls_ca: Path | None = None,
    expect: int = 0,
) -> Client:
    """Connect and wait for the CONNACK; the return code must be `expect` (0: accepted)."""
    paho = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id if client_id is not None else f"t-{uuid.uuid4().hex[:10]}",
        protocol=mqtt.MQTTv311,
        clean_session=clean_session,
        reconnect_on_failure=False,
    )
    client = Client(paho)
    if username is not None:
        paho.username_pw_set(username, password)
    if tls_ca is not None:
        paho.tls_set(ca_certs=str(tls_ca))
    if will is not None:
        paho.will_set(will[0], will[1], qos=1, retain=True)

    def on_connect(*args: object) -> None:
        reason = args[3]
        assert isinstance(reason, ReasonCode)
        # paho reports a 3.1.1 CONNACK code as its MQTT 5 equivalent; keep the 3.1.1 number.
        client.connack.append(0 if not reason.is_failure else _V311.get(reason.value, 255))

    def on_subscribe(*args: object) -> None:
        codes = args[3]
        assert isinstance(codes, list)
        client.granted.append([c.value for c in codes])

    def on_message(_client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with client.lock:
            client.received.append((message.topic, bytes(message.payload)))

    paho.on_connect = on_connect
    paho.on_subscribe = on_subscribe
    paho.on_message = on_message
    paho.on_disconnect = lambda *_args: client.disconnected.set()
    paho.connect(host, port)
    paho.loop_start()
    wait_until(lambda: bool(client.connack), f"CONNACK on {host}:{port}")
    assert client.connack[0] == expect, f"CONNACK {client.connack[0]}, expected {expect}"
    if expect != 0:
        client.stop()
    return client


# MQTT 5 reason code -> MQTT 3.1.1 CONNACK return code, for the refusals Mosquitto sends.
_V311 = {0x84: 1, 0x85: 2, 0x88: 3, 0x86: 4, 0x87: 5}


def wait_received(client: Client, topic: str, what: str) -> None:
    wait_until(lambda: topic in client.topics(), what)


def settle() -> None:
    """A short pause where a test proves an absence after a sentinel already arrived."""
    time.sleep(0.05)
