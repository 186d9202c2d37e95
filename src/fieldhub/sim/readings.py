"""A simulated ESP32 gateway of the Flask/SQLite stack, reproducing its firmware's MQTT habits.

What the firmware does every `mqtt_poll_tick` (30 s), read from its source (docs/protocol.md,
"The Flask/SQLite gateway stack"):

1. open a fresh TCP connection and an MQTT v5 session with client id = its MAC (upper case,
   colons) and clean start;
2. publish ``{"macAddress":"<MAC>", "timestamp":<uptime ms>, "rssi":<0-100>}`` QoS 1, retained,
   to ``/readings/gateway/<MAC>`` (the leading slash is part of the topic);
3. wait for the PUBACK, then drop the TCP connection without sending DISCONNECT.

Every one of these habits is something fieldhub must cope with (a retained reading handed over
again on every subscription, a client id with colons, no DISCONNECT), so the simulator keeps all
of them. With `publish_temperature`, the same connection also carries a retained QoS 1
``/readings/temperature/<MAC>`` message in the same layout (the Flask stack's temperature sensors;
here the gateway itself is the sensor).

A cycle never blocks its caller: `begin_cycle()` starts the connection and queues the publishes
(the MQTT client sends them right after the CONNACK, as the firmware does after connecting); the
connection is dropped from the client's own network thread the moment the last PUBACK arrives.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.mqtt.publisher import MqttPublisher
from fieldhub.sim.payloads import (
    SensorModel,
    readings_gateway_payload,
    readings_gateway_topic,
    readings_temperature_payload,
    readings_temperature_topic,
    rssi_percent,
)
from fieldhub.sim.stats import PublishCounter

log = logging.getLogger("fieldhub.sim")

# The firmware's `mqtt_poll_tick`: one gateway message every 30 s.
READINGS_PERIOD_S = 30.0
# A cycle that has not been acknowledged after this long is abandoned and counted as failed. Long
# enough for a TCP connect, CONNACK and PUBACK on a loaded broker; short enough that a cycle
# normally ends before the next one is due (the firmware likewise gives up and retries next tick).
CYCLE_TIMEOUT_S = 10.0


def monotonic_ms() -> int:
    """A monotonic clock in milliseconds: the simulated device's uptime counter."""
    return time.monotonic_ns() // 1_000_000


