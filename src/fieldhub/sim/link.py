"""One long-lived MQTT connection that publishes and obeys commands: the legacy-stack devices' base.

The ESP32 sketches of the stacks fieldhub replaces (FastAPI/RabbitMQ, Raspberry Pi/Mosquitto,
Go/ClickHouse window control) all follow the Arduino pattern: one client, connected once with a
fixed client id and maybe a last will, re-subscribing to its command topic in its reconnect
function (a clean session's broker forgets subscriptions with the connection), then
publishing from `loop()`. A sketch that connects with `cleanSession=false` (the FastAPI stack's)
keeps its session, and so its queued commands, across a restart. `LinkedDevice` is that pattern;
the kinds in `fastapi_node.py`, `iot_node.py` and `window_sensor.py` add their topics, payloads
and command handling.

Commands arrive on the publishing connection itself (`MqttPublisher`'s subscriptions): one
connection per device is part of what we reproduce, and a second client would need a second
client id.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.mqtt.publisher import MqttPublisher, Will
from fieldhub.sim.stats import PublishCounter

# Arduino PubSubClient, the MQTT library of these sketches, speaks MQTT 3.1.1 (its MQTT_VERSION
# default), and RabbitMQ's MQTT plugin refuses anything newer (docs/brokers.md).
ARDUINO_MQTT_PROTOCOL = 4
# Publishes a device may have outstanding before it skips new ones, as NativeDevice does: the
# fleet's scheduler thread must never block on one slow connection.
LINKED_MAX_UNACKED = 100


@dataclass(frozen=True, slots=True)
class Periodic:
    """Something a device does every `period_s` seconds, driven by the fleet's scheduler."""

    name: str
    period_s: float
    fire: Callable[[], object]
    # True when the device also does this right after every connect (a heartbeat), so the first
    # scheduled run comes one period after the start, not at once a second time.
    on_connect_too: bool = False


class LinkedDevice:
    """A simulated device on one long-lived connection: publishes, commands, stop or crash.

    Subclasses set their topics, implement `periodic()` (what the scheduler fires and how often),
    and may override `on_connected()` (network thread, right after each CONNACK),
    `on_message()` (network thread) and `announce_offline()` (graceful stop).
    """

    kind: str = "linked"

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        device_id: str,
        client_id: str,
        will: Will | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        protocol: int = ARDUINO_MQTT_PROTOCOL,
        clean_session: bool = True,
        counter: PublishCounter | None = None,
    ) -> None:
        self.device_id = device_id
        self.client_id = client_id
        self.will = will
        self.clean_session = clean_session
        self.counter = counter if counter is not None else PublishCounter()
        self._endpoint = endpoint
        self._protocol = protocol
        self._subscriptions = list(subscriptions)
        self._link = self._new_link()
        self._lock = threading.Lock()
        self._unacked = 0
        self._started = False
        # `_closed`: publish nothing more. `_stopped`: the client has been stopped.
        self._closed = False
        self._stopped = False

    def _new_link(self) -> MqttPublisher:
        return MqttPublisher(
            endpoint=self._endpoint,
            client_id=self.client_id,
            protocol=self._protocol,
            will=self.will,
            clean=self.clean_session,
            subscriptions=self._subscriptions,
            on_message=self.on_message,
            on_subscribed=self._subscribed,
        )

    # --- what subclasses provide ----------------------------------------------------------------

    def periodic(self) -> tuple[Periodic, ...]:
        """The device's periodic jobs, for the fleet's scheduler."""
        raise NotImplementedError

    def on_connected(self) -> None:
        """Called in the network thread after every accepted (re)connect, once the broker
        granted the subscriptions (a sketch subscribes in reconnect(), before its loop runs)."""

    def on_message(self, topic: str, payload: bytes) -> None:
        """Called in the network thread for every message on a subscribed topic."""

    def _subscribed(self, up: bool) -> None:
        if up:
            self.on_connected()

    def announce_offline(self) -> Future[None] | None:
        """First half of a graceful stop: publish nothing more (subclasses may say `offline`)."""
        self._closed = True
        return None

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the broker has accepted the device's connection."""
        return self._link.connected

    @property
    def unacked(self) -> int:
        """Publishes handed to the client and not yet acknowledged (QoS 1) or written (QoS 0)."""
        with self._lock:
            return self._unacked

    def start(self) -> None:
        """Connect in the background; subscriptions and `on_connected` follow each CONNACK."""
        if self._started:
            raise RuntimeError(f"{self.device_id} was already started")
        self._started = True
        self._link.start()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected or `timeout_s` passes; returns whether connected."""
        return self._link.wait_connected(timeout_s)

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Block until the broker granted the command subscription (or `timeout_s` passes)."""
        return self._link.subscribed.wait(timeout_s)

    def maintain(self) -> None:
        """Nothing to poll: the link re-subscribes and re-announces from its connect hook."""

    def close(self) -> None:
        """DISCONNECT and stop the network thread (the broker discards the will); idempotent."""
        if self._take_stop():
            self._link.stop(disconnect=True)

    def stop(self, *, timeout_s: float = 2.0) -> bool:
        """Graceful shutdown: `announce_offline()`, wait for it, DISCONNECT. True if it was sent."""
        future = self.announce_offline()
        sent = future is None
        if future is not None:
            try:
                future.result(timeout=timeout_s)
                sent = True
            except (TimeoutError, ConnectionError):
                sent = False
        self.close()
        return sent

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT, like a power loss: the will fires.

        Blocks up to about a second while the client's network loop notices the stop request.
        """
        if self._take_stop():
            self._link.stop(disconnect=False)

    # --- for subclasses --------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False
    ) -> Future[None] | None:
        """Publish unless closed, disconnected or too far behind (then counted as skipped).

        A sketch checks `client.connected()` before it publishes and drops the message otherwise;
        nothing is buffered, so neither does the simulator.
        """
        if self._closed or not self.connected:
            self.counter.skip()
            return None
        with self._lock:
            window_full = self._unacked >= LINKED_MAX_UNACKED
            if not window_full:
                self._unacked += 1
        if window_full:
            self.counter.skip()
            return None
        future = self._link.publish(topic, payload, qos=qos, retain=retain)
        self.counter.track(future)
        future.add_done_callback(self._publish_done)
        return future

    def publish_last_word(self, topic: str, payload: bytes, *, qos: int) -> Future[None] | None:
        """Close, then publish one retained message if connected (a graceful `offline`)."""
        self._closed = True
        if not self.connected:
            return None
        with self._lock:
            self._unacked += 1
        future = self._link.publish(topic, payload, qos=qos, retain=True)
        self.counter.track(future)
        future.add_done_callback(self._publish_done)
        return future

    def drop_link(self) -> bool:
        """A restart's first half: drop the TCP connection without DISCONNECT (the will fires)
        and keep the device alive. False when the device was stopped meanwhile."""
        with self._lock:
            if self._stopped:
                return False
            link = self._link
        link.stop(disconnect=False)
        return True

    def relink(self) -> bool:
        """A restart's second half: connect again with the same client id, will and session
        (a persistent session resumes). False when the device was stopped meanwhile."""
        with self._lock:
            if self._stopped:
                return False
            self._link = link = self._new_link()
        link.start()
        return True

    def _publish_done(self, future: Future[None]) -> None:
        with self._lock:
            self._unacked -= 1

    def _take_stop(self) -> bool:
        # The first of close()/crash() stops the client; later calls are no-ops.
        with self._lock:
            first = not self._stopped
            self._stopped = True
            self._closed = True
        return first
