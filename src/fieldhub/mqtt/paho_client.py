"""paho-mqtt's client as fieldhub uses it: the one module that touches paho's private API.

Why paho: it is the maintained reference client, supports MQTT 5 and 3.1.1, and (since 2.0) manual
acknowledgements, which is what "acknowledge after commit" needs: by default it sends PUBACK on
receipt, before anything is stored (docs/field-notes.md, "paho-mqtt"). Its network loop runs in
its own thread; ingest hands decoded work to the writer through a queue.

Every private name of paho used anywhere in fieldhub is used here, and only here, for a reason:

- `_create_socket()`: set TCP_NODELAY (paho does not; Nagle costs 40-200 ms a round trip) and
  wrap the socket in `_BufferedSocket` (one recv() for hundreds of packets).
- `_handle_publish()`, `_in_packet`: parse MQTT 3.1.1 QoS 0/1 PUBLISH bytes ourselves; paho's
  path builds three objects and a log record per message.
- `_handle_on_message(message)`: skip paho's per-topic callback lookup under two locks
  (fieldhub registers none).
- `_out_packet`, `_sockpairW` (`_send_puback` as the reference): queue a batch's PUBACKs with one
  wake-up of the network thread instead of a syscall per message.
- `_handle_connack()`, `_do_on_disconnect(...)`, `_protocol`, `_clean_session`, `_state`,
  `_ConnectionState`: fall back from MQTT 5 to 3.1.1 for brokers that speak only 3.1.1
  (RabbitMQ's MQTT plugin before 3.13, Mosquitto 1.x).
- `_host`, `_port`, `_client_id`, `_userdata`, `_sock`: read only (log lines, callbacks, the
  buffered socket).
- `MQTTMessage._topic`: a topic that is not UTF-8 still reaches dead letters (`message_topic`).

A paho release may change any of them without notice. So: pyproject.toml pins the tested range
(`PAHO_TESTED`), importing this module refuses a paho outside it and checks the names and
signatures above (`private_api_problems`), and tests/mqtt/test_paho_contract.py checks each
override's behaviour against paho's own code on a real broker.
"""

from __future__ import annotations

import inspect
import logging
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import __version__ as PAHO_VERSION
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, _ConnectionState
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fieldhub.mqtt.endpoint import MqttEndpoint

__all__ = [
    "KEEPALIVE_S",
    "PAHO_TESTED",
    "end_session",
    "message_topic",
    "new_client",
    "private_api_problems",
    "protocol_level",
]

log = logging.getLogger("fieldhub.mqtt")

KEEPALIVE_S = 30
# Reconnect backoff: fast enough to resume within a second or two of a broker restart, slow
# enough not to hammer a broker that is down for maintenance.
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 15
# One recv() of this size serves hundreds of small MQTT packets (see _BufferedSocket).
READ_CHUNK_BYTES = 64 * 1024
# CONNACK return codes that mean "this broker does not speak the protocol level you asked for":
# 1 is MQTT 3.1.1's "unacceptable protocol version" (what a 3.1.1-only broker such as Mosquitto
# 1.x answers to an MQTT 5 CONNECT), 0x84 is MQTT 5's "unsupported protocol version".
CONNACK_UNSUPPORTED_PROTOCOL = (0x01, 0x84)
PUBACK = 0x40

# The paho-mqtt releases this module is tested with: >= the first, < the second (pyproject.toml
# pins the same range).
PAHO_TESTED = ((2, 1), (2, 3))
# The private methods overridden or called here, with the parameters they are expected to take.
PRIVATE_METHODS: dict[str, tuple[str, ...]] = {
    "_create_socket": ("self",),
    "_handle_publish": ("self",),
    "_handle_on_message": ("self", "message"),
    "_handle_connack": ("self",),
    "_do_on_disconnect": ("self", "packet_from_broker", "v1_rc", "reason", "properties"),
    "_send_puback": ("self", "mid"),
}
# The private attributes read or written here, on a client that has not connected yet.
PRIVATE_ATTRIBUTES = (
    "_in_packet",
    "_out_packet",
    "_sockpairW",
    "_protocol",
    "_clean_session",
    "_state",
    "_host",
    "_port",
    "_client_id",
    "_userdata",
    "_sock",
)


