"""The ESP32 Arduino node of the FastAPI/RabbitMQ/React stack (`nrn-dilanka/rnr-iot`).

What the firmware does, from the stack's write-up and its firmware source (docs/protocol.md,
"The FastAPI/RabbitMQ/React stack", which also lists where this simulator does not follow the
source yet), and what we chose where they are silent (each choice says why):

* id: `WiFi.macAddress()` with the colons removed (the write-up: `node_id.replace(":", "")`), so
  topics are `devices/3CE90E100001/...`; fieldhub canonicalises that spelling to the MAC.
* client id: the same `node_id` (the write-up makes the MAC the node's one identity; a random
  `ESP32Client-xxxx` would make every reboot a new client).
* MQTT 3.1.1 with a clean session (PubSubClient; the stack's broker is RabbitMQ's MQTT plugin,
  which speaks nothing newer), keep-alive is fieldhub's client default.
* last will: `offline`, QoS 1, retained, on `devices/{id}/status` (the firmware source).
* every 1 s, `devices/{id}/data`: one flat ArduinoJson object (compact, fields in the order the
  sketch sets them) with exactly `temperature`, `humidity`, `gas_sensor`, `servo_angle`,
  `light_state`, `fan_state`, `wifi_rssi`, `uptime`, `status`, `node_id`, `timestamp`. The
  write-up's prose says sensors are read "every 2 seconds"; the firmware source sends the data
  message every 1 s, so 1 s it is. `light_state`/`fan_state` are booleans: the write-up's
  firmware excerpts drive them as `bool` (`handleFanControl(true)`, `bool shouldFanBeOn`) and the
  firmware source lists booleans among its data fields. `uptime` is `millis() / 1000` (seconds),
  `timestamp` is local time `"HH:MM:SS"` from `getLocalTime()`, or `"unknown"` until NTP has
  synced.
* every 3 s, a JSON heartbeat on `devices/{id}/status`, and one right after every connect so the
  retained will `offline` is replaced at once. Retained, so the topic's retained value is always
  the latest word (a heartbeat or the will), never a stale `offline` under a live device.
* publishes are QoS 0 (PubSubClient cannot publish anything else); it subscribes to
  `devices/{id}/commands` with PubSubClient's default QoS 0 and obeys
  `{"action":"SERVO_ANGLE","angle":90,...}`, `LIGHT_ON`, `LIGHT_OFF`, `FAN_ON`, `FAN_OFF` (the
  write-up's manual controls: servo 0-180 degrees, relays for light and fan). There is no
  acknowledgement: the next data message shows the new state (the write-up: "Confirmation: status
  update sent back through sensor data").

Left out: the write-up's smart automation (schedule, temperature and gas thresholds) would fight a
test's commands, and `REBOOT`/firmware update need a boot sequence the simulator does not model;
unknown actions are ignored, as the sketch's `if/else` chain does.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace

import orjson

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.mqtt.publisher import Will
from fieldhub.sim.link import LinkedDevice, Periodic
from fieldhub.sim.payloads import BoundedWalk, SensorModel, _check_mac
from fieldhub.sim.readings import monotonic_ms
from fieldhub.sim.stats import PublishCounter

FASTAPI_DATA_PERIOD_S = 1.0
FASTAPI_HEARTBEAT_PERIOD_S = 3.0
# PubSubClient publishes QoS 0 only; its subscribe() defaults to QoS 0 and the sketch passes none.
FASTAPI_PUBLISH_QOS = 0
FASTAPI_COMMAND_QOS = 0
FASTAPI_WILL_QOS = 1
FASTAPI_OFFLINE_PAYLOAD = b"offline"
# Between power-on and the first successful getLocalTime(): WiFi association (~1 s) plus the first
# SNTP answer (~1 s on a LAN). Until then the sketch prints "unknown".
FASTAPI_NTP_SYNC_S = 2.0
# The sketch's clock: configTime() with a zero offset, so "HH:MM:SS" is UTC (the write-up shows no
# time zone; a fleet spread over zones would log a mess otherwise).
UNKNOWN_TIME = "unknown"
SERVO_MIN_DEG = 0
SERVO_MAX_DEG = 180
# An SG90 is commonly centred at power-on so the arm has room both ways.
SERVO_START_DEG = 90
# Simulated nodes take MACs from this index up (mac_for_index), so they never share a MAC, and so
# a device id, with the readings gateways (indices from 1, 10,000 devices at most).
FASTAPI_MAC_INDEX_BASE = 0x10_0000
# The MQ-2 reading as the sketch reports it: the write-up's emergency threshold is `> 100`, so
# the normal range sits well below it.
GAS_CENTER = 45.0
GAS_MIN = 20.0
GAS_MAX = 95.0
GAS_STEP = 2.0
# ESP.getFreeHeap() on a WiFi + MQTT + ArduinoJson sketch: ~200 kB, wandering a few kB.
FREE_HEAP_CENTER_B = 200_000.0
FREE_HEAP_MIN_B = 180_000.0
FREE_HEAP_MAX_B = 220_000.0
FREE_HEAP_STEP_B = 500.0
# Salts for the generators of the node's extra sensors, so none shares a stream with another (the
# heap walk also advances in the network thread, on connect, and random.gauss is not thread-safe).
GAS_SEED_SALT = 0x0FA5_7A91
HEAP_SEED_SALT = 0x4EA9_0001
# The sketch's DHT22 has 0.1 resolution for both temperature and humidity.
DHT_DECIMALS = 1

ACTIONS = ("SERVO_ANGLE", "LIGHT_ON", "LIGHT_OFF", "FAN_ON", "FAN_OFF")


def fastapi_node_id(mac: str) -> str:
    """The sketch's `node_id`: the MAC without colons, `3C:E9:0E:10:00:01` -> `3CE90E100001`."""
    _check_mac(mac)
    return mac.replace(":", "")


