"""The ESP32 node of the Raspberry Pi/Mosquitto stack (the `iot-node` profile).

From the stack's architecture document (docs/protocol.md, "The Raspberry Pi/Mosquitto stack"):
topics `iot/node/{id}/telemetry`, `iot/node/{id}/status` ("Node health (uptime, WiFi RSSI,
etc.)") and `iot/node/{id}/command` (down); the id level is the node number (`01`) while
the payload's `node_id` is `node_01`; telemetry is exactly
`{"node_id":"node_01","timestamp":1704844800,"sensors":{"temperature":22.5,"humidity":45.2},
"wifi_rssi":-65,"uptime":3600}`; commands are `{"command":"set_led","params":{"state":"on",
"brightness":128}}`, and after executing one "ESP32 publishes acknowledgment/status update".

Where the document is silent, the most plausible PlatformIO/Arduino sketch (each choice says why):

* PubSubClient: MQTT 3.1.1, clean session, publishes QoS 0, subscribes with its default QoS 0;
  client id = the payload's `node_id` (`node_01`), the name the stack gives the node.
* telemetry every 10 s (Telegraf -> InfluxDB -> Grafana dashboards refresh at 5-10 s), not
  retained; status every 30 s and right after every connect, retained, so a Grafana panel or the
  management utility sees the node's last health at once.
* a last will on the status topic, `{"node_id":"node_01","status":"offline"}`, QoS 1, retained:
  the status topic is where the stack looks for node health, and a retained status without a
  will would claim a dead node is fine forever.
* `timestamp` is epoch seconds after NTP (the document's example is a real date); `uptime` seconds.
* the status reply to a command is the status message with `last_command` and `result` (`ok`,
  or `error` with an `error` text for an unknown command or bad params); malformed JSON is
  ignored without a reply, as an ArduinoJson `deserializeJson` error return would be.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

import orjson

from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.mqtt.publisher import Will
from fieldhub.sim.link import LinkedDevice, Periodic
from fieldhub.sim.payloads import SensorModel
from fieldhub.sim.readings import monotonic_ms
from fieldhub.sim.stats import PublishCounter

IOT_NODE_TELEMETRY_PERIOD_S = 10.0
IOT_NODE_STATUS_PERIOD_S = 30.0
IOT_NODE_PUBLISH_QOS = 0
IOT_NODE_COMMAND_QOS = 0
IOT_NODE_WILL_QOS = 1
LED_BRIGHTNESS_MAX = 255
# Sensor resolution as the architecture document's example shows it: one decimal (DHT22-like).
IOT_NODE_DECIMALS = 1

LedSwitch = Literal["on", "off"]


def iot_node_topic_id(index: int) -> str:
    """The topic's id level for node number `index` (1-based): 1 -> `01`.

    As in the stack's topic tree (`iot/node/01/telemetry`).
    """
    if index < 1:
        raise ValueError(f"node numbers start at 1, got {index}")
    return f"{index:02d}"


def iot_node_name(topic_id: str) -> str:
    """The payload's `node_id` for a topic id: `01` -> `node_01`."""
    return f"node_{topic_id}"


def iot_node_telemetry_topic(topic_id: str) -> str:
    """`iot/node/{id}/telemetry`."""
    return f"iot/node/{topic_id}/telemetry"


def iot_node_status_topic(topic_id: str) -> str:
    """`iot/node/{id}/status`: node health, retained, and the will."""
    return f"iot/node/{topic_id}/status"


def iot_node_command_topic(topic_id: str) -> str:
    """`iot/node/{id}/command`: down-link from the management utility."""
    return f"iot/node/{topic_id}/command"


