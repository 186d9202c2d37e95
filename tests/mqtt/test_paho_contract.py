"""The contract between fieldhub's MQTT transport and paho-mqtt's private API.

`fieldhub.mqtt.paho_client` overrides and reads paho internals (its docstring lists each and
why). A paho release may change them without notice; these tests pin each one, against paho's
own code and a real Mosquitto, so that a changed release fails here rather than losing or
mis-acknowledging messages in production. `test_a_changed_private_api_is_refused` shows the
checks catching a changed paho (a stand-in class and a stand-in version).
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt import paho_client
from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.mqtt.paho_client import (
    PAHO_TESTED,
    PUBACK,
    _BufferedSocket,
    _Client,
    message_topic,
    new_client,
    private_api_problems,
)
from support.waiting import wait_until

Received = tuple[bytes, bytes, bool, int, int]


def test_the_installed_paho_is_tested_and_has_every_private_name_used() -> None:
    low, high = PAHO_TESTED
    assert low <= paho_client._version(paho_client.PAHO_VERSION) < high
    assert private_api_problems() == []


def test_a_changed_private_api_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for a paho release that renamed one method, re-shaped another and dropped an
    attribute: each is named; so is a release outside the tested range, at import."""

    class ChangedPaho(paho.Client):
        _send_puback = None  # type: ignore[assignment]

        def _do_on_disconnect(self, packet_from_broker: bool, rc: int) -> None:  # type: ignore[override]
            pass

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            del self._clean_session

    problems = private_api_problems(ChangedPaho)
    assert problems == [
        "paho.Client._do_on_disconnect takes ('self', 'packet_from_broker', 'rc'), not "
        "('self', 'packet_from_broker', 'v1_rc', 'reason', 'properties')",
        "paho.Client._send_puback is gone",
        "paho.Client has no attribute _clean_session",
    ]

    monkeypatch.setattr(paho_client, "private_api_problems", lambda: problems)
    with pytest.raises(ImportError, match=r"changed private API .*_send_puback is gone"):
        paho_client._check_paho()
    monkeypatch.setattr(paho_client, "PAHO_VERSION", "2.3.0")
    with pytest.raises(ImportError, match=r"paho-mqtt >= 2\.1, < 2\.3,.* installed: 2\.3\.0"):
        paho_client._check_paho()


def test_ack_many_queues_exactly_what_paho_queues_for_a_puback() -> None:
    """ack_many writes paho's outgoing queue itself; what it queues must be what paho's own
    `_send_puback` queues (a client that never connected keeps its queue)."""
    theirs = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    ours = new_client(
        client_id="x", endpoint=MqttEndpoint("127.0.0.1"), protocol=4, clean=True, manual_ack=True
    )
    for mid in (1, 7, 300, 65535):
        theirs._send_puback(mid)
    ours.ack_many([1, 7, 300, 65535])
    assert list(ours._out_packet) == list(theirs._out_packet)
    assert list(ours._out_packet)[1]["packet"] == bytes([PUBACK, 2, 0, 7])


class CountingSocket:
    """A socket end that counts the recv() calls reaching it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(size)

    def fileno(self) -> int:
        return self.sock.fileno()


def test_the_buffered_socket_serves_many_small_reads_from_one_recv() -> None:
    left, right = socket.socketpair()
    with left, right:
        counting = CountingSocket(left)
        buffered = _BufferedSocket(counting)  # type: ignore[arg-type]
        right.sendall(b"\x30\x05abcde" * 100)
        wait_until(lambda: len(left.recv(1, socket.MSG_PEEK)) == 1, timeout_s=5)
        read = b""
        while len(read) < 700:
            read += buffered.recv(1) + buffered.recv(1) + buffered.recv(5)
        assert read == b"\x30\x05abcde" * 100
        assert counting.recvs == 1
        assert buffered.pending() == 0
        assert buffered.fileno() == left.fileno()  # everything else is the socket's
        right.close()
        assert buffered.recv(1) == b""  # end of stream, as paho expects it


@pytest.fixture
def endpoint(mosquitto: MosquittoProcess) -> MqttEndpoint:
    return MqttEndpoint(mosquitto.host, mosquitto.port)


class Listener:
    """A 3.1.1 manual-ack client as ingest builds one, recording what reaches it by which path."""

    def __init__(self, endpoint: MqttEndpoint, client_id: str, topic: str) -> None:
        self.fast: list[Received] = []
        self.slow: list[paho.MQTTMessage] = []
        self.subscribed = threading.Event()
        self.client = new_client(
            client_id=client_id, endpoint=endpoint, protocol=4, clean=False, manual_ack=True
        )
        self.client.fast_publish = lambda *received: self.fast.append(received)
        self.client.on_message = lambda _c, _u, message: self.slow.append(message)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "no SUBACK"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def topic() -> str:
    return f"contract/{uuid.uuid4().hex}"


@pytest.fixture
def publisher(endpoint: MqttEndpoint) -> Iterator[paho.Client]:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def test_publish_packets_reach_the_fast_path_whole(
    endpoint: MqttEndpoint, topic: str, publisher: paho.Client
) -> None:
    """`_handle_publish` reads paho's `_in_packet`: topic, payload, retain flag, QoS and packet
    id arrive exactly, for QoS 0 and 1, short and long packets (multi-byte lengths), empty and
    binary payloads, a retained message; paho's own path sees none of them."""
    long_topic = f"{topic}/" + "t" * 300
    retained_topic = f"{topic}/retained"
    publisher.publish(retained_topic, b"kept", qos=1, retain=True).wait_for_publish(5)
    listener = Listener(endpoint, f"contract-{uuid.uuid4().hex[:8]}", f"{topic}/#")
    try:
        sent = [
            (f"{topic}/a", b'{"t": 21.5}', 1),
            (f"{topic}/b", b"", 0),
            (long_topic, bytes(range(256)) * 600, 1),
            (f"{topic}/\u00e9t\u00e9", b"\x00\xff", 0),
        ]
        for name, payload, qos in sent:
            publisher.publish(name, payload, qos=qos).wait_for_publish(5)
        wait_until(lambda: len(listener.fast) == len(sent) + 1, timeout_s=10)
        got = {(t, p, r, q) for t, p, r, q, _mid in listener.fast}
        assert got == {(retained_topic.encode(), b"kept", True, 1)} | {
            (name.encode(), payload, False, qos) for name, payload, qos in sent
        }
        for _t, _p, _r, qos, mid in listener.fast:
            assert (mid > 0) == (qos == 1)
        assert listener.slow == []
    finally:
        listener.stop()
        publisher.publish(retained_topic, b"", qos=1, retain=True).wait_for_publish(5)