def fastapi_data_topic(node_id: str) -> str:
    """`devices/{node_id}/data`: the flat data object, every second."""
    return f"devices/{node_id}/data"


def fastapi_status_topic(node_id: str) -> str:
    """`devices/{node_id}/status`: heartbeats, and the retained `offline` will."""
    return f"devices/{node_id}/status"


def fastapi_commands_topic(node_id: str) -> str:
    """`devices/{node_id}/commands`: what the backend sends down."""
    return f"devices/{node_id}/commands"


def clock_text(epoch_s: float | None) -> str:
    """`getLocalTime()` formatted `%H:%M:%S` (UTC), or `unknown` when there is no time yet."""
    if epoch_s is None:
        return UNKNOWN_TIME
    return time.strftime("%H:%M:%S", time.gmtime(epoch_s))


@dataclass(frozen=True, slots=True)
class Actuators:
    """What the node drives: the servo arm and the light and fan relays."""

    servo_angle: int = SERVO_START_DEG
    light_state: bool = False
    fan_state: bool = False


def fastapi_data_payload(
    *,
    node_id: str,
    temperature: float,
    humidity: float,
    gas_sensor: int,
    actuators: Actuators,
    wifi_rssi: int,
    uptime_s: int,
    clock: str,
) -> bytes:
    """The data object as ArduinoJson's serializeJson writes it: compact, in insertion order.

    >>> fastapi_data_payload(node_id="3CE90E100001", temperature=24.3, humidity=51.2,
    ...     gas_sensor=45, actuators=Actuators(), wifi_rssi=-61, uptime_s=12, clock="unknown")
    b'{"temperature":24.3,"humidity":51.2,"gas_sensor":45,"servo_angle":90,"light_state":false,\
"fan_state":false,"wifi_rssi":-61,"uptime":12,"status":"online","node_id":"3CE90E100001",\
"timestamp":"unknown"}'
    """
    for name, value in (("temperature", temperature), ("humidity", humidity)):
        # A failed DHT read gives NaN; ArduinoJson writes it as null, which this simulator never
        # means to send.
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    return orjson.dumps(
        {
            "temperature": temperature,
            "humidity": humidity,
            "gas_sensor": gas_sensor,
            "servo_angle": actuators.servo_angle,
            "light_state": actuators.light_state,
            "fan_state": actuators.fan_state,
            "wifi_rssi": wifi_rssi,
            "uptime": uptime_s,
            "status": "online",
            "node_id": node_id,
            "timestamp": clock,
        }
    )


