"""MQTT 5 -> 3.1.1 fallback of fieldhub's MQTT clients (fieldhub.mqtt.paho_client._Client).

The two ways a 3.1.1-only broker answers an MQTT 5 CONNECT are played by a scripted broker on a
real loopback socket: RabbitMQ's MQTT plugin (before 3.13) closes the connection without a
CONNACK; Mosquitto 1.x answers CONNACK "unacceptable protocol version". A real RabbitMQ run is
in tests/integration/test_rabbitmq_broker.py; here the real Mosquitto checks that a broker that
does speak MQTT 5 keeps getting it.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Literal

import pytest

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.mqtt.publisher import MqttPublisher
from fieldhub.mqtt.subscriber import MqttSubscriber
from support.waiting import wait_until

Refusal = Literal["close", "connack"]
CONNECT, SUBSCRIBE, DISCONNECT = 0x10, 0x82, 0xE0
CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_BAD_PROTOCOL = b"\x20\x02\x00\x01"  # MQTT 3.1.1: unacceptable protocol version
# Connect, one reconnect delay (RECONNECT_MIN_DELAY_S = 1 s) and a second connect.
DEADLINE_S = 10.0


def _read_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client closed")
        data += chunk
    return data


def _read_packet(conn: socket.socket) -> tuple[int, bytes]:
    header = _read_exact(conn, 1)[0]
    length, shift = 0, 0
    while True:
        byte = _read_exact(conn, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return header, _read_exact(conn, length)


class ScriptedBroker:
    """Speaks just enough MQTT 3.1.1 (CONNECT, SUBSCRIBE) and refuses MQTT 5 as told."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        self.levels: list[int] = []  # protocol level of every CONNECT, in order
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="scripted-broker", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed by stop()
            self._conns.append(conn)
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn:
            try:
                header, body = _read_packet(conn)
                assert header & 0xF0 == CONNECT
                level = body[6]  # after the 2-byte length and b"MQTT"
                self.levels.append(level)
                if level == 5:
                    if self.refusal == "connack":
                        conn.sendall(CONNACK_BAD_PROTOCOL)
                    return  # "close": hang up without a word, as RabbitMQ does
                conn.sendall(CONNACK_OK)
                while True:
                    header, body = _read_packet(conn)
                    if header == SUBSCRIBE:
                        granted = self._granted_qos(body[2:])
                        conn.sendall(bytes([0x90, 2 + len(granted)]) + body[:2] + granted)
                    elif header == DISCONNECT:
                        return
            except (ConnectionError, OSError):
                return

    @staticmethod
    def _granted_qos(payload: bytes) -> bytes:
        granted = b""
        while payload:
            size = int.from_bytes(payload[:2], "big")
            granted += bytes([min(payload[2 + size], 1)])
            payload = payload[3 + size :]
        return granted

    def stop(self) -> None:
        self._server.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture(params=["close", "connack"])
def broker(request: pytest.FixtureRequest) -> Iterator[ScriptedBroker]:
    """A 3.1.1-only broker refusing MQTT 5 the RabbitMQ way and the Mosquitto 1.x way."""
    scripted = ScriptedBroker(request.param)
    yield scripted
    scripted.stop()


def test_publisher_falls_back_to_311(
    broker: ScriptedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """An MQTT 5 publisher refused by a 3.1.1-only broker connects again with 3.1.1 and says why."""
    caplog.set_level(logging.WARNING, logger="fieldhub.mqtt")
    publisher = MqttPublisher(endpoint=parse_mqtt_url(broker.url), client_id="fallback-pub")
    assert publisher.protocol == 5
    publisher.start()
    try:
        assert publisher.wait_connected(DEADLINE_S), f"never connected; CONNECTs: {broker.levels}"
        assert publisher.protocol == 4
        assert broker.levels == [5, 4]
    finally:
        publisher.stop()
    assert "falls back to MQTT 3.1.1" in caplog.text
    assert "fallback-pub" in caplog.text


def test_subscriber_falls_back_to_311_and_subscribes(broker: ScriptedBroker) -> None:
    """Ingest's subscriber asked for MQTT 5 ends up subscribed over 3.1.1, persistent session."""
    subscriber = MqttSubscriber(
        endpoint=parse_mqtt_url(broker.url),
        client_id="fallback-sub",
        filters=["devices/+/data"],
        on_message=lambda message, token: None,
        protocol=5,
    )
    subscriber.start()
    try:
        wait_until(lambda: subscriber.connected, timeout_s=DEADLINE_S, what="SUBACK over 3.1.1")
        assert subscriber.protocol == 4
        assert broker.levels == [5, 4]
        # Still a persistent session after the fallback: clean-session flag (0x02) not set.
        assert subscriber._client._clean_session is False
    finally:
        subscriber.stop()


def test_v311_client_never_sends_v5(broker: ScriptedBroker) -> None:
    """A client configured for 3.1.1 (ingest's default) connects at once, no MQTT 5 attempt."""
    publisher = MqttPublisher(endpoint=parse_mqtt_url(broker.url), client_id="v311-pub", protocol=4)
    publisher.start()
    try:
        assert publisher.wait_connected(DEADLINE_S)
        assert broker.levels == [4]
    finally:
        publisher.stop()


def test_mqtt5_broker_keeps_mqtt5(mosquitto: MosquittoProcess) -> None:
    """Against a broker that speaks MQTT 5 (Mosquitto 2) nothing falls back."""
    publisher = MqttPublisher(
        endpoint=parse_mqtt_url(mosquitto.url), client_id=f"v5-{uuid.uuid4().hex[:8]}"
    )
    publisher.start()
    try:
        assert publisher.wait_connected(DEADLINE_S)
        publisher.publish("fieldhub-test/v5", b"x", qos=1).result(DEADLINE_S)
        assert publisher.protocol == 5
    finally:
        publisher.stop()