def test_ack_many_acknowledges_exactly_the_given_messages(
    endpoint: MqttEndpoint, topic: str, publisher: paho.Client
) -> None:
    """Acked messages are gone from the persistent session; the one left unacked is sent again
    when the client comes back, as ack-after-commit relies on."""
    client_id = f"contract-{uuid.uuid4().hex[:8]}"
    listener = Listener(endpoint, client_id, f"{topic}/#")
    try:
        for i in range(20):
            publisher.publish(f"{topic}/{i}", str(i).encode(), qos=1).wait_for_publish(5)
        wait_until(lambda: len(listener.fast) == 20, timeout_s=10)
        keep = next(mid for t, _p, _r, _q, mid in listener.fast if t.endswith(b"/7"))
        listener.client.ack_many([mid for *_, mid in listener.fast if mid != keep])
        # The broker has the acks once a later round trip (a PINGREQ-free SUBSCRIBE) returns.
        listener.subscribed.clear()
        listener.client.subscribe(f"{topic}/none", qos=1)
        assert listener.subscribed.wait(10)
    finally:
        listener.stop()
    again = Listener(endpoint, client_id, f"{topic}/#")
    try:
        wait_until(lambda: len(again.fast) >= 1, timeout_s=10)
        assert [(t, p) for t, p, *_ in again.fast] == [(f"{topic}/7".encode(), b"7")]
        again.client.ack_many([mid for *_, mid in again.fast])
    finally:
        again.stop()


def test_mqtt5_messages_reach_on_message_and_a_failing_callback_kills_nothing(
    endpoint: MqttEndpoint, topic: str, publisher: paho.Client
) -> None:
    """`_handle_on_message` calls on_message directly (MQTT 5 takes paho's path); an exception
    in it is logged and the network thread goes on."""
    seen: list[str] = []
    subscribed = threading.Event()

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        seen.append(message_topic(message))
        if message.payload == b"boom":
            raise RuntimeError("boom")

    client = new_client(
        client_id=f"contract-{uuid.uuid4().hex[:8]}", endpoint=endpoint, protocol=5, clean=True
    )
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(f"{topic}/#", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        assert isinstance(client, _Client)
        publisher.publish(f"{topic}/1", b"boom", qos=1).wait_for_publish(5)
        publisher.publish(f"{topic}/2", b"fine", qos=1).wait_for_publish(5)
        wait_until(lambda: len(seen) == 2, timeout_s=10)
        assert seen == [f"{topic}/1", f"{topic}/2"]
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_socket_paho_creates_is_buffered_and_has_no_nagle(
    endpoint: MqttEndpoint, topic: str
) -> None:
    """`_create_socket` is where paho makes its TCP socket: ours is wrapped and NODELAY."""
    listener = Listener(endpoint, f"contract-{uuid.uuid4().hex[:8]}", f"{topic}/#")
    try:
        sock = listener.client._sock
        assert isinstance(sock, _BufferedSocket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        listener.stop()


def test_a_topic_that_is_not_utf8_keeps_its_message() -> None:
    message = paho.MQTTMessage(topic=b"devices/\xff/telemetry")
    assert message_topic(message) == "devices/\ufffd/telemetry"