def fastapi_heartbeat_payload(
    *, node_id: str, uptime_s: int, wifi_rssi: int, free_heap: int
) -> bytes:
    """The heartbeat on the status topic: who, `online`, and the node's health numbers.

    The write-up shows `publishStatus("...")` but not its JSON; we send what such a heartbeat
    carries: the node, its state word (the backend's online/offline indicator reads `status`),
    uptime in seconds, RSSI in dBm and free heap in bytes.
    """
    return orjson.dumps(
        {
            "node_id": node_id,
            "status": "online",
            "uptime": uptime_s,
            "wifi_rssi": wifi_rssi,
            "free_heap": free_heap,
        }
    )


def apply_fastapi_command(actuators: Actuators, payload: bytes) -> Actuators | None:
    """The sketch's command callback as a pure function: the new state, or None if ignored.

    Ignored, as the sketch does (it prints to Serial and returns): bytes that are not a JSON
    object, an unknown `action`, a `SERVO_ANGLE` without a numeric `angle`. The angle is
    truncated to an integer and constrained to 0-180 (`servo.write()` would clamp it anyway).
    `message_id` and `cmd_timestamp` are accepted and not used: the firmware sends no ack.
    """
    try:
        command = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(command, dict):
        return None
    action = command.get("action")
    if action == "SERVO_ANGLE":
        angle = command.get("angle")
        if isinstance(angle, bool) or not isinstance(angle, int | float):
            return None
        if not math.isfinite(angle):
            return None
        return replace(actuators, servo_angle=min(SERVO_MAX_DEG, max(SERVO_MIN_DEG, int(angle))))
    if action == "LIGHT_ON":
        return replace(actuators, light_state=True)
    if action == "LIGHT_OFF":
        return replace(actuators, light_state=False)
    if action == "FAN_ON":
        return replace(actuators, fan_state=True)
    if action == "FAN_OFF":
        return replace(actuators, fan_state=False)
    return None


