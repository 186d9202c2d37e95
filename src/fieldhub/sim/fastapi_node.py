"""The ESP32 node of the FastAPI/RabbitMQ/React stack (`nrn-dilanka/rnr-iot`), from its firmware.

Source: `firmware/IoT_Platform_Node/IoT_Platform_Node.ino` of that repository. Each fact below
names the function of the sketch it comes from.

* Identity (`setup()`): `node_id` is `WiFi.macAddress()` without colons (`3CE90E100001`); topics
  `devices/{node_id}/data`, `devices/{node_id}/commands` and `devices/{node_id}/commands/last`.
* Connection (`connectMQTT()`): PubSubClient (MQTT 3.1.1), client id `ESP32-{node_id}`,
  credentials compiled in (`FASTAPI_MQTT_USERNAME`/`FASTAPI_MQTT_PASSWORD` below; the simulator
  logs in with whatever its endpoint carries, because a test broker does not know that user),
  `cleanSession=false`, last will `offline` QoS 1 retained on `devices/{node_id}/status`, the only
  message ever sent to that topic. After each CONNACK it subscribes to the commands topic and to
  `/last`, both QoS 1, then publishes the status message `online`, then one data message. On the
  first connect after boot `setup()` adds `testMQTTPublish()`: `{"test":"ping","node_id":...}`.
  (The sketch waits 1 s before the data message and 1 s before the ping; the simulator does not.)
* Everything goes to the data topic with PubSubClient's `publish()`: QoS 0, not retained.
  - data (`readAndPublishSensors()`, every `SENSOR_INTERVAL` = 1 s from `loop()`):
    `timestamp` (`%H:%M:%S` local time, or `unknown` before NTP), `temperature`, `humidity`,
    `humidity_mq`, `humidity_mq_raw`, `gas_sensor`, `status` (`online`), `node_id`,
    `servo_angle`, `light_state`, `fan_state`, `relay3_state`, `relay4_state`,
    `real_model_state`, `smart_mode`, `uptime` (`millis()`), `wifi_rssi`, in that order, into a
    `StaticJsonDocument<250>`. Under ArduinoJson 6 a member takes a 16-byte slot on the ESP32 and
    copied strings (the clock text, `node_id`) take their length + 1, so only the first 14
    members fit: `smart_mode`, `uptime` and `wifi_rssi` are silently dropped and the message is
    264-279 bytes. Under ArduinoJson 7 (no fixed capacity) all 17 fit, the message is 308 bytes or
    more, and the sketch's `payload.length() > 300` check drops every data message. The
    simulator follows ArduinoJson 6 by default (`arduinojson=7` reproduces the other): the
    sketch's comments record raising that limit from 256 to 300 when `humidity_mq` was added,
    which fits 6's 14-member message and not 7's.
  - heartbeat (`publishHeartbeat()`, every `HEARTBEAT_INTERVAL` = 3 s):
    `{"type":"heartbeat","status":"online","node_id":...,"uptime":<ms>}`.
  - status (`publishStatus(status)`): `timestamp` (`%Y-%m-%d %H:%M:%S` local time, or
    `unknown`), `status`, `uptime`, `free_heap`, `wifi_rssi`, `node_id`, `servo_angle`,
    `gas_sensor`, `signal_strength` (Arduino `map(RSSI, -100, -30, 0, 100)`: integer, truncated,
    not clamped). Sent on connect (`online`), on `STATUS_REQUEST` (`online`), on `REBOOT`
    (`rebooting`), around a firmware update (`updating`, then `update_failed` or
    `no_update_needed`; a successful update restarts inside `httpUpdate.update()` before its
    `update_success` could be sent), and after each actuator change: `servo_updated_wifi`,
    `light_on`/`light_off`, `fan_on`/`fan_off`, `relay{n}_on`/`relay{n}_off`,
    `real_model_on`/`real_model_off`.
* Clock (`configTime()`): UTC+5:30 (`gmtOffset_sec = 5.5 * 3600`), no daylight saving; both
  timestamps are that local time without a zone. `uptime` is `millis()`: milliseconds, an
  unsigned 32-bit counter that wraps after 49.7 days.
* Readings (`readAndPublishSensors()`): the sketch simulates temperature and humidity itself,
  from 20.0 C and 50.0 %, adding `random(-25, 26) / 100.0` and `random(-100, 101) / 100.0` per
  message, constrained to 15-35 C and 30-80 %, reported as `round(x * 10) / 10.0`. `gas_sensor`
  is the raw 12-bit ADC of GPIO34 (an MQ gas sensor). `humidity_mq_raw` is GPIO25, which is on
  ADC2: the ESP32 cannot read ADC2 while WiFi is on and `analogRead()` returns 0, so the node
  sends 0 and 0.0 (written `0`: ArduinoJson writes a whole float without decimals).
* Commands (`mqttCallback()`): JSON into a `StaticJsonDocument<256>` (too big: ignored); on
  `/last` a `cmd_timestamp` more than 300 s before the device's `time()` is ignored (unchecked
  when either is 0); then `action`: `REBOOT`, `STATUS_REQUEST`, `FIRMWARE_UPDATE {url}`,
  `SERVO_CONTROL`/`SERVO_ANGLE {angle}` (constrained 0-180), `LIGHT_CONTROL {state}`,
  `FAN_CONTROL {state}`, `RELAY_CONTROL {relay, state}` (1 light, 2 fan, 3, 4, 5 real model;
  another number is ignored), `REAL_MODEL_CONTROL {state}`, `SMART_MODE {enabled}`,
  `SET_LIGHT_SCHEDULE {on_hour, off_hour}`; anything else prints "Unknown action" and does
  nothing. A missing or mistyped field reads as ArduinoJson converts it: a missing `angle` is 0,
  a missing `state` or `enabled` is false, a string `state` is true. No acknowledgement exists:
  the status message and the next data message show the new state. `/commands` and `/last` are
  not deduplicated: a command on both runs twice.
* Smart mode (`handleSmartAutomation()`, after every data message, on by default, skipped while
  the clock is unknown): the light should be on when `on_hour <= off_hour ? (hour >= on_hour ||
  hour < off_hour) : (hour >= on_hour && hour < off_hour)`, which with the default schedule
  (18, 6) is never (the branches are swapped); the fan should be on when the (unrounded)
  temperature is above 28.0 C; then a gas reading above 100 turns the fan on. Each change goes
  through the light/fan handlers and so publishes its status message.
* Restart (`handleReboot()`, a successful update): `rebooting`, 2 s, `ESP.restart()`: the TCP
  connection drops without DISCONNECT (the broker publishes the will), the node boots with every
  setting back to its default, and reconnects on its persistent session.

Choices where the firmware leaves the simulator room: the gas reading wanders below the smart
mode's threshold (an MQ-2 in clean air; a reading above 100 would switch the fan on, and with the
temperature below 28 C off and on again every second, as the sketch does); free heap ~200 kB;
a firmware update finds no image (`update_failed`) unless the node is given another outcome;
the node boots in `FASTAPI_BOOT_S`; MQTT reconnects are paho's (the sketch retries every 5 s and
restarts after three failures).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

import orjson

from fieldhub.broker.legacy import FASTAPI_FIRMWARE_PASSWORD, FASTAPI_FIRMWARE_USERNAME
from fieldhub.mqtt.endpoint import MqttEndpoint
from fieldhub.mqtt.publisher import Will
from fieldhub.sim.link import LinkedDevice, Periodic
from fieldhub.sim.payloads import BoundedWalk, _check_mac
from fieldhub.sim.readings import monotonic_ms
from fieldhub.sim.stats import PublishCounter

# loop(): SENSOR_INTERVAL and HEARTBEAT_INTERVAL.
FASTAPI_DATA_PERIOD_S = 1.0
FASTAPI_HEARTBEAT_PERIOD_S = 3.0
# PubSubClient publishes QoS 0 only; connectMQTT() subscribes with QoS 1.
FASTAPI_PUBLISH_QOS = 0
FASTAPI_COMMAND_QOS = 1
FASTAPI_WILL_QOS = 1
FASTAPI_OFFLINE_PAYLOAD = b"offline"
FASTAPI_CLIENT_ID_PREFIX = "ESP32-"
# Compiled into the sketch (mqtt_user, mqtt_password); see the module docstring. The broker's
# legacy policy admits the stack by the same login (broker/legacy.py).
FASTAPI_MQTT_USERNAME = FASTAPI_FIRMWARE_USERNAME
FASTAPI_MQTT_PASSWORD = FASTAPI_FIRMWARE_PASSWORD
# configTime(gmtOffset_sec = 5.5 * 3600, daylightOffset_sec = 0): India.
FASTAPI_UTC_OFFSET_S = 19_800
# setup() waits 2 s after configTime() before it connects: the first status message has a date.
FASTAPI_NTP_SYNC_S = 2.0
# ESP.restart() to the next CONNACK: setup()'s 1 s serial delay, WiFi, the 2 s NTP wait.
FASTAPI_BOOT_S = 4.0
# handleReboot(): delay(2000) between the `rebooting` status and ESP.restart().
FASTAPI_REBOOT_DELAY_S = 2.0
UNKNOWN_TIME = "unknown"
# mqttCallback(): STALE_MESSAGE_THRESHOLD_SECONDS.
LAST_STALE_S = 300
LAST_SUFFIX = "/last"
# readAndPublishSensors(): payload.length() > 300 is not published.
DATA_MAX_BYTES = 300
# StaticJsonDocument sizes: data and status 250, heartbeat 100, command 256, test ping 50.
DATA_DOC_BYTES = 250
STATUS_DOC_BYTES = 250
HEARTBEAT_DOC_BYTES = 100
COMMAND_DOC_BYTES = 256
PING_DOC_BYTES = 50
# ArduinoJson 6 on the ESP32: one member or element is a 16-byte slot; a pool rounds up to 4.
ARDUINOJSON6_SLOT_BYTES = 16
ARDUINOJSON6_ALIGN = 4
SERVO_MIN_DEG = 0
SERVO_MAX_DEG = 180
SERVO_START_DEG = 90
# Smart automation settings (globals of the sketch).
LIGHT_ON_HOUR = 18
LIGHT_OFF_HOUR = 6
FAN_TEMP_THRESHOLD_C = 28.0
GAS_ALARM_RAW = 100
# The sketch's own temperature and humidity simulation.
START_TEMPERATURE_C = 20.0
START_HUMIDITY_PCT = 50.0
TEMPERATURE_RANGE_C = (15.0, 35.0)
HUMIDITY_RANGE_PCT = (30.0, 80.0)
TEMPERATURE_STEP_CENTI = 25
HUMIDITY_STEP_CENTI = 100
ADC_MAX = 4095
# map(WiFi.RSSI(), -100, -30, 0, 100).
SIGNAL_MAP_FROM = (-100, -30)
SIGNAL_MAP_TO = (0, 100)
MILLIS_WRAP = 2**32
# Simulated nodes take MACs from this index up (mac_for_index), so they never share a MAC, and so
# a device id, with the readings gateways (indices from 1, 10,000 devices at most).
FASTAPI_MAC_INDEX_BASE = 0x10_0000
# Choices (module docstring): gas below the alarm threshold, heap and RSSI wandering.
GAS_CENTER = 45.0
GAS_MIN = 20.0
GAS_MAX = 95.0
GAS_STEP = 2.0
FREE_HEAP_CENTER_B = 200_000.0
FREE_HEAP_MIN_B = 180_000.0
FREE_HEAP_MAX_B = 220_000.0
FREE_HEAP_STEP_B = 500.0
RSSI_CENTER_DBM = -60.0
RSSI_MIN_DBM = -75.0
RSSI_MAX_DBM = -45.0
RSSI_STEP_DBM = 1.0
# Salts so no two generators of a node share a stream.
GAS_SEED_SALT = 0x0FA5_7A91
HEAP_SEED_SALT = 0x4EA9_0001
RSSI_SEED_SALT = 0x5551_0002

ACTIONS = (
    "REBOOT",
    "STATUS_REQUEST",
    "FIRMWARE_UPDATE",
    "SERVO_CONTROL",
    "SERVO_ANGLE",
    "LIGHT_CONTROL",
    "FAN_CONTROL",
    "RELAY_CONTROL",
    "REAL_MODEL_CONTROL",
    "SMART_MODE",
    "SET_LIGHT_SCHEDULE",
)

ArduinoJsonMajor: TypeAlias = Literal[6, 7]
OtaResult: TypeAlias = Literal["failed", "no_updates", "ok"]


# --- ids and topics -----------------------------------------------------------------------------


def fastapi_node_id(mac: str) -> str:
    """The sketch's `node_id`: the MAC without colons, `3C:E9:0E:10:00:01` -> `3CE90E100001`."""
    _check_mac(mac)
    return mac.replace(":", "")


