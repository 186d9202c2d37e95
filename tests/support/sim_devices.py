"""Simulated native devices whose every published value the test knows."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.sim import NativeDevice, NativeTelemetry
from fieldhub.sim.payloads import epoch_ms

# How long a device waits for the broker's CONNACK and PUBACKs; loopback answers in milliseconds,
# this only bounds how long a broken test hangs.
MQTT_DEADLINE_S = 10.0
# Keys of a native payload that are not readings: the envelope version and the message's time.
ENVELOPE_KEYS = ("v", "ts")


class SteppedClock:
    """Epoch milliseconds that move only on `advance()`.

    A SimDevice's NativeDevice and its twin generator both read this clock, once per payload, so
    they compute the same `ts`.
    """

    def __init__(self) -> None:
        self._now_ms = epoch_ms()

    def __call__(self) -> int:
        return self._now_ms

    def advance(self) -> None:
        self._now_ms = max(epoch_ms(), self._now_ms + 1)


@dataclass(frozen=True, slots=True)
class Sent:
    """One telemetry message as published: its time (epoch us) and its readings."""

    ts_us: int
    values: dict[str, float]


class SimDevice:
    """The simulator's NativeDevice (status, last will, telemetry), plus the payloads it sent.

    NativeTelemetry is deterministic for a seed and a clock, so a twin built with the same ones
    yields the bytes the device publishes: the test knows every value without a second client
    listening on the broker.
    """

    def __init__(self, *, endpoint: MqttEndpoint, device_id: str, seed: int) -> None:
        self.id = device_id
        self._clock = SteppedClock()
        self._twin = NativeTelemetry(seed=seed, clock_ms=self._clock)
        self.device = NativeDevice(
            endpoint=endpoint, device_id=device_id, seed=seed, clock_ms=self._clock
        )

    def start(self) -> SimDevice:
        """Connect (with the last will set) and announce retained `online`."""
        self.device.start()
        assert self.device.wait_connected(MQTT_DEADLINE_S), f"{self.id} could not connect"
        return self

    def publish(self) -> Sent:
        """Publish one telemetry message QoS 1 and wait for the broker's PUBACK."""
        self._clock.advance()
        expected = orjson.loads(self._twin.next_payload())
        future = self.device.publish_telemetry()
        assert future is not None, f"{self.id} skipped a publish (not connected?)"
        future.result(timeout=MQTT_DEADLINE_S)
        readings = {
            key: float(value)
            for key, value in expected.items()
            if key not in ENVELOPE_KEYS and isinstance(value, int | float)
        }
        return Sent(ts_us=int(expected["ts"]) * 1000, values=readings)

    def crash(self) -> None:
        """Drop the TCP connection without DISCONNECT (power loss): the broker sends the will.

        Returns once the socket is closed; NativeDevice first waits (up to ~1 s) for the client's
        network thread to stop, with the connection still up.
        """
        self.device.crash()

    def stop(self) -> None:
        """Graceful shutdown (retained `offline`, DISCONNECT); a no-op after `crash()`."""
        self.device.stop()