class FastApiNode(LinkedDevice):
    """One simulated node of the FastAPI/RabbitMQ stack (see the module docstring)."""

    kind = "fastapi"

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        mac: str,
        seed: int = 0,
        counter: PublishCounter | None = None,
        data_period_s: float = FASTAPI_DATA_PERIOD_S,
        heartbeat_period_s: float = FASTAPI_HEARTBEAT_PERIOD_S,
        ntp_sync_s: float = FASTAPI_NTP_SYNC_S,
        uptime_offset_ms: int = 0,
        clock_ms: Callable[[], int] = monotonic_ms,
        wall_clock_s: Callable[[], float] = time.time,
    ) -> None:
        node_id = fastapi_node_id(mac)
        self.mac = mac
        self.data_topic = fastapi_data_topic(node_id)
        self.status_topic = fastapi_status_topic(node_id)
        self.commands_topic = fastapi_commands_topic(node_id)
        super().__init__(
            endpoint=endpoint,
            device_id=node_id,
            client_id=node_id,
            will=Will(
                topic=self.status_topic,
                payload=FASTAPI_OFFLINE_PAYLOAD,
                qos=FASTAPI_WILL_QOS,
                retain=True,
            ),
            subscriptions=[(self.commands_topic, FASTAPI_COMMAND_QOS)],
            counter=counter,
        )
        self.data_period_s = data_period_s
        self.heartbeat_period_s = heartbeat_period_s
        self.ntp_sync_s = ntp_sync_s
        self.sensors = SensorModel(seed)
        self._gas = BoundedWalk(
            rng=random.Random(seed ^ GAS_SEED_SALT),
            center=GAS_CENTER,
            low=GAS_MIN,
            high=GAS_MAX,
            step=GAS_STEP,
        )
        self._heap = BoundedWalk(
            rng=random.Random(seed ^ HEAP_SEED_SALT),
            center=FREE_HEAP_CENTER_B,
            low=FREE_HEAP_MIN_B,
            high=FREE_HEAP_MAX_B,
            step=FREE_HEAP_STEP_B,
        )
        self._clock_ms = clock_ms
        self._wall_clock_s = wall_clock_s
        self._boot_ms = clock_ms() - uptime_offset_ms
        # Commands arrive in the network thread, data is built in the scheduler's.
        self._state_lock = threading.Lock()
        self._actuators = Actuators()
        self._last_rssi = round(self.sensors.rssi.value)
        self.commands_applied = 0
        self.commands_ignored = 0

    @property
    def actuators(self) -> Actuators:
        """The servo, light and fan as the next data message will report them."""
        with self._state_lock:
            return self._actuators

    def uptime_s(self) -> int:
        """`millis() / 1000` of the simulated node."""
        return (self._clock_ms() - self._boot_ms) // 1000

    def clock(self) -> str:
        """What `timestamp` says now: `unknown` until NTP synced, then `HH:MM:SS` UTC."""
        synced = (self._clock_ms() - self._boot_ms) >= self.ntp_sync_s * 1000
        return clock_text(self._wall_clock_s() if synced else None)

    def periodic(self) -> tuple[Periodic, ...]:
        """Data every second, a heartbeat every three."""
        return (
            Periodic("data", self.data_period_s, self.publish_data),
            Periodic(
                "heartbeat", self.heartbeat_period_s, self.publish_heartbeat, on_connect_too=True
            ),
        )

    def next_data_payload(self) -> bytes:
        """Sample the sensors and build the next data message (advances the sensor models)."""
        sample = self.sensors.sample()
        with self._state_lock:
            actuators = self._actuators
            self._last_rssi = sample.rssi_dbm
        return fastapi_data_payload(
            node_id=self.device_id,
            temperature=round(sample.temperature, DHT_DECIMALS),
            humidity=round(sample.humidity, DHT_DECIMALS),
            gas_sensor=round(self._gas.next()),
            actuators=actuators,
            wifi_rssi=sample.rssi_dbm,
            uptime_s=self.uptime_s(),
            clock=self.clock(),
        )

    def next_heartbeat_payload(self) -> bytes:
        """Build the next heartbeat (advances the free-heap model)."""
        with self._state_lock:
            rssi = self._last_rssi
            heap = round(self._heap.next())
        return fastapi_heartbeat_payload(
            node_id=self.device_id, uptime_s=self.uptime_s(), wifi_rssi=rssi, free_heap=heap
        )

    def publish_data(self) -> Future[None] | None:
        """Publish one data message (QoS 0, not retained); None when skipped."""
        if self._closed or not self.connected:
            self.counter.skip()
            return None
        return self.publish(self.data_topic, self.next_data_payload(), qos=FASTAPI_PUBLISH_QOS)

    def publish_heartbeat(self) -> Future[None] | None:
        """Publish one heartbeat (QoS 0, retained); None when skipped."""
        if self._closed or not self.connected:
            self.counter.skip()
            return None
        return self.publish(
            self.status_topic, self.next_heartbeat_payload(), qos=FASTAPI_PUBLISH_QOS, retain=True
        )

    def on_connected(self) -> None:
        # The sketch's reconnect(): subscribe (done by the link), then say it is alive, which
        # replaces the retained `offline` a previous connection's will may have left.
        self.publish_heartbeat()

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.commands_topic:
            return
        with self._state_lock:
            changed = apply_fastapi_command(self._actuators, payload)
            if changed is None:
                self.commands_ignored += 1
            else:
                self._actuators = changed
                self.commands_applied += 1

    def announce_offline(self) -> Future[None] | None:
        """On a graceful stop, say what the will would have said: retained `offline`."""
        return self.publish_last_word(
            self.status_topic, FASTAPI_OFFLINE_PAYLOAD, qos=FASTAPI_WILL_QOS
        )
