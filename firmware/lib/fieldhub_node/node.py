"""The node's state machine: given the time and what happened, what to publish and do.

Sans-I/O (like aiomqtt's split): the core decides, the transports act. The caller feeds events
(`on_connect`, `on_disconnect`, `on_reading`, `on_message`, `on_published`, `on_publish_failed`)
with the time, and carries out the returned actions in order:

* `Publish(topic, payload, retain, token)`: QoS 1. Report the outcome with `on_published(token)`
  or `on_publish_failed(token)` when `token` is not None;
* `Actuate(pulse_us, position)`: drive the window servo;
* `Reboot()`: restart the device (it always follows the ack that announced it).

Readings taken while offline go to a bounded ring buffer (oldest dropped and counted) when the
device clock is synced; after a reconnect `poll` sends them as JSON arrays of `{ts, values}`
entries, one batch in flight at a time, released only when the broker acknowledged the batch.
A batch lost with the connection is sent again; fieldhub's (device, metric, ts) key stores it once.

Times: `now_ms` is a monotonic millisecond count that never wraps (the glue extends
`ticks_ms`); `epoch_ms` is wall-clock epoch milliseconds or None while NTP has not answered.
"""

from fieldhub_node import CORE_VERSION
from fieldhub_node.actuator import ActuatorError, WindowActuator
from fieldhub_node.buffer import RingBuffer, next_batch
from fieldhub_node.commands import RecentAcks, ack_error, ack_ok, parse
from fieldhub_node.config import MAX_INTERVAL_S, MIN_INTERVAL_S
from fieldhub_node.jsonutil import is_number
from fieldhub_node.telemetry import Stamper, clean_readings, telemetry_payload

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are not evaluated
    pass

ONLINE = b"online"
OFFLINE = b"offline"
COMMANDS = ("set_window", "set_interval", "ping", "reboot")
TELEMETRY = "telemetry"
BACKFILL = "backfill"


class Publish:
    """Publish `payload` on `topic` with QoS 1; report the outcome if `token` is not None."""

    def __init__(self, topic: str, payload: bytes, retain: bool = False, token: Any = None) -> None:
        self.topic = topic
        self.payload = payload
        self.retain = retain
        self.token = token

    def __repr__(self) -> str:
        return "Publish(%r, %r, retain=%r)" % (self.topic, self.payload, self.retain)


class Actuate:
    """Drive the window servo to `pulse_us` (the window's new `position` in percent)."""

    def __init__(self, pulse_us: int, position: int) -> None:
        self.pulse_us = pulse_us
        self.position = position


class Reboot:
    """Restart the device; emitted only after the ack announcing it."""