def fastapi_client_id(node_id: str) -> str:
    """connectMQTT(): `"ESP32-" + node_id`."""
    return FASTAPI_CLIENT_ID_PREFIX + node_id


def fastapi_data_topic(node_id: str) -> str:
    """`devices/{node_id}/data`: data, heartbeats and status messages."""
    return f"devices/{node_id}/data"


def fastapi_status_topic(node_id: str) -> str:
    """`devices/{node_id}/status`: only the retained `offline` will."""
    return f"devices/{node_id}/status"


def fastapi_commands_topic(node_id: str) -> str:
    """`devices/{node_id}/commands`: what the backend sends down."""
    return f"devices/{node_id}/commands"


def fastapi_last_topic(node_id: str) -> str:
    """`devices/{node_id}/commands/last`: the backend's retained fallback copy."""
    return fastapi_commands_topic(node_id) + LAST_SUFFIX


# --- ArduinoJson, as the sketch uses it ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Copied:
    """A string value ArduinoJson copies into the document (`char*`, `String`), not links."""

    text: str


JsonValue: TypeAlias = str | int | float | bool | Copied | None


def _pool_bytes(capacity: int) -> int:
    return -(-capacity // ARDUINOJSON6_ALIGN) * ARDUINOJSON6_ALIGN


def arduinojson_document(
    members: Iterable[tuple[str, JsonValue]], *, capacity: int | None
) -> list[tuple[str, JsonValue]]:
    """The members that end up in a document of `capacity` bytes (None: ArduinoJson 7, no limit).

    ArduinoJson 6 on the ESP32 takes a 16-byte slot per member from one end of the pool and each
    copied string's bytes + NUL from the other; a member that finds no slot is dropped, a string
    that finds no room leaves its member null. Keys and `const char*` values are only linked.
    """
    kept: list[tuple[str, JsonValue]] = []
    if capacity is None:
        return list(members)
    pool = _pool_bytes(capacity)
    used = 0
    for key, value in members:
        if used + ARDUINOJSON6_SLOT_BYTES > pool:
            continue
        used += ARDUINOJSON6_SLOT_BYTES
        if isinstance(value, Copied):
            size = len(value.text.encode()) + 1
            if used + size > pool:
                kept.append((key, None))
                continue
            used += size
        kept.append((key, value))
    return kept


def _json_float(value: float) -> str:
    if not math.isfinite(value):
        return "null"  # ArduinoJson writes NaN and infinities as null
    if value == int(value):
        return str(int(value))  # no decimals for a whole number: 12.0 -> 12
    return repr(value)


def serialize_json(members: Iterable[tuple[str, JsonValue]]) -> bytes:
    """serializeJson(): compact, in insertion order, floats without a trailing `.0`."""
    parts = []
    for key, value in members:
        if isinstance(value, Copied):
            value = value.text
        if value is None:
            text = "null"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            text = _json_float(value)
        else:
            text = orjson.dumps(value).decode()
        parts.append(f"{orjson.dumps(key).decode()}:{text}")
    return ("{" + ",".join(parts) + "}").encode()


def _json_cost(value: object) -> int:
    """Pool bytes deserializeJson() needs for a value read from a String (strings are copied)."""
    if isinstance(value, dict):
        return sum(
            ARDUINOJSON6_SLOT_BYTES + len(key.encode()) + 1 + _json_cost(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return sum(ARDUINOJSON6_SLOT_BYTES + _json_cost(item) for item in value)
    if isinstance(value, str):
        return len(value.encode()) + 1
    return 0


def _c_integer(value: object, bits: int) -> int:
    """An ArduinoJson integer conversion to a `bits`-wide signed type: null, objects and junk are
    0, out-of-range numbers are 0, floats truncate, numeric strings are read (as 32-bit)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return int(value) if -(2 ** (bits - 1)) <= value < 2 ** (bits - 1) else 0
    if isinstance(value, str):
        try:
            return _c_integer(float(value.strip()), 32)
        except ValueError:
            return 0
    return 0


def as_int(value: object) -> int:
    """`int x = doc["k"]` under ArduinoJson (32-bit)."""
    return _c_integer(value, 32)


def as_bool(value: object) -> bool:
    """`bool b = doc["k"]`: null is false, numbers are `!= 0`, strings and objects are true."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return True


def as_time(value: object) -> int:
    """`time_t t = doc["cmd_timestamp"]` (64-bit): like as_int, but without the 32-bit limit."""
    return _c_integer(value, 64)


def c_round(value: float) -> float:
    """C's round(): halves away from zero."""
    return math.copysign(math.floor(abs(value) + 0.5), value)


def arduino_map(x: int, in_range: tuple[int, int], out_range: tuple[int, int]) -> int:
    """Arduino map(): integer arithmetic, truncating toward zero, no clamping."""
    delta = (x - in_range[0]) * (out_range[1] - out_range[0])
    run = in_range[1] - in_range[0]
    quotient = abs(delta) // abs(run)
    return (quotient if (delta >= 0) == (run > 0) else -quotient) + out_range[0]


def signal_strength(rssi_dbm: int) -> int:
    """publishStatus(): `map(WiFi.RSSI(), -100, -30, 0, 100)`."""
    return arduino_map(rssi_dbm, SIGNAL_MAP_FROM, SIGNAL_MAP_TO)


# --- the payloads -------------------------------------------------------------------------------


def local_clock(epoch_s: float | None, fmt: str, utc_offset_s: int = FASTAPI_UTC_OFFSET_S) -> str:
    """getLocalTime() + strftime(), or `unknown` while the clock is not set."""
    if epoch_s is None:
        return UNKNOWN_TIME
    return time.strftime(fmt, time.gmtime(epoch_s + utc_offset_s))


def _clock_value(clock: str) -> JsonValue:
    # `"unknown"` is a literal (linked); a formatted time is a char buffer (copied).
    return clock if clock == UNKNOWN_TIME else Copied(clock)


@dataclass(frozen=True, slots=True)
class Actuators:
    """What the node drives: the servo and the five relay outputs (relay 1 light, 2 fan)."""

    servo_angle: int = SERVO_START_DEG
    light_state: bool = False
    fan_state: bool = False
    relay3_state: bool = False
    relay4_state: bool = False
    real_model_state: bool = False


@dataclass(frozen=True, slots=True)
class FastApiState:
    """The sketch's globals a command or smart mode changes; all reset by a restart."""

    actuators: Actuators = field(default_factory=Actuators)
    smart_mode: bool = True
    light_on_hour: int = LIGHT_ON_HOUR
    light_off_hour: int = LIGHT_OFF_HOUR


@dataclass(frozen=True, slots=True)
class Readings:
    """What one data message reports of the sensors (already at the sketch's resolution)."""

    temperature: float
    humidity: float
    gas_sensor: int
    wifi_rssi: int
    humidity_mq: float = 0.0
    humidity_mq_raw: int = 0


def fastapi_data_members(
    *, node_id: str, clock: str, readings: Readings, state: FastApiState, uptime_ms: int
) -> list[tuple[str, JsonValue]]:
    """readAndPublishSensors(): every member the sketch sets, in its order."""
    act = state.actuators
    return [
        ("timestamp", _clock_value(clock)),
        ("temperature", readings.temperature),
        ("humidity", readings.humidity),
        ("humidity_mq", readings.humidity_mq),
        ("humidity_mq_raw", readings.humidity_mq_raw),
        ("gas_sensor", readings.gas_sensor),
        ("status", "online"),
        ("node_id", Copied(node_id)),
        ("servo_angle", act.servo_angle),
        ("light_state", act.light_state),
        ("fan_state", act.fan_state),
        ("relay3_state", act.relay3_state),
        ("relay4_state", act.relay4_state),
        ("real_model_state", act.real_model_state),
        ("smart_mode", state.smart_mode),
        ("uptime", uptime_ms % MILLIS_WRAP),
        ("wifi_rssi", readings.wifi_rssi),
    ]


def fastapi_data_payload(
    *,
    node_id: str,
    clock: str,
    readings: Readings,
    state: FastApiState,
    uptime_ms: int,
    arduinojson: ArduinoJsonMajor = 6,
) -> bytes | None:
    """The data message as published, or None when the sketch refuses it (over 300 bytes).

    >>> fastapi_data_payload(node_id="3CE90E100001", clock="unknown", uptime_ms=5123,
    ...     readings=Readings(temperature=20.1, humidity=50.0, gas_sensor=45, wifi_rssi=-61),
    ...     state=FastApiState())
    b'{"timestamp":"unknown","temperature":20.1,"humidity":50,"humidity_mq":0,\
"humidity_mq_raw":0,"gas_sensor":45,"status":"online","node_id":"3CE90E100001",\
"servo_angle":90,"light_state":false,"fan_state":false,"relay3_state":false,\
"relay4_state":false,"real_model_state":false}'
    """
    members = fastapi_data_members(
        node_id=node_id, clock=clock, readings=readings, state=state, uptime_ms=uptime_ms
    )
    capacity = DATA_DOC_BYTES if arduinojson == 6 else None
    payload = serialize_json(arduinojson_document(members, capacity=capacity))
    return None if len(payload) > DATA_MAX_BYTES else payload


def fastapi_heartbeat_payload(*, node_id: str, uptime_ms: int) -> bytes:
    """publishHeartbeat().

    >>> fastapi_heartbeat_payload(node_id="3CE90E100001", uptime_ms=3012)
    b'{"type":"heartbeat","status":"online","node_id":"3CE90E100001","uptime":3012}'
    """
    members: list[tuple[str, JsonValue]] = [
        ("type", "heartbeat"),
        ("status", "online"),
        ("node_id", Copied(node_id)),
        ("uptime", uptime_ms % MILLIS_WRAP),
    ]
    return serialize_json(arduinojson_document(members, capacity=HEARTBEAT_DOC_BYTES))


def fastapi_status_payload(
    *,
    node_id: str,
    status: str,
    clock: str,
    uptime_ms: int,
    free_heap: int,
    wifi_rssi: int,
    servo_angle: int,
    gas_sensor: int,
) -> bytes:
    """publishStatus(status); `clock` is `%Y-%m-%d %H:%M:%S` local time or `unknown`.

    >>> fastapi_status_payload(node_id="3CE90E100001", status="online",
    ...     clock="2026-12-05 11:31:20", uptime_ms=6004, free_heap=201344, wifi_rssi=-61,
    ...     servo_angle=90, gas_sensor=45)
    b'{"timestamp":"2026-12-05 11:31:20","status":"online","uptime":6004,"free_heap":201344,\
"wifi_rssi":-61,"node_id":"3CE90E100001","servo_angle":90,"gas_sensor":45,"signal_strength":55}'
    """
    members: list[tuple[str, JsonValue]] = [
        ("timestamp", _clock_value(clock)),
        ("status", Copied(status)),
        ("uptime", uptime_ms % MILLIS_WRAP),
        ("free_heap", free_heap),
        ("wifi_rssi", wifi_rssi),
        ("node_id", Copied(node_id)),
        ("servo_angle", servo_angle),
        ("gas_sensor", gas_sensor),
        ("signal_strength", signal_strength(wifi_rssi)),
    ]
    return serialize_json(arduinojson_document(members, capacity=STATUS_DOC_BYTES))


def fastapi_ping_payload(node_id: str) -> bytes:
    """testMQTTPublish(), once after boot: `{"test":"ping","node_id":...}`."""
    members: list[tuple[str, JsonValue]] = [("test", "ping"), ("node_id", Copied(node_id))]
    return serialize_json(arduinojson_document(members, capacity=PING_DOC_BYTES))


# --- the command handler and smart mode, pure ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishStatus:
    """publishStatus(status) on the data topic."""

    status: str


@dataclass(frozen=True, slots=True)
class Restart:
    """ESP.restart() after handleReboot()'s 2 s delay (or at once, after an update)."""

    delay_s: float = FASTAPI_REBOOT_DELAY_S


@dataclass(frozen=True, slots=True)
class UpdateFirmware:
    """httpUpdate.update(client, url): its outcome decides what follows (`after_update`)."""

    url: str


Effect: TypeAlias = PublishStatus | Restart | UpdateFirmware


@dataclass(frozen=True, slots=True)
class Handled:
    """What one command (or one smart-mode pass) did: the new state, what the node must do, and
    why it was ignored when it was (`ignored` is None when the sketch acted on it)."""

    state: FastApiState
    effects: tuple[Effect, ...] = ()
    ignored: str | None = None
    action: str | None = None


def _light(state: FastApiState, on: bool) -> tuple[FastApiState, PublishStatus]:
    # handleLightControl()
    actuators = replace(state.actuators, light_state=on)
    return replace(state, actuators=actuators), PublishStatus("light_on" if on else "light_off")


def _fan(state: FastApiState, on: bool) -> tuple[FastApiState, PublishStatus]:
    # handleFanControl()
    actuators = replace(state.actuators, fan_state=on)
    return replace(state, actuators=actuators), PublishStatus("fan_on" if on else "fan_off")


_RELAY_FIELDS: Mapping[int, str] = {
    1: "light_state",
    2: "fan_state",
    3: "relay3_state",
    4: "relay4_state",
    5: "real_model_state",
}


def handle_command(
    state: FastApiState, topic: str, payload: bytes, *, device_time_s: int
) -> Handled:
    """mqttCallback() as a pure function of the node's state and the device's `time()`.

    `device_time_s` is what `time(&now)` gives: epoch seconds once NTP has set the clock,
    seconds since boot before that.
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return Handled(state, ignored="JSON parsing failed")
    if _json_cost(doc) > COMMAND_DOC_BYTES:
        return Handled(state, ignored="JSON parsing failed: NoMemory")
    if not isinstance(doc, dict):
        # `doc["action"]` of an array or scalar is null: "Unknown action: null".
        return Handled(state, ignored="Unknown action")
    if topic.endswith(LAST_SUFFIX) and "cmd_timestamp" in doc:
        sent_s = as_time(doc["cmd_timestamp"])
        if device_time_s > 0 and sent_s > 0 and device_time_s - sent_s > LAST_STALE_S:
            return Handled(state, ignored="stale retained command")
    action = doc.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        return Handled(state, ignored="Unknown action")
    act = state.actuators
    if action == "REBOOT":
        return Handled(state, (PublishStatus("rebooting"), Restart()), action=action)
    if action == "STATUS_REQUEST":
        return Handled(state, (PublishStatus("online"),), action=action)
    if action == "FIRMWARE_UPDATE":
        url = doc.get("url")
        text = url if isinstance(url, str) else "null"
        return Handled(state, (PublishStatus("updating"), UpdateFirmware(text)), action=action)
    if action in ("SERVO_CONTROL", "SERVO_ANGLE"):
        angle = min(SERVO_MAX_DEG, max(SERVO_MIN_DEG, as_int(doc.get("angle"))))
        moved = replace(state, actuators=replace(act, servo_angle=angle))
        return Handled(moved, (PublishStatus("servo_updated_wifi"),), action=action)
    if action == "LIGHT_CONTROL":
        new, effect = _light(state, as_bool(doc.get("state")))
        return Handled(new, (effect,), action=action)
    if action == "FAN_CONTROL":
        new, effect = _fan(state, as_bool(doc.get("state")))
        return Handled(new, (effect,), action=action)
    if action == "RELAY_CONTROL":
        relay = as_int(doc.get("relay"))
        on = as_bool(doc.get("state"))
        name = _RELAY_FIELDS.get(relay)
        if name is None:
            return Handled(state, ignored=f"Invalid relay number: {relay}", action=action)
        switched = replace(state, actuators=replace(act, **{name: on}))
        status = f"relay{relay}_{'on' if on else 'off'}"
        return Handled(switched, (PublishStatus(status),), action=action)
    if action == "REAL_MODEL_CONTROL":
        on = as_bool(doc.get("state"))
        switched = replace(state, actuators=replace(act, real_model_state=on))
        status = "real_model_on" if on else "real_model_off"
        return Handled(switched, (PublishStatus(status),), action=action)
    if action == "SMART_MODE":
        return Handled(replace(state, smart_mode=as_bool(doc.get("enabled"))), action=action)
    # SET_LIGHT_SCHEDULE: stored as given, no check.
    schedule = replace(
        state,
        light_on_hour=as_int(doc.get("on_hour")),
        light_off_hour=as_int(doc.get("off_hour")),
    )
    return Handled(schedule, action=action)


def after_update(result: OtaResult) -> tuple[Effect, ...]:
    """handleFirmwareUpdate() after httpUpdate.update(): what its outcome makes the node do."""
    if result == "failed":
        return (PublishStatus("update_failed"),)
    if result == "no_updates":
        return (PublishStatus("no_update_needed"),)
    # HTTPUpdate reboots on success (rebootOnUpdate) before `update_success` could be sent.
    return (Restart(delay_s=0.0),)


def light_should_be_on(hour: int, on_hour: int, off_hour: int) -> bool:
    """handleSmartAutomation()'s schedule, exactly as written (see the module docstring)."""
    if on_hour <= off_hour:
        return hour >= on_hour or hour < off_hour
    return hour >= on_hour and hour < off_hour


def smart_automation(
    state: FastApiState, *, local_hour: int | None, temperature: float, gas_sensor: int
) -> Handled:
    """handleSmartAutomation(): run after each data message; `local_hour` None = no clock."""
    if not state.smart_mode or local_hour is None:
        return Handled(state)
    effects: list[Effect] = []
    light = light_should_be_on(local_hour, state.light_on_hour, state.light_off_hour)
    if light != state.actuators.light_state:
        state, effect = _light(state, light)
        effects.append(effect)
    fan = temperature > FAN_TEMP_THRESHOLD_C
    if fan != state.actuators.fan_state:
        state, effect = _fan(state, fan)
        effects.append(effect)
    if gas_sensor > GAS_ALARM_RAW and not state.actuators.fan_state:
        state, effect = _fan(state, True)
        effects.append(effect)
    return Handled(state, tuple(effects))


def apply_fastapi_command(
    actuators: Actuators, payload: bytes, *, topic: str = "devices/x/commands"
) -> Actuators | None:
    """The actuators after one command, or None if the sketch ignored it (a shortcut over
    `handle_command` for callers that only look at the outputs; the clock is unknown)."""
    handled = handle_command(FastApiState(actuators=actuators), topic, payload, device_time_s=0)
    return None if handled.ignored is not None else handled.state.actuators


# --- the sketch's sensor simulation -------------------------------------------------------------


class FastApiSensors:
    """readAndPublishSensors()'s own random walks, the gas ADC and the WiFi RSSI."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self.temperature = START_TEMPERATURE_C
        self.humidity = START_HUMIDITY_PCT
        self._gas = BoundedWalk(
            rng=random.Random(seed ^ GAS_SEED_SALT),
            center=GAS_CENTER,
            low=GAS_MIN,
            high=GAS_MAX,
            step=GAS_STEP,
        )
        self._rssi = BoundedWalk(
            rng=random.Random(seed ^ RSSI_SEED_SALT),
            center=RSSI_CENTER_DBM,
            low=RSSI_MIN_DBM,
            high=RSSI_MAX_DBM,
            step=RSSI_STEP_DBM,
        )
        self.gas_sensor = round(self._gas.value)
        self.wifi_rssi = round(self._rssi.value)

    def sample(self) -> Readings:
        """One reading, as the sketch takes it before each data message."""
        step_t = self._rng.randint(-TEMPERATURE_STEP_CENTI, TEMPERATURE_STEP_CENTI) / 100.0
        step_h = self._rng.randint(-HUMIDITY_STEP_CENTI, HUMIDITY_STEP_CENTI) / 100.0
        low_t, high_t = TEMPERATURE_RANGE_C
        low_h, high_h = HUMIDITY_RANGE_PCT
        self.temperature = min(max(self.temperature + step_t, low_t), high_t)
        self.humidity = min(max(self.humidity + step_h, low_h), high_h)
        self.gas_sensor = min(ADC_MAX, max(0, round(self._gas.next())))
        self.wifi_rssi = round(self._rssi.next())
        return Readings(
            temperature=c_round(self.temperature * 10) / 10.0,
            humidity=c_round(self.humidity * 10) / 10.0,
            gas_sensor=self.gas_sensor,
            wifi_rssi=self.wifi_rssi,
        )


# --- the node -----------------------------------------------------------------------------------


class FastApiNode(LinkedDevice):
    """One simulated node of the FastAPI/RabbitMQ stack (see the module docstring).

    The logic is the pure functions above; this class keeps the state, the clocks and the MQTT
    link, and turns `Handled.effects` into publishes and restarts.
    """

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
        boot_s: float = FASTAPI_BOOT_S,
        uptime_offset_ms: int = 0,
        utc_offset_s: int = FASTAPI_UTC_OFFSET_S,
        arduinojson: ArduinoJsonMajor = 6,
        ota: Callable[[str], OtaResult] = lambda url: "failed",
        clock_ms: Callable[[], int] = monotonic_ms,
        wall_clock_s: Callable[[], float] = time.time,
    ) -> None:
        node_id = fastapi_node_id(mac)
        self.mac = mac
        self.data_topic = fastapi_data_topic(node_id)
        self.status_topic = fastapi_status_topic(node_id)
        self.commands_topic = fastapi_commands_topic(node_id)
        self.last_topic = fastapi_last_topic(node_id)
        super().__init__(
            endpoint=endpoint,
            device_id=node_id,
            client_id=fastapi_client_id(node_id),
            will=Will(
                topic=self.status_topic,
                payload=FASTAPI_OFFLINE_PAYLOAD,
                qos=FASTAPI_WILL_QOS,
                retain=True,
            ),
            subscriptions=[
                (self.commands_topic, FASTAPI_COMMAND_QOS),
                (self.last_topic, FASTAPI_COMMAND_QOS),
            ],
            clean_session=False,
            counter=counter,
        )
        self.data_period_s = data_period_s
        self.heartbeat_period_s = heartbeat_period_s
        self.ntp_sync_s = ntp_sync_s
        self.boot_s = boot_s
        self.utc_offset_s = utc_offset_s
        self.arduinojson: ArduinoJsonMajor = arduinojson
        self._ota = ota
        self._seed = seed
        self._clock_ms = clock_ms
        self._wall_clock_s = wall_clock_s
        self._heap = BoundedWalk(
            rng=random.Random(seed ^ HEAP_SEED_SALT),
            center=FREE_HEAP_CENTER_B,
            low=FREE_HEAP_MIN_B,
            high=FREE_HEAP_MAX_B,
            step=FREE_HEAP_STEP_B,
        )
        # Commands arrive in the network thread, data is built in the scheduler's.
        self._state_lock = threading.RLock()
        self.commands_applied = 0
        self.commands_ignored = 0
        self.oversize_data = 0
        self.boots = 0
        self._boot(clock_ms() - uptime_offset_ms)

    def _boot(self, boot_ms: int) -> None:
        # Power-on: every global back to its initial value, the sketch's walks from 20 C / 50 %.
        with self._state_lock:
            self._boot_ms = boot_ms
            self._state = FastApiState()
            self.sensors = FastApiSensors(self._seed * 1_000 + self.boots)
            self._pinged = False
            self.boots += 1

    # --- state and clocks --------------------------------------------------------------------

    @property
    def state(self) -> FastApiState:
        """Actuators, smart mode and schedule as the sketch's globals hold them now."""
        with self._state_lock:
            return self._state

    @property
    def actuators(self) -> Actuators:
        """The servo and relays as the next data message reports them."""
        return self.state.actuators

    def uptime_ms(self) -> int:
        """`millis()` of the simulated node (before the 32-bit wrap)."""
        return self._clock_ms() - self._boot_ms

    def _synced(self) -> bool:
        return self.uptime_ms() >= self.ntp_sync_s * 1000

    def device_time_s(self) -> int:
        """`time(&now)`: epoch seconds once NTP synced, seconds since boot before."""
        if self._synced():
            return int(self._wall_clock_s())
        return self.uptime_ms() // 1000

    def clock(self, fmt: str = "%H:%M:%S") -> str:
        """getLocalTime() formatted, or `unknown` before NTP."""
        return local_clock(self._wall_clock_s() if self._synced() else None, fmt, self.utc_offset_s)

    def local_hour(self) -> int | None:
        """The local hour smart mode reads, or None before NTP."""
        if not self._synced():
            return None
        return time.gmtime(self._wall_clock_s() + self.utc_offset_s).tm_hour

    # --- payloads ----------------------------------------------------------------------------

    def periodic(self) -> tuple[Periodic, ...]:
        """loop(): data (then smart mode) every second, a heartbeat every three."""
        return (
            Periodic("data", self.data_period_s, self.publish_data),
            Periodic("heartbeat", self.heartbeat_period_s, self.publish_heartbeat),
        )

    def next_data_payload(self) -> bytes | None:
        """Sample the sensors and build the next data message (None: over 300 bytes)."""
        with self._state_lock:
            readings = self.sensors.sample()
            state = self._state
        return fastapi_data_payload(
            node_id=self.device_id,
            clock=self.clock(),
            readings=readings,
            state=state,
            uptime_ms=self.uptime_ms(),
            arduinojson=self.arduinojson,
        )

    def heartbeat_payload(self) -> bytes:
        return fastapi_heartbeat_payload(node_id=self.device_id, uptime_ms=self.uptime_ms())

    def status_payload(self, status: str) -> bytes:
        with self._state_lock:
            heap = round(self._heap.next())
            servo = self._state.actuators.servo_angle
            gas, rssi = self.sensors.gas_sensor, self.sensors.wifi_rssi
        return fastapi_status_payload(
            node_id=self.device_id,
            status=status,
            clock=self.clock("%Y-%m-%d %H:%M:%S"),
            uptime_ms=self.uptime_ms(),
            free_heap=heap,
            wifi_rssi=rssi,
            servo_angle=servo,
            gas_sensor=gas,
        )

    # --- publishing --------------------------------------------------------------------------

    def _send(self, payload: bytes) -> Future[None] | None:
        return self.publish(self.data_topic, payload, qos=FASTAPI_PUBLISH_QOS)

    def publish_data(self, *, automation: bool = True) -> Future[None] | None:
        """One pass of loop()'s sensor branch: the data message, then smart mode.

        Returns the data message's publish, None when skipped (offline, or over 300 bytes).
        """
        if self._closed or not self.connected:
            self.counter.skip()
            return None
        payload = self.next_data_payload()
        future = None
        if payload is None:
            self.oversize_data += 1
        else:
            future = self._send(payload)
        if automation:
            self.run_automation()
        return future

    def run_automation(self) -> None:
        """handleSmartAutomation() on the last reading."""
        with self._state_lock:
            handled = smart_automation(
                self._state,
                local_hour=self.local_hour(),
                temperature=self.sensors.temperature,
                gas_sensor=self.sensors.gas_sensor,
            )
            self._state = handled.state
        self._apply(handled.effects)

    def publish_heartbeat(self) -> Future[None] | None:
        """publishHeartbeat()."""
        return self._send(self.heartbeat_payload())

    def publish_status(self, status: str) -> Future[None] | None:
        """publishStatus(status)."""
        return self._send(self.status_payload(status))

    def on_connected(self) -> None:
        # connectMQTT() after subscribing: status `online`, one data message (no smart mode);
        # setup() then sends its test ping once per boot.
        self.publish_status("online")
        self.publish_data(automation=False)
        with self._state_lock:
            first, self._pinged = not self._pinged, True
        if first:
            self._send(fastapi_ping_payload(self.device_id))

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic not in (self.commands_topic, self.last_topic):
            return
        with self._state_lock:
            handled = handle_command(
                self._state, topic, payload, device_time_s=self.device_time_s()
            )
            self._state = handled.state
            if handled.ignored is None:
                self.commands_applied += 1
            else:
                self.commands_ignored += 1
        self._apply(handled.effects)

    def _apply(self, effects: tuple[Effect, ...]) -> None:
        for effect in effects:
            if isinstance(effect, PublishStatus):
                self.publish_status(effect.status)
            elif isinstance(effect, UpdateFirmware):
                self._apply(after_update(self._ota(effect.url)))
            else:
                self._restart_later(effect.delay_s)

    def _restart_later(self, delay_s: float) -> None:
        # Off the network thread: the `rebooting` status must leave before the socket drops.
        timer = threading.Timer(delay_s, self.restart)
        timer.daemon = True
        timer.start()

    def restart(self) -> None:
        """ESP.restart(): drop without DISCONNECT (the will fires), boot, reconnect."""
        if not self.drop_link():
            return
        self._boot(self._clock_ms())  # millis() counts from the restart
        time.sleep(self.boot_s)
        self.relink()

    def announce_offline(self) -> Future[None] | None:
        """On a graceful stop, say what the will would have said: retained `offline`."""
        return self.publish_last_word(
            self.status_topic, FASTAPI_OFFLINE_PAYLOAD, qos=FASTAPI_WILL_QOS
        )
