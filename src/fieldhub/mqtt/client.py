"""paho-mqtt behind two small classes: a durable subscriber for ingest and a publisher.

Why paho: it is the maintained reference client, supports MQTT 5 and 3.1.1, and (since 2.0) manual
acknowledgements, which is what "acknowledge after commit" needs: by default it sends PUBACK on
receipt, before anything is stored (docs/field-notes.md, "paho-mqtt"). Its network loop runs in
its own thread; ingest hands decoded work to the writer through a queue.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, _ConnectionState
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from fieldhub import clock
from fieldhub.mqtt.endpoint import MqttEndpoint, MqttUrlError, parse_mqtt_url
from fieldhub.protocol.messages import InboundMessage

__all__ = [
    "AckToken",
    "MqttEndpoint",
    "MqttPublisher",
    "MqttSubscriber",
    "MqttUrlError",
    "Will",
    "end_session",
    "parse_mqtt_url",
]

log = logging.getLogger("fieldhub.mqtt")

# (connection generation, packet id). A packet id is only meaningful on the connection that
# delivered it: after a reconnect the broker reuses ids for redelivered messages, so an ack
# carrying an old generation is dropped rather than acknowledging someone else's message.
AckToken = tuple[int, int]

KEEPALIVE_S = 30
# Reconnect backoff: fast enough to resume within a second or two of a broker restart, slow
# enough not to hammer a broker that is down for maintenance.
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 15
# How many unacknowledged QoS 1 messages the broker may push to ingest (MQTT 5 Receive Maximum).
# Ingest acks only after the batch holding a message is committed, so the window must cover a
# whole batch plus what arrives during its commit, or throughput collapses to window/commit-time.
# Packet ids are 16 bits; stay well below 65535 so ids never run out.
INGEST_RECEIVE_MAXIMUM = 30_000
# The broker keeps ingest's session (subscriptions and queued messages) this long while fieldhub
# is down. A week covers a long weekend outage; longer risks unbounded broker memory.
SESSION_EXPIRY_S = 7 * 24 * 3600
# Publisher in-flight window: paho keys outgoing QoS>0 messages by 16-bit id, so an unbounded
# queue silently loses messages beyond 65535 (measured: 100k queued, ~65.6k arrived;
# docs/field-notes.md, "paho-mqtt"). The semaphore blocks callers.
PUBLISH_MAX_INFLIGHT = 1_000
# One recv() of this size serves hundreds of small MQTT packets (see _BufferedSocket).
READ_CHUNK_BYTES = 64 * 1024
# CONNACK return codes that mean "this broker does not speak the protocol level you asked for":
# 1 is MQTT 3.1.1's "unacceptable protocol version" (what a 3.1.1-only broker such as Mosquitto
# 1.x answers to an MQTT 5 CONNECT), 0x84 is MQTT 5's "unsupported protocol version".
CONNACK_UNSUPPORTED_PROTOCOL = (0x01, 0x84)


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for a client that vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


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
    # Set by _new_client for an MQTT 5 client: the clean-session flag to use if the broker turns
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
        message on the writer's thread; one byte after the whole batch does the same job.
        """
        wake = self._sockpairW
        self._sockpairW = None
        try:
            for mid in mids:
                self._send_puback(mid)
        finally:
            self._sockpairW = wake
        if wake is not None:
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