class Node:
    """One fieldhub node's decisions. Not thread-safe: callers serialise events."""

    def __init__(self, config: dict[str, Any], device_id: str, now_ms: int = 0) -> None:
        self.device_id = device_id
        base = "devices/" + device_id + "/"
        self.telemetry_topic = base + "telemetry"
        self.status_topic = base + "status"
        self.commands_topic = base + "commands"
        self.ack_topic = base + "commands/ack"
        # The last will: retained `offline`, so the broker says it for a node that lost power.
        self.will_topic = self.status_topic
        self.will_payload = OFFLINE
        self.interval_ms = config["telemetry_interval_s"] * 1000
        self.window = WindowActuator(config["window"])
        self.buffer = RingBuffer(config["buffer_entries"])
        self.stamper = Stamper()
        self.acks = RecentAcks()
        self.online = False
        self._next_due_ms = now_ms  # the first reading is due at once
        self._batch_end = None  # type: int | None
        # Counters a person debugging a node wants (printed by the glue, sent as readings only
        # where they say something about the data: `buffer_dropped`).
        self.sent = 0
        self.unstamped_dropped = 0
        self.invalid_readings = 0
        self.commands_rejected = 0
        self.commands_repeated = 0
        self.commands_executed = 0

    # --- connection ---------------------------------------------------------------------------

    def on_connect(self, now_ms: int) -> list[Any]:
        """The broker accepted us: announce retained `online` (the will may have said offline)."""
        self.online = True
        self._batch_end = None
        return [Publish(self.status_topic, ONLINE, retain=True)]

    def on_disconnect(self) -> None:
        """The connection is gone: readings go to the buffer until the next `on_connect`."""
        self.online = False
        # A batch without its PUBACK may or may not have arrived: send it again after reconnect.
        self._batch_end = None

    def goodbye(self) -> list[Any]:
        """A graceful stop: retained `offline` before DISCONNECT (which discards the will)."""
        return [Publish(self.status_topic, OFFLINE, retain=True)]

    # --- telemetry ----------------------------------------------------------------------------

    def telemetry_due(self, now_ms: int) -> bool:
        """True when the next reading should be taken."""
        return now_ms >= self._next_due_ms

    def on_reading(self, readings: dict[str, Any], now_ms: int, epoch_ms: int | None) -> list[Any]:
        """A fresh set of sensor readings: publish it live, or buffer it while offline."""
        self._next_due_ms = now_ms + self.interval_ms
        values, bad = clean_readings(readings)
        self.invalid_readings += bad
        values["window_position"] = self.window.position
        if self.buffer.dropped:
            values["buffer_dropped"] = self.buffer.dropped
        seq, ts_ms = self.stamper.next(epoch_ms)
        if self.online:
            payload = telemetry_payload(ts_ms, seq, values)
            return [Publish(self.telemetry_topic, payload, token=(TELEMETRY, seq, ts_ms, values))]
        self._keep(seq, ts_ms, values)
        return []

    def _keep(self, seq: int, ts_ms: int | None, values: dict[str, Any]) -> None:
        if ts_ms is None:
            # Without a clock there is no time to send it under later: it cannot be backfilled.
            self.unstamped_dropped += 1
            return
        # `seq` goes in as a reading like in live telemetry, so gaps stay queryable.
        values["seq"] = seq
        self.buffer.append((ts_ms, values))

    def poll(self, now_ms: int) -> list[Any]:
        """While online with readings buffered and no batch in flight: the next backfill batch."""
        if not self.online or self._batch_end is not None:
            return []
        batch = next_batch(self.buffer)
        if batch is None:
            return []
        payload, end = batch
        self._batch_end = end
        return [Publish(self.telemetry_topic, payload, token=(BACKFILL, end))]

    def on_published(self, token: Any) -> None:
        """The broker acknowledged the publish carrying `token`."""
        if token[0] == BACKFILL:
            self.buffer.release_until(token[1])
            if self._batch_end == token[1]:
                self._batch_end = None
        self.sent += 1

    def on_publish_failed(self, token: Any) -> None:
        """The publish carrying `token` did not reach the broker (the connection broke)."""
        if token[0] == TELEMETRY:
            _, seq, ts_ms, values = token
            self._keep(seq, ts_ms, values)
        elif self._batch_end == token[1]:
            self._batch_end = None

    # --- commands -----------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes, now_ms: int) -> list[Any]:
        """A message on the commands topic: at most one execution and exactly one ack per id."""
        if topic != self.commands_topic:
            return []
        command_id, name, params, problem = parse(payload)
        if command_id is None:
            self.commands_rejected += 1
            return []
        previous = self.acks.get(command_id)
        if previous is not None:
            # Redelivery or retry: the same answer again, the command not run again.
            self.commands_repeated += 1
            return [Publish(self.ack_topic, previous)]
        actions = []  # type: list[Any]
        if problem is not None:
            ack = ack_error(command_id, problem)
        else:
            try:
                result = self._execute(name, params, now_ms, actions)
            except (ActuatorError, ValueError) as exc:
                ack = ack_error(command_id, str(exc))
                actions = []
            else:
                ack = ack_ok(command_id, result)
                self.commands_executed += 1
        self.acks.put(command_id, ack)
        # The ack goes after an actuation (it reports what was done) and before a reboot.
        reboot = [a for a in actions if isinstance(a, Reboot)]
        out = [a for a in actions if not isinstance(a, Reboot)]
        out.append(Publish(self.ack_topic, ack))
        return out + reboot

    def _execute(self, name: str, params: dict[str, Any], now_ms: int, actions: list[Any]) -> dict[str, Any]:
        if name == "set_window":
            result = self.window.request(params)
            actions.append(Actuate(self.window.pulse_us(), self.window.position))
            return result
        if name == "set_interval":
            seconds: Any = params.get("seconds")
            if not is_number(seconds):
                raise ValueError("seconds must be a number %d-%d, got %r" % (MIN_INTERVAL_S, MAX_INTERVAL_S, seconds))
            if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
                raise ValueError("seconds must be %d-%d, got %r" % (MIN_INTERVAL_S, MAX_INTERVAL_S, seconds))
            # The next reading moves with the period: at most one new period from now.
            self._next_due_ms = min(self._next_due_ms, now_ms + int(seconds * 1000))
            self.interval_ms = int(seconds * 1000)
            return {"seconds": self.interval_ms / 1000}
        if name == "ping":
            return {"pong": True, "version": CORE_VERSION, "buffered": len(self.buffer)}
        if name == "reboot":
            actions.append(Reboot())
            return {"rebooting": True}
        raise ValueError("unknown command %r; known: %s" % (name, ", ".join(COMMANDS)))
