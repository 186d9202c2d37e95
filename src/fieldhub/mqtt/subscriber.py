"""The durable ingest subscriber: persistent session, QoS 1, acknowledge after commit."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from fieldhub import clock
from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.mqtt.paho_client import KEEPALIVE_S, message_topic, new_client, protocol_level
from fieldhub.protocol.messages import InboundMessage

__all__ = ["AckToken", "MqttSubscriber"]

log = logging.getLogger("fieldhub.mqtt")

# (connection generation, packet id). A packet id is only meaningful on the connection that
# delivered it: after a reconnect the broker reuses ids for redelivered messages, so an ack
# carrying an old generation is dropped rather than acknowledging someone else's message.
AckToken = tuple[int, int]

# How many unacknowledged QoS 1 messages the broker may push to ingest (MQTT 5 Receive Maximum).
# Ingest acks only after the batch holding a message is committed, so the window must cover a
# whole batch plus what arrives during its commit, or throughput collapses to window/commit-time.
# Packet ids are 16 bits; stay well below 65535 so ids never run out.
INGEST_RECEIVE_MAXIMUM = 30_000
# The broker keeps ingest's session (subscriptions and queued messages) this long while fieldhub
# is down. A week covers a long weekend outage; longer risks unbounded broker memory.
SESSION_EXPIRY_S = 7 * 24 * 3600

# MQTT 5 reason code a broker sends the client it disconnects because another connected with the
# same client id: that other client now holds our session, receives our queued messages and may
# acknowledge them, so they are never stored.
SESSION_TAKEN_OVER = 142
# MQTT 3.1.1 brokers just close the socket. Losing the connection this often within the window,
# each time accepted again at once, is what two clients fighting over one client id look like
# (each connect kicks the other); a broker restart or a network cut costs one loss, not three.
TAKEOVER_LOSSES = 3
TAKEOVER_WINDOW_S = 60.0
# How long a takeover stays reported (health `degraded`) after the last sign of it.
PROBLEM_HOLD_S = 300.0
# A wall clock that goes back by more than this was stepped (NTP, an operator): receive times
# follow it. Less is jitter, or a small correction: receive times then stand still (one µs a
# message) until the clock passes them, which keeps them unique and in order. Too low and two
# messages could share a receive time after a tiny correction; too high and every message
# after a step back waits that long at one instant.
CLOCK_STEP_BACK_US = 1_000_000


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
        self._client = new_client(
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
        self._losses: deque[float] = deque(maxlen=TAKEOVER_LOSSES)
        self._problem: tuple[float, str] | None = None

    @property
    def problem(self) -> str | None:
        """Why this subscription cannot be trusted right now (a session takeover), or None."""
        problem = self._problem
        if problem is None or time.monotonic() - problem[0] > PROBLEM_HOLD_S:
            return None
        return problem[1]

    @property
    def protocol(self) -> int:
        """The MQTT level in use: 5, or 4 (3.1.1) if asked for or fallen back to."""
        return protocol_level(self._client)

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
            self._check_takeover(reason_code)
        self.connected = False
        if self._on_connection_change:
            self._on_connection_change(False)

    def _check_takeover(self, reason_code: ReasonCode) -> None:
        now = time.monotonic()
        self._losses.append(now)
        if reason_code.value == SESSION_TAKEN_OVER:
            why = "the broker says another client connected with it and took over the session"
        elif len(self._losses) == TAKEOVER_LOSSES and now - self._losses[0] <= TAKEOVER_WINDOW_S:
            why = (
                f"the connection was lost {TAKEOVER_LOSSES} times in {TAKEOVER_WINDOW_S:.0f} s, "
                "each time accepted again at once: another client is probably using it"
            )
        else:
            return
        message = (
            f"session takeover on client id {self.client_id!r}: {why}; messages it received "
            "were acknowledged by someone else and not stored. Find the client using this id "
            "(broker log, connection_messages) and give fieldhub's client its own credentials"
        )
        self._problem = (now, message)
        log.error("%s", message)

    def _received_us(self) -> int:
        """Now, strictly after the previous message's time, in this subscriber's clock slot;
        after the clock was stepped back (more than CLOCK_STEP_BACK_US), now again."""
        now = clock.now_us()
        if now > self._last_us:
            received_us = now
        elif self._last_us - now > CLOCK_STEP_BACK_US:
            # Standing still until the clock catches up would stamp every message of the next
            # hour after a one-hour step with one instant (a message without a device time is
            # stored at it: an hour of readings in a millisecond). Following the clock, a
            # receive time can meet one issued before the step only at the same microsecond
            # for the same device and metric; the store then counts a duplicate.
            log.warning(
                "the wall clock went back %.1f s; receive times follow it",
                (self._last_us - now) / 1e6,
            )
            received_us = now
        else:
            received_us = self._last_us + 1
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
        topic = message_topic(msg)
        token = (self._generation, msg.mid) if msg.qos > 0 else None
        self._on_message(
            InboundMessage(topic, bytes(msg.payload), received_us, msg.retain, msg.qos), token
        )
