"""The publisher: a bounded in-flight window, an optional last will and a device's down-link."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.mqtt.paho_client import KEEPALIVE_S, new_client, protocol_level

__all__ = ["PUBLISH_MAX_INFLIGHT", "MqttPublisher", "Will"]

log = logging.getLogger("fieldhub.mqtt")

# Publisher in-flight window: paho keys outgoing QoS>0 messages by 16-bit id, so an unbounded
# queue silently loses messages beyond 65535 (measured: 100k queued, ~65.6k arrived;
# docs/field-notes.md, "paho-mqtt"). The semaphore blocks callers.
PUBLISH_MAX_INFLIGHT = 1_000


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for a client that vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


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
        self._client = new_client(
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
        return protocol_level(self._client)

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