def _new_client(
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
    client = _new_client(client_id=client_id, endpoint=endpoint, protocol=protocol, clean=True)
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


def _protocol_level(client: paho.Client) -> int:
    return 5 if client.protocol == paho.MQTTv5 else 4


class MqttSubscriber:
    """A durable QoS 1 subscriber: persistent session, manual acks, automatic reconnect.

    `on_message` runs in the network thread for every message with a token to pass to `ack` once
    the message is safely stored. Receive times are strictly increasing microseconds, so two
    messages never share one by accident (docs/protocol.md, "Times").
    """

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        client_id: str,
        filters: Sequence[str],
        on_message: Callable[[InboundMessage, AckToken | None], None],
        protocol: int = 5,
        on_connection_change: Callable[[bool], None] | None = None,
        subscribe_new: bool = True,
        persistent: bool = True,
        clock_slot: tuple[int, int] = (0, 1),
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self.filters = list(filters)
        # False: a session the broker did not have stays without subscriptions (a worker that
        # only comes to empty an old session must not join the share group again).
        self._subscribe_new = subscribe_new
        # False: a clean session that ends with the connection (a process that only follows the
        # traffic, such as an API-only process, must not have messages queued while it is down).
        self._persistent = persistent
        # (k, n): receive times are all ≡ k (mod n). A message without a device time is stored at
        # its receive time, and two ingest workers receiving for one device in the same
        # microsecond would otherwise write the same key, the second silently a "duplicate"
        # (measured: 6 of 200,000 with 3 workers); worker i of n takes slot (i-1, n).
        self._slot, self._slots = clock_slot
        if not 0 <= self._slot < self._slots:
            raise ValueError(f"clock slot {clock_slot} is not (k, n) with 0 <= k < n")
        self._requested_protocol = protocol
        self._on_message = on_message
        self._on_connection_change = on_connection_change
        self._client = _new_client(
            client_id=client_id,
            endpoint=endpoint,
            protocol=protocol,
            clean=not persistent,
            manual_ack=True,
        )
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.fast_publish = self._handle_publish_fast
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_pre_connect = self._handle_pre_connect
        self._ack_lock = threading.Lock()
        self._generation = 0
        self._last_us = 0
        # True once the broker routes our subscriptions to us (SUBACK or a resumed session).
        self.connected = False
        self._stopping = False
        self.connects = 0
        self.acks_dropped = 0
        # Whether the broker still had our session at the last accepted connect.
        self.session_present: bool | None = None
        self._unsubscribed = threading.Event()
        self._client.on_unsubscribe = self._handle_unsubscribe

    @property
    def protocol(self) -> int:
        """The MQTT level in use: 5, or 4 (3.1.1) if asked for or fallen back to."""
        return _protocol_level(self._client)

    def unsubscribe(self, timeout_s: float = 10.0) -> None:
        """Leave our subscriptions (and so the share group); blocks until the broker confirms.

        What the broker had already queued for this session is still delivered afterwards.
        """
        self._unsubscribed.clear()
        result, _mid = self._client.unsubscribe(self.filters)
        if result != paho.MQTT_ERR_SUCCESS or not self._unsubscribed.wait(timeout_s):
            raise ConnectionError(f"broker {self.endpoint.url} did not confirm the unsubscribe")

    def start(self) -> None:
        """Connect in the background; reconnects forever until `stop`."""
        props: Properties | None = None
        v5 = self._requested_protocol == 5
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S if self._persistent else 0
            props.ReceiveMaximum = INGEST_RECEIVE_MAXIMUM
        self._client.connect_async(
            self.endpoint.host,
            self.endpoint.port,
            keepalive=KEEPALIVE_S,
            clean_start=(not self._persistent) if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly (the session stays on the broker) and stop the network thread."""
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self.connected = False

    def ack(self, tokens: Sequence[AckToken]) -> None:
        """Acknowledge stored messages; tokens from an earlier connection are dropped."""
        with self._ack_lock:
            generation = self._generation
            current = [mid for token_generation, mid in tokens if token_generation == generation]
            self.acks_dropped += len(tokens) - len(current)
            self._client.ack_many(current)

    def _handle_pre_connect(self, client: paho.Client, userdata: object) -> None:
        # Runs inside reconnect() after paho cleared its outgoing packets and before CONNECT: from
        # here on, acks of the old connection must not be queued.
        with self._ack_lock:
            self._generation += 1

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused the connection: %s", self.endpoint.url, reason_code)
            return
        self.connects += 1
        self.session_present = bool(flags.session_present)
        log.info(
            "connected to %s as %s (session %s)",
            self.endpoint.url,
            self.client_id,
            "resumed" if flags.session_present else "new",
        )
        if not flags.session_present and self._subscribe_new:
            if self.protocol == 5:
                # retainHandling=1: retained messages only for a new subscription, not again on
                # every re-subscribe of an existing one.
                options = SubscribeOptions(qos=1, retainHandling=1)
                client.subscribe([(topic, options) for topic in self.filters])
            else:
                client.subscribe([(topic, 1) for topic in self.filters])
            # `connected` waits for the SUBACK: before it, messages are not yet routed to us.
            return
        self._mark_ready()

    def _handle_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [
            (topic, code) for topic, code in zip(self.filters, reason_codes, strict=False)
            if code.is_failure
        ]  # fmt: skip
        if refused:
            log.error("broker %s refused subscriptions: %s", self.endpoint.url, refused)
        self._mark_ready()

    def _handle_unsubscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._unsubscribed.set()

    def _mark_ready(self) -> None:
        self.connected = True
        if self._on_connection_change:
            self._on_connection_change(True)

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._ack_lock:
            self._generation += 1
        if self.connected and not self._stopping:
            log.warning("lost connection to %s (%s); reconnecting", self.endpoint.url, reason_code)
        self.connected = False
        if self._on_connection_change:
            self._on_connection_change(False)

    def _received_us(self) -> int:
        """Now, strictly after the previous message's time, in this subscriber's clock slot."""
        now = clock.now_us()
        received_us = now if now > self._last_us else self._last_us + 1
        received_us += (self._slot - received_us) % self._slots
        self._last_us = received_us
        return received_us

    def _handle_publish_fast(
        self, topic: bytes, payload: bytes, retain: bool, qos: int, mid: int
    ) -> None:
        received_us = self._received_us()
        token = (self._generation, mid) if qos else None
        # Brokers enforce UTF-8 topics; a bad one still reaches dead letters, visibly replaced.
        text = topic.decode("utf-8", "replace")
        self._on_message(InboundMessage(text, payload, received_us, retain, qos), token)

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        received_us = self._received_us()
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            # Brokers enforce UTF-8 topics; keep the message visible as a dead letter regardless.
            topic = msg._topic.decode("utf-8", "replace")
        token = (self._generation, msg.mid) if msg.qos > 0 else None
        self._on_message(
            InboundMessage(topic, bytes(msg.payload), received_us, msg.retain, msg.qos), token
        )


class MqttPublisher:
    """A publisher with TCP_NODELAY, a bounded in-flight window and an optional last will.

    A device's down-link rides on the same connection (one client id per device, as firmware
    has): `subscriptions` (filter, QoS) are made on every accepted (re)connect, because a clean
    session forgets them. `on_message(topic, payload)` runs in the network thread.
    `on_subscribed(True)` runs there once the broker granted them (at once when there are none),
    so whatever is sent to the device after it arrives; `on_subscribed(False)` when the
    connection is lost. `subscribed` is the same state as an Event.
    """

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        client_id: str,
        protocol: int = 5,
        will: Will | None = None,
        clean: bool = True,
        max_inflight: int = PUBLISH_MAX_INFLIGHT,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[str, bytes], None] | None = None,
        on_subscribed: Callable[[bool], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self._requested_protocol = protocol
        self._clean = clean
        self._client = _new_client(
            client_id=client_id, endpoint=endpoint, protocol=protocol, clean=clean
        )
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        self._window = threading.BoundedSemaphore(max_inflight)
        self._pending: dict[int, Future[None]] = {}
        self._pending_lock = threading.Lock()
        self._early: set[int] = set()
        self._connected = threading.Event()
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_publish = self._handle_publish
        self._subscriptions = list(subscriptions)
        self._on_inbound = on_message
        self._on_subscribed = on_subscribed
        self.subscribed = threading.Event()
        self._client.on_subscribe = self._handle_subscribed
        self._client.on_message = self._handle_inbound
        if will is not None:
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)

    @property
    def connected(self) -> bool:
        """True while the broker has accepted the connection."""
        return self._connected.is_set()

    @property
    def protocol(self) -> int:
        """The MQTT level in use: 5, or 4 (3.1.1) if asked for or fallen back to."""
        return _protocol_level(self._client)

    def start(self) -> None:
        """Connect in the background (reconnecting by itself) and start the network thread."""
        self._client.connect_async(
            self.endpoint.host,
            self.endpoint.port,
            keepalive=KEEPALIVE_S,
            clean_start=True
            if self._requested_protocol == 5 and self._clean
            else paho.MQTT_CLEAN_START_FIRST_ONLY,
        )
        self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected or the timeout passes; returns whether connected."""
        return self._connected.wait(timeout_s)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Future[None]:
        """Queue a publish; the future completes when the broker acknowledged it (QoS>0) or sent.

        Blocks while `max_inflight` publishes are unacknowledged.
        """
        self._window.acquire()
        future: Future[None] = Future()
        # paho calls on_publish holding its own lock, so ours must not be held across publish():
        # an ack that arrives before the mid is registered is parked in `_early`.
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            self._window.release()
            future.set_exception(ConnectionError(f"publish failed: {paho.error_string(info.rc)}"))
            return future
        with self._pending_lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                early = True
            else:
                self._pending[info.mid] = future
                early = False
        if early:
            self._window.release()
            future.set_result(None)
        return future

    def stop(self, *, disconnect: bool = True) -> None:
        """Stop the client; `disconnect=False` drops the TCP connection without DISCONNECT, as a
        device losing power does, so the broker publishes the will."""
        if disconnect:
            self._client.disconnect()
            self._client.loop_stop()
        else:
            self._client.loop_stop()
            sock = self._client.socket()
            if sock is not None:
                sock.close()
        self._connected.clear()
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionError("publisher stopped before the broker acked"))

    def _complete(self, mid: int) -> None:
        with self._pending_lock:
            future = self._pending.pop(mid, None)
            if future is None:
                self._early.add(mid)
        if future is not None:
            self._window.release()
            if not future.done():
                future.set_result(None)

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._complete(mid)

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused %s: %s", self.endpoint.url, self.client_id, reason_code)
            return
        self._connected.set()
        if self._subscriptions:
            self._client.subscribe(self._subscriptions)
        else:
            self._mark_subscribed(True)

    def _handle_subscribed(self, *args: object) -> None:
        self._mark_subscribed(True)

    def _mark_subscribed(self, up: bool) -> None:
        if up:
            self.subscribed.set()
        else:
            self.subscribed.clear()
        if self._on_subscribed is not None:
            self._on_subscribed(up)

    def _handle_inbound(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if self._on_inbound is not None:
            self._on_inbound(msg.topic, bytes(msg.payload))

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self._mark_subscribed(False)