@dataclass(frozen=True, slots=True)
class Led:
    """The node's LED: on/off and PWM brightness 0-255."""

    state: LedSwitch = "off"
    brightness: int = 0


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What the node reports about the last command it received."""

    command: str
    ok: bool
    error: str | None = None


def iot_node_telemetry_payload(
    *,
    node_id: str,
    timestamp_s: int,
    temperature: float,
    humidity: float,
    wifi_rssi: int,
    uptime_s: int,
) -> bytes:
    """Telemetry in the architecture document's layout (compact, its key order).

    >>> iot_node_telemetry_payload(node_id="node_01", timestamp_s=1704844800, temperature=22.5,
    ...     humidity=45.2, wifi_rssi=-65, uptime_s=3600)
    b'{"node_id":"node_01","timestamp":1704844800,"sensors":{"temperature":22.5,"humidity":45.2},\
"wifi_rssi":-65,"uptime":3600}'
    """
    for name, value in (("temperature", temperature), ("humidity", humidity)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    return orjson.dumps(
        {
            "node_id": node_id,
            "timestamp": timestamp_s,
            "sensors": {"temperature": temperature, "humidity": humidity},
            "wifi_rssi": wifi_rssi,
            "uptime": uptime_s,
        }
    )


def iot_node_status_payload(
    *,
    node_id: str,
    timestamp_s: int,
    uptime_s: int,
    wifi_rssi: int,
    led: Led,
    last: CommandResult | None = None,
) -> bytes:
    """The node-health message; after a command it carries that command's result too.

    >>> iot_node_status_payload(node_id="node_01", timestamp_s=1704844800, uptime_s=3600,
    ...     wifi_rssi=-65, led=Led("on", 128), last=CommandResult("set_led", ok=True))
    b'{"node_id":"node_01","status":"online","timestamp":1704844800,"uptime":3600,\
"wifi_rssi":-65,"led":{"state":"on","brightness":128},"last_command":"set_led","result":"ok"}'
    """
    body: dict[str, object] = {
        "node_id": node_id,
        "status": "online",
        "timestamp": timestamp_s,
        "uptime": uptime_s,
        "wifi_rssi": wifi_rssi,
        "led": {"state": led.state, "brightness": led.brightness},
    }
    if last is not None:
        body["last_command"] = last.command
        body["result"] = "ok" if last.ok else "error"
        if last.error is not None:
            body["error"] = last.error
    return orjson.dumps(body)


def iot_node_offline_payload(node_id: str) -> bytes:
    """The will (and the graceful stop's last word): `{"node_id":...,"status":"offline"}`."""
    return orjson.dumps({"node_id": node_id, "status": "offline"})


def apply_iot_node_command(led: Led, payload: bytes) -> tuple[Led, CommandResult] | None:
    """The sketch's command handler as a pure function: (new LED, result), or None if ignored.

    `set_led` takes `params.state` (`on`/`off`) and/or `params.brightness` (0-255, constrained);
    whatever is absent keeps its value, and a bad value fails the command without changing the
    LED. Any other command is answered with an error. Bytes that are not a JSON object with a
    string `command` are ignored (no reply: the sketch cannot say which command failed).
    """
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("command"), str):
        return None
    name: str = message["command"]
    if name != "set_led":
        return led, CommandResult(name, ok=False, error=f"unknown command {name!r}")
    params = message.get("params", {})
    if not isinstance(params, dict):
        return led, CommandResult(name, ok=False, error="params must be an object")
    state = params.get("state", led.state)
    if state not in ("on", "off"):
        return led, CommandResult(name, ok=False, error="state must be 'on' or 'off'")
    brightness = params.get("brightness", led.brightness)
    if isinstance(brightness, bool) or not isinstance(brightness, int | float):
        return led, CommandResult(name, ok=False, error="brightness must be a number")
    if not math.isfinite(brightness):
        return led, CommandResult(name, ok=False, error="brightness must be finite")
    level = min(LED_BRIGHTNESS_MAX, max(0, int(brightness)))
    return Led(state=state, brightness=level), CommandResult(name, ok=True)


