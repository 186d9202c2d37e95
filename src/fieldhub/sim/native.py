"""A simulated device speaking fieldhub's native profile over one long-lived MQTT connection.

Lifecycle, as a well-behaved ESP32 node does it (DESIGN.md, "Status / presence"):

1. connect with client id = device id and a last will of retained QoS 1 `offline` on
   `devices/{id}/status`, so the broker marks the device offline if it vanishes;
2. on every (re)connect, publish retained `online` on the status topic: after a connection loss the
   broker has already published the will, so only a fresh `online` undoes it;
3. publish telemetry QoS 1 (not retained) on `devices/{id}/telemetry`, `ts` in epoch ms strictly
   increasing per device, `seq` counting from 0;
4. either `stop()`: retained `offline`, then DISCONNECT (the broker discards the will), or
   `crash()`: drop TCP without DISCONNECT, as losing power does (the broker publishes the will).

The device does no scheduling itself: `publish_telemetry()` and `maintain()` are called by the
fleet's scheduler thread (`fleet.py`) or by a test, so many devices share one thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError

from fieldhub.mqtt import MqttEndpoint, MqttPublisher, Will
from fieldhub.sim.payloads import (
    OFFLINE_PAYLOAD,
    ONLINE_PAYLOAD,
    NativeTelemetry,
    epoch_ms,
    native_status_topic,
    native_telemetry_topic,
)
from fieldhub.sim.stats import PublishCounter

# Telemetry publishes a device may have unacknowledged before it skips new ones. The scheduler
# thread drives every device, so it must never block on one slow connection (MqttPublisher blocks
# its caller once its own, larger window is full); 100 covers a 10 Hz device through a 10 s
# broker stall, and a stalled device costs at most 100 queued messages.
NATIVE_MAX_UNACKED = 100
# How long a graceful stop waits for the broker to acknowledge the retained `offline`. Loopback
# answers in well under a millisecond; a broker that takes longer than this is gone, and the
# DISCONNECT that follows is then moot anyway.
OFFLINE_ACK_TIMEOUT_S = 2.0


class NativeDevice:
    """One native-profile device: status with a last will, periodic telemetry, crash or stop."""

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        device_id: str,
        seed: int = 0,
        protocol: int = 5,
        counter: PublishCounter | None = None,
        clock_ms: Callable[[], int] = epoch_ms,
    ) -> None:
        self.device_id = device_id
        self.status_topic = native_status_topic(device_id)
        self.telemetry_topic = native_telemetry_topic(device_id)
        self.counter = counter if counter is not None else PublishCounter()
        self.telemetry = NativeTelemetry(seed=seed, clock_ms=clock_ms)
        self._publisher = MqttPublisher(
            endpoint=endpoint,
            client_id=device_id,
            protocol=protocol,
            will=Will(topic=self.status_topic, payload=OFFLINE_PAYLOAD, qos=1, retain=True),
            clean=True,
        )
        self._lock = threading.Lock()
        self._unacked = 0
        self._announced = False
        self._online: Future[None] | None = None
        self._started = False
        # `_closed`: no more telemetry or announcements. `_stopped`: the client has been stopped.
        self._closed = False
        self._stopped = False

    @property
    def connected(self) -> bool:
        """True while the broker has accepted the device's connection."""
        return self._publisher.connected

    @property
    def next_seq(self) -> int:
        """The `seq` the next telemetry message will carry (= telemetry messages sent so far)."""
        return self.telemetry.next_seq

    @property
    def unacked(self) -> int:
        """Telemetry publishes still waiting for their PUBACK."""
        with self._lock:
            return self._unacked

    def start(self) -> None:
        """Connect in the background; the retained `online` goes out right after the CONNACK.

        The `online` publish is queued before the connection exists: the client sends queued
        messages as soon as the broker accepts the connection, which is "on connect" without a
        connect callback (MqttPublisher has none).
        """
        if self._started:
            raise RuntimeError(f"{self.device_id} was already started")
        self._started = True
        self._publisher.start()
        self._announce()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected or `timeout_s` passes; returns whether connected."""
        return self._publisher.wait_connected(timeout_s)

    def maintain(self) -> None:
        """Re-announce `online` after the client reconnected by itself.

        Called on every scheduler tick. MqttPublisher has no connect callback, so a connection
        loss is seen by polling: a reconnect that completed between two ticks would go unnoticed,
        but the client waits at least a second before reconnecting and ticks are far shorter.
        """
        if self._closed:
            return
        if self.connected:
            if not self._announced:
                self._announce()
        elif self._online is None or self._online.done():
            # While the last `online` is still pending, the client sends it (again) once it is
            # connected; only an `online` that was delivered can have been undone by the will.
            self._announced = False

    def publish_telemetry(self) -> Future[None] | None:
        """Sample the sensors and publish one telemetry message (QoS 1, not retained).

        Returns the publish future, or None when the message was skipped because the device is
        not connected or has `NATIVE_MAX_UNACKED` publishes in flight (counted as skipped). Call
        it from one thread at a time (the scheduler's): `seq` and `ts` are not locked.
        """
        if self._closed or not self.connected:
            self.counter.skip()
            return None
        with self._lock:
            window_full = self._unacked >= NATIVE_MAX_UNACKED
            if not window_full:
                self._unacked += 1
        if window_full:
            self.counter.skip()
            return None
        payload = self.telemetry.next_payload()
        future = self._publisher.publish(self.telemetry_topic, payload, qos=1, retain=False)
        self.counter.track(future)
        future.add_done_callback(self._telemetry_done)
        return future

    def announce_offline(self) -> Future[None] | None:
        """Publish retained `offline` (first half of a graceful stop); None if not connected."""
        self._closed = True
        if not self.connected:
            return None
        future = self._publisher.publish(self.status_topic, OFFLINE_PAYLOAD, qos=1, retain=True)
        self.counter.track(future)
        return future

    def close(self) -> None:
        """DISCONNECT and stop the network thread (second half of a graceful stop); idempotent."""
        if self._take_stop():
            self._publisher.stop(disconnect=True)

    def stop(self, *, timeout_s: float = OFFLINE_ACK_TIMEOUT_S) -> bool:
        """Graceful shutdown: retained `offline`, wait for its PUBACK, then DISCONNECT.

        A normal DISCONNECT makes the broker discard the will, so the explicit `offline` is what
        tells subscribers. Returns whether the broker acknowledged `offline`.
        """
        future = self.announce_offline()
        acked = False
        if future is not None:
            try:
                future.result(timeout=timeout_s)
                acked = True
            except (FutureTimeoutError, ConnectionError):
                acked = False
        self.close()
        return acked

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT, like a power loss: the will fires.

        Blocks up to about a second: MqttPublisher.stop(disconnect=False) waits for the client's
        network loop to notice the stop request (and for in-flight publishes to be acked), and
        the connection stays open until then.
        """
        if self._take_stop():
            self._publisher.stop(disconnect=False)

    def _take_stop(self) -> bool:
        # The first of close()/crash() stops the client; later calls (a test's cleanup after a
        # crash) are no-ops instead of touching a stopped client.
        with self._lock:
            first = not self._stopped
            self._stopped = True
            self._closed = True
        return first

    def _announce(self) -> None:
        self._announced = True
        self._online = self._publisher.publish(
            self.status_topic, ONLINE_PAYLOAD, qos=1, retain=True
        )
        self.counter.track(self._online)

    def _telemetry_done(self, future: Future[None]) -> None:
        with self._lock:
            self._unacked -= 1