@dataclass(eq=False)
class _Cycle:
    """One connection's life: connect, publish, wait for the PUBACKs, drop."""

    publisher: MqttPublisher
    deadline_s: float
    # The thread that began the cycle. A publish future completing on any other thread completed
    # in the client's network thread (see `_publish_done`).
    owner_thread: int
    remaining: int
    finished: bool = False
    ok: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class ReadingsGateway:
    """One simulated Flask-stack gateway: a fresh MQTT v5 connection per message, no DISCONNECT.

    `timestamp` is the uptime of the simulated device in milliseconds (not a date), counted from
    when it "booted": construction time minus `uptime_offset_ms`, so a fleet can start with
    gateways that have been up for different times.
    """

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        mac: str,
        period_s: float = READINGS_PERIOD_S,
        publish_temperature: bool = False,
        seed: int = 0,
        uptime_offset_ms: int = 0,
        protocol: int = 5,
        counter: PublishCounter | None = None,
        teardown: Executor | None = None,
        clock_ms: Callable[[], int] = monotonic_ms,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"period must be > 0 s, got {period_s}")
        # Validates the MAC once, up front, instead of on the first cycle.
        readings_gateway_payload(mac, 0, 0)
        self.endpoint = endpoint
        self.mac = mac
        self.period_s = period_s
        self.publish_temperature = publish_temperature
        self.protocol = protocol
        self.gateway_topic = readings_gateway_topic(mac)
        self.temperature_topic = readings_temperature_topic(mac)
        self.counter = counter if counter is not None else PublishCounter()
        self.sensors = SensorModel(seed)
        if uptime_offset_ms < 0:
            raise ValueError(f"uptime offset must be >= 0 ms, got {uptime_offset_ms}")
        self._clock_ms = clock_ms
        self._boot_ms = clock_ms() - uptime_offset_ms
        self._teardown = teardown
        self._lock = threading.Lock()
        self._cycle: _Cycle | None = None
        self.cycles_ok = 0
        self.cycles_failed = 0

    def uptime_ms(self) -> int:
        """Milliseconds since the simulated device booted (the firmware's `timestamp`)."""
        return self._clock_ms() - self._boot_ms

    @property
    def busy(self) -> bool:
        """True while a cycle's connection is still open."""
        with self._lock:
            return self._cycle is not None

    @property
    def connected(self) -> bool:
        """True while a cycle's connection is open and accepted by the broker."""
        with self._lock:
            cycle = self._cycle
        return cycle is not None and cycle.publisher.connected

    def begin_cycle(self) -> bool:
        """Start one connect-publish-drop cycle without blocking; False if one is still running.

        The payloads are built now, from the sensors and the uptime; the client holds the
        publishes until the broker has accepted the connection.
        """
        return self._begin() is not None

    def _begin(self) -> _Cycle | None:
        with self._lock:
            if self._cycle is not None:
                return None
            messages = self._messages()
            cycle = _Cycle(
                publisher=MqttPublisher(
                    endpoint=self.endpoint, client_id=self.mac, protocol=self.protocol, clean=True
                ),
                deadline_s=time.monotonic() + CYCLE_TIMEOUT_S,
                owner_thread=threading.get_ident(),
                remaining=len(messages),
            )
            self._cycle = cycle
        cycle.publisher.start()
        for topic, payload in messages:
            if cycle.finished:
                # An earlier publish of this cycle was refused outright and the cycle dropped.
                break
            future = cycle.publisher.publish(topic, payload, qos=1, retain=True)
            self.counter.track(future)
            future.add_done_callback(functools.partial(self._publish_done, cycle))
        return cycle

    def expire(self, now_s: float | None = None) -> bool:
        """Abandon the running cycle if it passed its deadline; True if one was abandoned."""
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            cycle = self._cycle
            if cycle is None or now_s < cycle.deadline_s:
                return False
        if self._abandon(cycle):
            log.warning("gateway %s: no PUBACK within %.0f s, dropped", self.mac, CYCLE_TIMEOUT_S)
            return True
        return False

    def abandon(self) -> bool:
        """Drop the running cycle now, acknowledged or not; True if there was one to drop."""
        with self._lock:
            cycle = self._cycle
        return cycle is not None and self._abandon(cycle)

    def _abandon(self, cycle: _Cycle) -> bool:
        with self._lock:
            if cycle.finished:
                return False
            self._finish_locked(cycle, ok=False)
        self._drop(cycle, in_network_thread=False)
        return True

    def publish_once(self, timeout_s: float = CYCLE_TIMEOUT_S) -> bool:
        """Run one cycle and wait for it; True when every message was acknowledged."""
        cycle = self._begin()
        if cycle is None:
            raise RuntimeError(f"gateway {self.mac} already has a cycle running")
        if not cycle.done.wait(timeout_s):
            if self._abandon(cycle):
                log.warning("gateway %s: no PUBACK within %.1f s, dropped", self.mac, timeout_s)
            cycle.done.wait()
        return cycle.ok

    def run(self, stop: threading.Event) -> None:
        """Publish every `period_s` until `stop` is set, as the firmware's main loop does."""
        next_s = time.monotonic()
        while not stop.is_set():
            self.publish_once(timeout_s=min(CYCLE_TIMEOUT_S, self.period_s))
            next_s += self.period_s
            stop.wait(max(0.0, next_s - time.monotonic()))

    def _messages(self) -> list[tuple[str, bytes]]:
        sample = self.sensors.sample()
        uptime_ms = self.uptime_ms()
        messages = [
            (
                self.gateway_topic,
                readings_gateway_payload(self.mac, uptime_ms, rssi_percent(sample.rssi_dbm)),
            )
        ]
        if self.publish_temperature:
            payload = readings_temperature_payload(self.mac, uptime_ms, sample.temperature)
            messages.append((self.temperature_topic, payload))
        return messages

    def _publish_done(self, cycle: _Cycle, future: Future[None]) -> None:
        ok = not future.cancelled() and future.exception() is None
        with self._lock:
            if cycle.finished:
                # The cycle was already abandoned; this is its publisher failing what was pending.
                return
            if ok:
                cycle.remaining -= 1
                if cycle.remaining > 0:
                    return
            self._finish_locked(cycle, ok=ok)
        # MqttPublisher completes futures in its network thread when the PUBACK arrives, and
        # fails them only in the thread that called publish() or stop(). So a future finishing
        # off the owner thread is the PUBACK path: we are in the network thread.
        self._drop(cycle, in_network_thread=threading.get_ident() != cycle.owner_thread)

    def _finish_locked(self, cycle: _Cycle, *, ok: bool) -> None:
        cycle.finished = True
        cycle.ok = ok
        if ok:
            self.cycles_ok += 1
        else:
            self.cycles_failed += 1

    def _drop(self, cycle: _Cycle, *, in_network_thread: bool) -> None:
        """Close the TCP connection without DISCONNECT, as the firmware does after its PUBACK.

        In the network thread this is immediate: stopping the loop from inside it does not wait
        for it, and the socket closes right after the PUBACK. From any other thread
        MqttPublisher.stop waits up to a second for the network loop to wake up, so that goes to
        the teardown executor when there is one, to keep a scheduler thread free.
        """
        if in_network_thread or self._teardown is None:
            self._close(cycle)
        else:
            self._teardown.submit(self._close, cycle)

    def _close(self, cycle: _Cycle) -> None:
        cycle.publisher.stop(disconnect=False)
        with self._lock:
            if self._cycle is cycle:
                self._cycle = None
        cycle.done.set()
