"""A simulated device running the firmware's own core (`fieldhub_node`) over paho.

The node's decisions (telemetry payloads, `seq`/`ts`, the offline ring buffer and its backfill
batches, command parsing, dedupe and acks, the window actuator's limits) come from the same
`fieldhub_node.Node` that runs on the ESP32; this module is only its CPython transport, as
`firmware/main.py` is its MicroPython one. Lifecycle, as the firmware does it (docs/protocol.md,
"Status and presence"; firmware/README.md, "Contract"):

1. connect with client id = device id and a last will of retained QoS 1 `offline` on
   `devices/{id}/status`, so the broker marks the device offline if it vanishes;
2. on every (re)connect, subscribe to `devices/{id}/commands` (a clean session forgets it) and,
   once subscribed, publish retained `online`: after a connection loss the broker has already
   published the will, so only a fresh `online` undoes it;
3. publish telemetry QoS 1 (not retained) on `devices/{id}/telemetry`; while disconnected,
   readings go to the node's ring buffer and are sent late as `[{"ts","values"}...]` batches;
4. either `stop()`: retained `offline`, then DISCONNECT (the broker discards the will), or
   `crash()`: drop TCP without DISCONNECT, as losing power does (the broker publishes the will).

The device does no scheduling itself: `publish_telemetry()` and `maintain()` are called by the
fleet's scheduler thread (`fleet.py`) or by a test, so many devices share one thread. Commands
and connection changes arrive in the client's network thread.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.mqtt.publisher import MqttPublisher, Will
from fieldhub.sim.payloads import (
    OFFLINE_PAYLOAD,
    NativeTelemetry,
    epoch_ms,
    native_status_topic,
    native_telemetry_topic,
    sim_node,
)
from fieldhub.sim.stats import PublishCounter
from fieldhub_node.node import Actuate, Publish, Reboot

log = logging.getLogger("fieldhub.sim")

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
    """One native-profile device: the firmware core with status, will, telemetry and commands."""

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        device_id: str,
        seed: int = 0,
        protocol: int = 5,
        counter: PublishCounter | None = None,
        clock_ms: Callable[[], int] = epoch_ms,
        buffer_entries: int | None = None,
    ) -> None:
        self.device_id = device_id
        self.status_topic = native_status_topic(device_id)
        self.telemetry_topic = native_telemetry_topic(device_id)
        self.counter = counter if counter is not None else PublishCounter()
        self.node = sim_node(device_id, buffer_entries=buffer_entries)
        self.telemetry = NativeTelemetry(seed=seed, clock_ms=clock_ms, node=self.node)
        self._link = MqttPublisher(
            endpoint=endpoint,
            client_id=device_id,
            protocol=protocol,
            will=Will(topic=self.status_topic, payload=OFFLINE_PAYLOAD, qos=1, retain=True),
            clean=True,
            subscriptions=[(self.node.commands_topic, 1)],
            on_message=self._on_message,
            on_subscribed=self._on_ready,
        )
        # The core is not thread-safe: this lock serialises it between the scheduler thread and
        # the network thread. It is never held while publishing, because paho calls our publish
        # callbacks holding its own lock, which publish() needs too.
        self._lock = threading.Lock()
        # Publish outcomes (token, delivered) waiting to be told to the core: a callback that
        # cannot take the lock at once leaves its outcome here instead of waiting for it.
        self._outcomes: collections.deque[tuple[Any, bool]] = collections.deque()
        self._ready = threading.Event()
        self._start_ns = time.monotonic_ns()
        self._unacked = 0
        self._started = False
        # `_closed`: no more telemetry or announcements. `_stopped`: the client has been stopped.
        self._closed = False
        self._stopped = False
        # What the node asked its hardware to do: the servo pulse, and reboots (a simulated
        # device only counts them; its process keeps running).
        self.window_pulse_us = self.node.window.pulse_us()
        self.reboots = 0

    @property
    def connected(self) -> bool:
        """True while the broker has accepted the device's connection."""
        return self._link.connected

    @property
    def next_seq(self) -> int:
        """The `seq` the next reading will carry (= readings taken so far, live or buffered)."""
        return self.telemetry.next_seq

    @property
    def unacked(self) -> int:
        """Telemetry publishes (live and backfill) still waiting for their PUBACK."""
        with self._lock:
            return self._unacked

    @property
    def buffered(self) -> int:
        """Readings waiting in the node's ring buffer to be sent late."""
        with self._lock:
            return len(self.node.buffer)

    @property
    def window_position(self) -> int:
        """The window actuator's position in percent, as the node reports it in telemetry."""
        return self.node.window.position

    def start(self) -> None:
        """Connect in the background; `online` goes out once the commands are subscribed."""
        if self._started:
            raise RuntimeError(f"{self.device_id} was already started")
        self._started = True
        self._link.start()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected and subscribed, or `timeout_s` passes; returns whether so."""
        return self._ready.wait(timeout_s) and self.connected

    def maintain(self) -> None:
        """Tell the core what the broker acknowledged, and send the next backfill batch.

        Called on every scheduler tick (a test calls it itself). One batch is in flight at a
        time, so a large backlog drains at one batch per tick and broker round trip.
        """
        if self._closed:
            return
        with self._lock:
            self._drain_outcomes()
            actions = self.node.poll(self._now_ms())
        self._run(actions)

    def publish_telemetry(self) -> Future[None] | None:
        """Take one reading: published live (QoS 1) while connected, else buffered by the node.

        Returns the publish future, or None when nothing was published now: the reading was
        buffered (offline), or the device has `NATIVE_MAX_UNACKED` publishes in flight (the
        reading is then not taken). Both count as skipped. Call it from one thread at a time.
        """
        if self._closed:
            self.counter.skip()
            return None
        with self._lock:
            self._drain_outcomes()
            if self.node.online and self._unacked >= NATIVE_MAX_UNACKED:
                actions: list[Any] = []
            else:
                actions = self.telemetry.take_reading(self._now_ms())
        futures = self._run(actions)
        if not futures:
            self.counter.skip()
            return None
        return futures[0]

    def send_command_payload(self, payload: bytes) -> None:
        """Deliver a command as if it came from the broker (for tests without a broker path)."""
        self._on_message(self.node.commands_topic, payload)

    def announce_offline(self) -> Future[None] | None:
        """Publish retained `offline` (first half of a graceful stop); None if not connected."""
        self._closed = True
        if not self.connected:
            return None
        with self._lock:
            actions = self.node.goodbye()
        futures = self._run(actions)
        return futures[0] if futures else None

    def close(self) -> None:
        """DISCONNECT and stop the network thread (second half of a graceful stop); idempotent."""
        if self._take_stop():
            self._link.stop(disconnect=True)

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
            self._link.stop(disconnect=False)

    # --- internals ----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return (time.monotonic_ns() - self._start_ns) // 1_000_000

    def _take_stop(self) -> bool:
        # The first of close()/crash() stops the client; later calls (a test's cleanup after a
        # crash) are no-ops instead of touching a stopped client.
        with self._lock:
            first = not self._stopped
            self._stopped = True
            self._closed = True
        return first

    def _on_ready(self, up: bool) -> None:
        # Network thread: the connection is up and subscribed, or it is gone.
        actions: list[Any] = []
        with self._lock:
            if up:
                self._ready.set()
                if not self._closed:
                    actions = self.node.on_connect(self._now_ms())
            else:
                self._ready.clear()
                self.node.on_disconnect()
        self._run(actions)

    def _on_message(self, topic: str, payload: bytes) -> None:
        # Network thread: a command. The ack is published from here, as the firmware does.
        with self._lock:
            actions = self.node.on_message(topic, payload, self._now_ms())
        self._run(actions)

    def _run(self, actions: Sequence[Any]) -> list[Future[None]]:
        """Carry out the core's actions in order (never holding the lock); the publish futures."""
        futures: list[Future[None]] = []
        for action in actions:
            if isinstance(action, Publish):
                future = self._link.publish(
                    action.topic, action.payload, qos=1, retain=action.retain
                )
                self.counter.track(future)
                if action.token is not None:
                    with self._lock:
                        self._unacked += 1
                    future.add_done_callback(functools.partial(self._outcome, action.token))
                futures.append(future)
            elif isinstance(action, Actuate):
                self.window_pulse_us = action.pulse_us
            elif isinstance(action, Reboot):
                self.reboots += 1
                log.info("%s: reboot requested (a simulated node keeps running)", self.device_id)
        return futures

    def _outcome(self, token: Any, future: Future[None]) -> None:
        # Often runs in the network thread while paho holds its own lock: never wait for ours.
        self._outcomes.append((token, future.exception() is None))
        if self._lock.acquire(blocking=False):
            try:
                self._drain_outcomes()
            finally:
                self._lock.release()

    def _drain_outcomes(self) -> None:
        # Caller holds the lock.
        while self._outcomes:
            token, delivered = self._outcomes.popleft()
            self._unacked -= 1
            if delivered:
                self.node.on_published(token)
            else:
                self.node.on_publish_failed(token)