class IotNode(LinkedDevice):
    """One simulated node of the Raspberry Pi/Mosquitto stack (see the module docstring)."""

    kind = "iot-node"

    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        topic_id: str,
        seed: int = 0,
        counter: PublishCounter | None = None,
        telemetry_period_s: float = IOT_NODE_TELEMETRY_PERIOD_S,
        status_period_s: float = IOT_NODE_STATUS_PERIOD_S,
        uptime_offset_ms: int = 0,
        clock_ms: Callable[[], int] = monotonic_ms,
        wall_clock_s: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = iot_node_name(topic_id)
        self.telemetry_topic = iot_node_telemetry_topic(topic_id)
        self.status_topic = iot_node_status_topic(topic_id)
        self.command_topic = iot_node_command_topic(topic_id)
        super().__init__(
            endpoint=endpoint,
            device_id=topic_id,
            client_id=self.node_id,
            will=Will(
                topic=self.status_topic,
                payload=iot_node_offline_payload(self.node_id),
                qos=IOT_NODE_WILL_QOS,
                retain=True,
            ),
            subscriptions=[(self.command_topic, IOT_NODE_COMMAND_QOS)],
            counter=counter,
        )
        self.telemetry_period_s = telemetry_period_s
        self.status_period_s = status_period_s
        self.sensors = SensorModel(seed)
        self._clock_ms = clock_ms
        self._wall_clock_s = wall_clock_s
        self._boot_ms = clock_ms() - uptime_offset_ms
        self._state_lock = threading.Lock()
        self._led = Led()
        self._last_result: CommandResult | None = None
        self._last_rssi = round(self.sensors.rssi.value)

    @property
    def led(self) -> Led:
        """The LED as the node's next status reports it."""
        with self._state_lock:
            return self._led

    @property
    def last_result(self) -> CommandResult | None:
        """The result of the last command the node received, if any."""
        with self._state_lock:
            return self._last_result

    def uptime_s(self) -> int:
        """Seconds since the simulated node booted."""
        return (self._clock_ms() - self._boot_ms) // 1000

    def periodic(self) -> tuple[Periodic, ...]:
        """Telemetry every 10 s, status every 30 s."""
        return (
            Periodic("telemetry", self.telemetry_period_s, self.publish_telemetry),
            Periodic("status", self.status_period_s, self.publish_status, on_connect_too=True),
        )

    def next_telemetry_payload(self) -> bytes:
        """Sample the sensors and build the next telemetry message."""
        sample = self.sensors.sample()
        with self._state_lock:
            self._last_rssi = sample.rssi_dbm
        return iot_node_telemetry_payload(
            node_id=self.node_id,
            timestamp_s=int(self._wall_clock_s()),
            temperature=round(sample.temperature, IOT_NODE_DECIMALS),
            humidity=round(sample.humidity, IOT_NODE_DECIMALS),
            wifi_rssi=sample.rssi_dbm,
            uptime_s=self.uptime_s(),
        )

    def status_payload(self) -> bytes:
        """The node-health message as of now (with the last command's result, if any)."""
        with self._state_lock:
            led, last, rssi = self._led, self._last_result, self._last_rssi
        return iot_node_status_payload(
            node_id=self.node_id,
            timestamp_s=int(self._wall_clock_s()),
            uptime_s=self.uptime_s(),
            wifi_rssi=rssi,
            led=led,
            last=last,
        )

    def publish_telemetry(self) -> Future[None] | None:
        """Publish one telemetry message (QoS 0, not retained); None when skipped."""
        if self._closed or not self.connected:
            self.counter.skip()
            return None
        payload = self.next_telemetry_payload()
        return self.publish(self.telemetry_topic, payload, qos=IOT_NODE_PUBLISH_QOS)

    def publish_status(self) -> Future[None] | None:
        """Publish the node-health message (QoS 0, retained); None when skipped."""
        return self.publish(
            self.status_topic, self.status_payload(), qos=IOT_NODE_PUBLISH_QOS, retain=True
        )

    def on_connected(self) -> None:
        # Announce health at once: it replaces a retained will from an earlier connection.
        self.publish_status()

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.command_topic:
            return
        with self._state_lock:
            outcome = apply_iot_node_command(self._led, payload)
            if outcome is None:
                return
            self._led, self._last_result = outcome
        # The stack's command flow, step 4: "ESP32 publishes acknowledgment/status update".
        self.publish_status()

    def announce_offline(self) -> Future[None] | None:
        """On a graceful stop, publish what the will says: retained `status: offline`."""
        return self.publish_last_word(
            self.status_topic, iot_node_offline_payload(self.node_id), qos=IOT_NODE_WILL_QOS
        )