class _BufferedSocket:
    """A socket whose small reads are served from one large read.

    paho reads every packet with three or more recv() calls (the type byte, each length byte,
    then the body). Each is a syscall that releases and retakes the GIL, and with the ingest
    writer busy in another thread every retake waits: at 10k msg/s that hand-off, not parsing,
    limited ingest. `pending()` is the hook paho's loop already has for TLS sockets: while bytes
    are buffered it reads again without waiting in select().
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(READ_CHUNK_BYTES)
            if not data:
                return data
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + bufsize, len(self._buf))
        return self._buf[start : self._pos]

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(paho.Client):
    """paho's client with TCP_NODELAY, buffered reads, batched acknowledgements and a fallback
    from MQTT 5 to 3.1.1 for brokers that only speak 3.1.1.

    The overrides use paho internals (`_create_socket`, `_send_puback`, `_sockpairW`,
    `_protocol`, `_clean_session`, `_handle_connack`, `_do_on_disconnect`); the dependency is
    pinned below 2.3 for that reason and the integration tests exercise them.
    """

    # Set by MqttSubscriber: called with (topic, payload, retain, qos, packet id) for MQTT 3.1.1
    # PUBLISH packets of QoS 0 and 1, instead of paho's generic path.
    fast_publish: Callable[[bytes, bytes, bool, int, int], None] | None = None
    # Set by new_client for an MQTT 5 client: the clean-session flag to use if the broker turns
    # out to speak only 3.1.1. None: no fallback (the client asked for 3.1.1 already).
    v311_clean_session: bool | None = None
    # Whether the broker answered the CONNECT of the current connection attempt.
    _connack_seen = False

    def reconnect(self) -> MQTTErrorCode:
        self._connack_seen = False
        return super().reconnect()

    def _handle_connack(self) -> MQTTErrorCode:
        self._connack_seen = True
        packet = self._in_packet["packet"]
        if (
            self._protocol == paho.MQTTv5
            and self.v311_clean_session is not None
            and len(packet) >= 2
            and packet[1] in CONNACK_UNSUPPORTED_PROTOCOL
        ):
            # Read the code from the raw bytes: a 3.1.1 broker's 2-byte CONNACK is not a valid
            # MQTT 5 CONNACK, so paho's MQTT 5 decoder cannot be trusted with it. Reconnecting
            # straight away is what paho itself does when it falls back from 3.1.1 to 3.1.
            self._fall_back_to_v311(f"refused MQTT 5 (CONNACK code {packet[1]})")
            return self.reconnect()
        return super()._handle_connack()

    def _do_on_disconnect(
        self,
        packet_from_broker: bool,
        v1_rc: MQTTErrorCode,
        reason: ReasonCode | None = None,
        properties: Properties | None = None,
    ) -> None:
        # RabbitMQ's MQTT plugin (before 3.13; docs/brokers.md) cannot parse an MQTT 5 CONNECT
        # and closes the connection without any CONNACK. paho then reconnects with MQTT 5 again,
        # forever. A connection that closed before the broker answered our MQTT 5 CONNECT (and
        # that we did not close ourselves) is taken as that answer. A transient drop at exactly
        # that moment also lands here; falling back then costs nothing, since everything
        # fieldhub does works over 3.1.1 (ingest's default).
        if (
            self._protocol == paho.MQTTv5
            and self.v311_clean_session is not None
            and not self._connack_seen
            and not packet_from_broker
            and self._state != _ConnectionState.MQTT_CS_DISCONNECTING
        ):
            self._fall_back_to_v311("closed the connection without answering an MQTT 5 CONNECT")
        super()._do_on_disconnect(packet_from_broker, v1_rc, reason, properties)

    def _fall_back_to_v311(self, why: str) -> None:
        # paho reads `_protocol` afresh for every packet it builds or parses, so switching it
        # between two connections is safe (paho's own 3.1.1 -> 3.1 fallback does the same).
        # 3.1.1 has no clean_start/session-expiry pair: the clean-session flag replaces it.
        log.warning(
            "broker %s:%s %s: it speaks MQTT 3.1.1 only (as RabbitMQ's MQTT plugin before 3.13 "
            "does); client %s falls back to MQTT 3.1.1 for good",
            self._host,
            self._port,
            why,
            self._client_id.decode("utf-8", "replace"),
        )
        self._protocol = paho.MQTTv311
        self._clean_session = bool(self.v311_clean_session)
        self.v311_clean_session = None

    def _handle_publish(self) -> MQTTErrorCode:
        # paho builds a PublishPacket, an MQTTMessage and a log record per PUBLISH: ~10 us of the
        # ~40 us a message costs ingest. For the case ingest runs (3.1.1, QoS <= 1, manual acks)
        # the packet is two length-prefixed fields; anything else takes paho's own path, which
        # also reports malformed packets.
        handler = self.fast_publish
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        packet = self._in_packet["packet"]
        if handler is None or self._protocol == paho.MQTTv5 or qos > 1 or len(packet) < 2:
            return super()._handle_publish()
        topic_end = 2 + ((packet[0] << 8) | packet[1])
        body = topic_end + (2 if qos else 0)
        if topic_end == 2 or len(packet) < body:
            return super()._handle_publish()
        mid = (packet[topic_end] << 8) | packet[topic_end + 1] if qos else 0
        try:
            handler(bytes(packet[2:topic_end]), bytes(packet[body:]), bool(header & 0x01), qos, mid)
        except Exception:
            log.exception("handling a message failed; it stays unacknowledged")
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho reads one packet per select() when it has nothing in flight itself; drain what
        # _BufferedSocket already holds instead of a select() syscall per message.
        rc = super().loop_read(max_packets)
        sock = self._sock
        while rc == paho.MQTT_ERR_SUCCESS and isinstance(sock, _BufferedSocket) and sock.pending():
            rc = super().loop_read(max_packets)
            if self._sock is not sock:
                break
        return rc

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        # paho matches every message against per-topic callbacks under two locks before calling
        # on_message; fieldhub registers none, and the lookup cost ~4 us per message.
        callback = self.on_message
        if callback is None:
            return
        try:
            callback(self, self._userdata, message)
        except Exception:
            # Never kill the network thread: the message stays unacknowledged and the broker
            # sends it again after the next reconnect.
            log.exception("handling a message on %r failed", message.topic)

    def ack_many(self, mids: Sequence[int]) -> None:
        """PUBACK several messages with one wake-up of the network thread.

        paho's ack() writes a byte to its wake-up socket pair for every packet, a syscall per
        message on the writer's thread. The PUBACKs go into paho's outgoing queue exactly as its
        `_send_puback` puts them there (a deque: appending is thread-safe), then one byte wakes
        the thread. Nothing of paho's state is changed meanwhile, so a packet another thread
        queues at the same time keeps its own wake-up.
        """
        queue = self._out_packet
        for mid in mids:
            queue.append(
                {
                    "command": PUBACK,
                    "mid": mid,
                    "qos": 1,
                    "pos": 0,
                    "to_process": 4,
                    "packet": struct.pack("!BBH", PUBACK, 2, mid),
                    "info": None,
                }
            )
        wake = self._sockpairW
        if mids and wake is not None:
            try:
                wake.send(b"0")
            except BlockingIOError:
                pass  # the pair is full of wake-ups already: the thread will wake

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if isinstance(sock, socket.socket):
            # Without TCP_NODELAY every request/ack round trip waits 40-200 ms for Nagle and
            # delayed ACK (docs/field-notes.md, "Nagle"); paho does not set it.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return _BufferedSocket(sock)
        return sock


def new_client(
    *, client_id: str, endpoint: MqttEndpoint, protocol: int, clean: bool, manual_ack: bool = False
) -> _Client:
    proto = paho.MQTTv5 if protocol == 5 else paho.MQTTv311
    client = _Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=proto,
        clean_session=None if protocol == 5 else clean,
        manual_ack=manual_ack,
    )
    if protocol == 5:
        client.v311_clean_session = clean
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password)
    client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
    return client


def end_session(
    endpoint: MqttEndpoint, client_id: str, protocol: int, timeout_s: float = 10.0
) -> None:
    """Make the broker forget `client_id`'s session: connect with a clean session, disconnect.

    A persistent session outlives its client; one nobody will resume keeps its subscriptions
    (and, in a share group, its share of the messages) until it expires, in MQTT 3.1.1 never.
    """
    client = new_client(client_id=client_id, endpoint=endpoint, protocol=protocol, clean=True)
    accepted = threading.Event()

    def on_connect(
        c: paho.Client, u: object, flags: paho.ConnectFlags, code: ReasonCode, p: object
    ) -> None:
        if not code.is_failure:
            accepted.set()

    client.on_connect = on_connect
    if protocol == 5:
        client.connect(endpoint.host, endpoint.port, keepalive=KEEPALIVE_S, clean_start=True)
    else:
        client.connect(endpoint.host, endpoint.port, keepalive=KEEPALIVE_S)
    client.loop_start()
    try:
        if not accepted.wait(timeout_s):
            raise ConnectionError(f"broker {endpoint.url} refused {client_id} (ending its session)")
    finally:
        client.disconnect()
        client.loop_stop()


def protocol_level(client: paho.Client) -> int:
    return 5 if client.protocol == paho.MQTTv5 else 4


def message_topic(message: paho.MQTTMessage) -> str:
    """A message's topic; one that is not UTF-8 (brokers enforce it, but) with its bad bytes
    replaced, so the message stays visible as a dead letter."""
    try:
        topic: str = message.topic
    except UnicodeDecodeError:
        topic = bytes(message._topic).decode("utf-8", "replace")
    return topic


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def private_api_problems(client_class: type[paho.Client] = paho.Client) -> list[str]:
    """What of paho's private API this module relies on `client_class` lacks: a missing or
    re-shaped method, a missing attribute. Empty for the tested releases."""
    problems = []
    for name, expected in PRIVATE_METHODS.items():
        method = getattr(client_class, name, None)
        if not callable(method):
            problems.append(f"paho.Client.{name} is gone")
            continue
        found = tuple(inspect.signature(method).parameters)
        if found != expected:
            problems.append(f"paho.Client.{name} takes {found}, not {expected}")
    client = client_class(callback_api_version=CallbackAPIVersion.VERSION2)
    problems += [
        f"paho.Client has no attribute {name}"
        for name in PRIVATE_ATTRIBUTES
        if not hasattr(client, name)
    ]
    if not hasattr(client._out_packet, "append"):
        problems.append("paho.Client._out_packet is not a queue to append to")
    if not isinstance(getattr(client, "_in_packet", None), dict):
        problems.append("paho.Client._in_packet is not a dict")
    if not hasattr(_ConnectionState, "MQTT_CS_DISCONNECTING"):
        problems.append("paho's _ConnectionState has no MQTT_CS_DISCONNECTING")
    if not hasattr(paho.MQTTMessage(), "_topic"):
        problems.append("paho.MQTTMessage has no _topic")
    return problems


def _check_paho() -> None:
    version = PAHO_VERSION
    low, high = PAHO_TESTED
    if not low <= _version(version) < high:
        raise ImportError(
            f"fieldhub's MQTT transport is tested with paho-mqtt >= {'.'.join(map(str, low))}, "
            f"< {'.'.join(map(str, high))}, and it relies on paho's private API; installed: "
            f"{version}. Reinstall fieldhub (pip install -e .) to get a tested paho-mqtt"
        )
    problems = private_api_problems()
    if problems:
        raise ImportError(
            f"paho-mqtt {version} changed private API fieldhub's MQTT transport uses: "
            + "; ".join(problems)
        )


_check_paho()
