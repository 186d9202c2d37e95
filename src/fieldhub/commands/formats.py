"""How each stack takes commands: topic, payload, known commands, and how success is known.

One `CommandFormat` per stack (docs/commands.md has the table). A format validates a command's
params against the command's schema, encodes it for the wire, and says what will prove it worked:
the device's ack (`native`), or, for firmware that sends none, an `Expectation` met by the
device's next messages as ingest stores them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fieldhub.clock import US_PER_S
from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import Decoded
from fieldhub.protocol.timestamps import format_us
from fieldhub_node.commands import MAX_COMMAND_BYTES as NATIVE_MAX_COMMAND_BYTES
from fieldhub_node.config import MAX_INTERVAL_S, MIN_INTERVAL_S

# Arduino's PubSubClient (the FastAPI and iot-node sketches) drops packets over its default
# 256-byte buffer, topic and header included: their commands are far smaller than this.
PUBSUBCLIENT_MAX_PAYLOAD_BYTES = 200
# The window-control sketch raises PubSubClient's buffer for its audio clips.
SENSOR_MAX_PAYLOAD_BYTES = 4096
# The window-control stack's nodes report every 10 s: a timeout must cover one period and more.
SENSOR_DEFAULT_TIMEOUT_S = 30.0
DEFAULT_TIMEOUT_S = 10.0

Percent = Annotated[float, Field(ge=0, le=100, strict=True)]


class CommandError(ValueError):
    """A command the device's format cannot take; `code` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NoParams(BaseModel):
    """A command without parameters."""

    model_config = ConfigDict(extra="forbid")


class WindowParams(BaseModel):
    """Move the window to `position` percent open."""

    model_config = ConfigDict(extra="forbid")
    position: Percent


class SensorWindowParams(BaseModel):
    """The window-control stack's control message: `position` percent open, with the decision's
    `confidence` and the feature values it used (fieldhub's ML loop fills both; a person's
    command is certain and used none)."""

    model_config = ConfigDict(extra="forbid")
    position: Percent
    confidence: Annotated[float, Field(ge=0, le=1, strict=True)] = 1.0
    features_used: dict[Annotated[str, Field(max_length=32)], float] = Field(
        default_factory=dict, max_length=8
    )


class IntervalParams(BaseModel):
    """Report every `seconds`."""

    model_config = ConfigDict(extra="forbid")
    seconds: Annotated[float, Field(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S, strict=True)]


class ServoParams(BaseModel):
    """Turn the servo to `angle` degrees."""

    model_config = ConfigDict(extra="forbid")
    angle: Annotated[int, Field(ge=0, le=180, strict=True)]


class LedParams(BaseModel):
    """Switch the LED and/or set its brightness; what is left out keeps its value."""

    model_config = ConfigDict(extra="forbid")
    state: Literal["on", "off"] | None = None
    brightness: Annotated[int, Field(ge=0, le=255, strict=True)] | None = None

    @model_validator(mode="after")
    def _something(self) -> LedParams:
        if self.state is None and self.brightness is None:
            raise ValueError("give state, brightness or both")
        return self


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command a format knows, with the schema of its params."""

    name: str
    description: str
    params: type[BaseModel] = NoParams
    # This command's default timeout when it needs longer than its format's.
    timeout_s: float | None = None

    def schema(self) -> dict[str, Any]:
        """JSON schema of the params (what the dashboard builds its form from)."""
        return self.params.model_json_schema()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a device's message decided about a command."""

    state: CommandState
    decided_by: str
    detail: str
    result: object = None
    error: str | None = None


class Expectation:
    """What proves a command worked when the device sends no ack; `check` sees each of the
    device's stored messages received after the command went out, `observe` the ones before
    (what the device reported up to then: the state the command starts from)."""

    def check(self, decoded: Decoded) -> Verdict | None:
        raise NotImplementedError

    def observe(self, decoded: Decoded) -> None:
        """A message of the device from before the command went out."""


@dataclass(frozen=True, slots=True)
class Echo(Expectation):
    """The device reports `metric` = `value` (the servo angle, a relay's 0/1)."""

    metric: str
    value: float

    def check(self, decoded: Decoded) -> Verdict | None:
        for reading in decoded.readings:
            if reading.metric == self.metric and reading.value == self.value:
                shown = f"{self.metric}={self.value:g}"
                return Verdict(
                    CommandState.SUCCEEDED,
                    f"echo:{shown}",
                    f"the device's next report shows {shown}",
                    {self.metric: reading.value},
                )
        return None


@dataclass(frozen=True, slots=True)
class StatusReply(Expectation):
    """The iot-node stack's status message after a command: `last_command`, `result`."""

    command: str

    def check(self, decoded: Decoded) -> Verdict | None:
        attributes = decoded.attributes
        if attributes.get("last_command") != self.command:
            return None
        outcome = attributes.get("result")
        if outcome == "ok":
            return Verdict(
                CommandState.SUCCEEDED, "status_reply", "the node's status reply says ok"
            )
        if outcome == "error":
            error = str(attributes.get("error") or "the node reported an error")
            return Verdict(
                CommandState.FAILED,
                "status_reply",
                f"the node's status reply says error: {error}",
                error=error,
            )
        return None


@dataclass(frozen=True, slots=True)
class NextMessage(Expectation):
    """Any message the device itself published (not a copy of our own command on a topic ingest
    also reads): it was alive and subscribed when the broker delivered the command."""

    def check(self, decoded: Decoded) -> Verdict | None:
        if not decoded.from_device:
            return None
        return Verdict(
            CommandState.SUCCEEDED,
            "next_message",
            "the device kept reporting after the broker delivered the command (this stack "
            "reports no state to compare)",
        )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A command about to be encoded."""

    command_id: str
    name: str
    params: Mapping[str, Any]
    topic_id: str
    # When it is encoded (epoch us, from the caller's clock): the stacks that stamp commands.
    at_us: int = 0


@dataclass(frozen=True, slots=True)
class CommandFormat:
    """One stack's command contract (see the module docstring)."""

    name: str
    topic_pattern: str
    commands: Mapping[str, CommandSpec]
    encode_payload: Callable[[Outgoing], dict[str, Any]]
    # (name, params, the device's latest values of `state_metrics` when it was accepted).
    expectation: Callable[[str, Mapping[str, Any], Mapping[str, float]], Expectation | None]
    max_payload_bytes: int
    default_timeout_s: float = DEFAULT_TIMEOUT_S
    # Names outside `commands` pass through unchecked (the device answers for itself).
    open_catalogue: bool = False
    # The readings whose value before the command its expectation compares with.
    state_metrics: Callable[[str, Mapping[str, Any]], tuple[str, ...]] = lambda name, params: ()
    # A retained topic the device also reads commands from after a reconnect (the FastAPI
    # stack's `.../commands/last`), and the commands that may be left there for it.
    fallback_topic_pattern: str | None = None
    fallback_commands: frozenset[str] = frozenset()

    def topic(self, topic_id: str) -> str:
        """The device's command topic."""
        return self.topic_pattern.format(id=topic_id)

    def fallback_topic(self, topic_id: str, name: str) -> str | None:
        """The retained topic to leave command `name` on for an offline device, if any."""
        if self.fallback_topic_pattern is None or name not in self.fallback_commands:
            return None
        return self.fallback_topic_pattern.format(id=topic_id)

    def timeout_for(self, name: str) -> float:
        """A command's default timeout."""
        spec = self.commands.get(name)
        if spec is not None and spec.timeout_s is not None:
            return spec.timeout_s
        return self.default_timeout_s

    def topic_id_of(self, topic: str) -> str:
        """The id level of one of this format's command topics."""
        return topic.split("/")[self.topic_pattern.split("/").index("{id}")]

    def validate(self, name: str, params: Mapping[str, Any]) -> None:
        """Raise CommandError when the command is unknown or its params do not fit."""
        spec = self.commands.get(name)
        if spec is None:
            if self.open_catalogue:
                return
            known = ", ".join(self.commands)
            raise CommandError(
                "unknown_command",
                f"{self.name} devices take no command {name!r}; known: {known}",
            )
        try:
            spec.params.model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "params"
            raise CommandError(
                "invalid_params", f"{name}: params.{where}: {first['msg']}"
            ) from None

    def encode(self, outgoing: Outgoing) -> bytes:
        """The payload; CommandError when JSON cannot carry it or it is over the size limit."""
        try:
            payload = orjson.dumps(self.encode_payload(outgoing))
        except TypeError as exc:
            # orjson refuses integers beyond 64 bits and lone UTF-16 surrogates in strings: a
            # device could not parse them either.
            raise CommandError("invalid_params", f"params cannot be sent as JSON: {exc}") from None
        if len(payload) > self.max_payload_bytes:
            raise CommandError(
                "payload_too_large",
                f"the encoded command is {len(payload)} bytes; {self.name} devices take at most "
                f"{self.max_payload_bytes}",
            )
        return payload


def _native(outgoing: Outgoing) -> dict[str, Any]:
    return {"id": outgoing.command_id, "name": outgoing.name, "params": dict(outgoing.params)}


# -- The FastAPI/RabbitMQ stack -------------------------------------------------------------------
# Every fact below is read from that stack's firmware, firmware/IoT_Platform_Node/
# IoT_Platform_Node.ino (nrn-dilanka/rnr-iot): `mqttCallback` (the actions and their fields),
# the `handle*` functions (what each does and publishes), `readAndPublishSensors` and
# `publishStatus` (what the device reports afterwards). docs/commands.md has the table.

# mqttCallback parses a command into `StaticJsonDocument<256>`; a command that does not fit fails
# to parse and is dropped without a word. ArduinoJson 6 (the version that sizes that document; the
# repository pins none) spends 16 bytes a member on a 32-bit ESP32 and copies every key and string
# value (with its NUL) out of the `String` it parses.
FASTAPI_JSON_DOC_BYTES = 256
ARDUINOJSON_SLOT_BYTES = 16
# readAndPublishSensors fills a `StaticJsonDocument<250>`: with ArduinoJson 6, 14 members of 16
# bytes and the copied `timestamp` and `node_id` strings fill it before `smart_mode`, so
# `smart_mode`, `uptime` and `wifi_rssi` are silently left out of every data message (with
# ArduinoJson 7 nothing is left out, but the 330-odd bytes then exceed the sketch's own 300-byte
# check and the data message is never sent). `uptime` still comes in the heartbeat and the status
# message.
FASTAPI_DATA_DOC_BYTES = 250
# The node drops a command on the retained `.../commands/last` topic whose `cmd_timestamp` is more
# than this old (mqttCallback, STALE_MESSAGE_THRESHOLD_SECONDS).
FASTAPI_FALLBACK_MAX_AGE_S = 300
# `millis()` is an unsigned 32-bit count: it wraps after 49.7 days. A drop from the last minute
# before the wrap to the first minute after is the wrap, not a restart.
MILLIS_WRAP = 2**32
MILLIS_WRAP_MARGIN_MS = 60_000
# An OTA download and flash takes far longer than a relay; a reboot needs the restart, WiFi, NTP's
# 2 s and the MQTT connection before the node is heard again.
FASTAPI_FIRMWARE_TIMEOUT_S = 180.0
FASTAPI_REBOOT_TIMEOUT_S = 30.0

StrictBool = Annotated[bool, Field(strict=True)]
Hour = Annotated[int, Field(ge=0, le=23, strict=True)]


class SwitchParams(BaseModel):
    """Switch the output on (`true`) or off (`false`)."""

    model_config = ConfigDict(extra="forbid")
    state: StrictBool


class RelayParams(BaseModel):
    """Switch relay `relay` (1 light, 2 fan, 3, 4, 5 the real model) on or off."""

    model_config = ConfigDict(extra="forbid")
    relay: Annotated[int, Field(ge=1, le=5, strict=True)]
    state: StrictBool


class SmartModeParams(BaseModel):
    """Let the node switch the light by its schedule and the fan by temperature and gas."""

    model_config = ConfigDict(extra="forbid")
    enabled: StrictBool


class LightScheduleParams(BaseModel):
    """The hours (0-23, the node's local time) smart mode turns the light on and off."""

    model_config = ConfigDict(extra="forbid")
    on_hour: Hour
    off_hour: Hour


class FirmwareParams(BaseModel):
    """The image to flash: `httpUpdate.update` over a plain `WiFiClient`, so http:// only."""

    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(strict=True, pattern=r"^http://[^\s/]+(/\S*)?$", max_length=200)]


# The 0/1 reading of the data message that shows each relay (handleRelayControl's switch).
FASTAPI_RELAY_METRICS: Mapping[int, str] = MappingProxyType(
    {1: "light_state", 2: "fan_state", 3: "relay3_state", 4: "relay4_state", 5: "real_model_state"}
)
# Actions whose effect is a state: executing one twice does no harm, so they may also wait on the
# retained fallback topic for a node that is offline (see `fallback_topic`).
FASTAPI_IDEMPOTENT = frozenset(
    {
        "SERVO_CONTROL",
        "SERVO_ANGLE",
        "LIGHT_CONTROL",
        "FAN_CONTROL",
        "RELAY_CONTROL",
        "REAL_MODEL_CONTROL",
        "SMART_MODE",
        "SET_LIGHT_SCHEDULE",
    }
)


def fastapi_target(name: str, params: Mapping[str, Any]) -> tuple[str, float] | None:
    """The reading (metric, value) a state command sets, as the data message reports it."""
    if name in ("SERVO_CONTROL", "SERVO_ANGLE"):
        return ("servo_angle", float(params["angle"]))
    simple = {
        "LIGHT_CONTROL": "light_state",
        "FAN_CONTROL": "fan_state",
        "REAL_MODEL_CONTROL": "real_model_state",
    }
    if name in simple:
        return (simple[name], float(bool(params["state"])))
    if name == "RELAY_CONTROL":
        return (FASTAPI_RELAY_METRICS[int(params["relay"])], float(bool(params["state"])))
    if name == "SMART_MODE":
        return ("smart_mode", float(bool(params["enabled"])))
    return None


def is_data_message(decoded: Decoded) -> bool:
    """`readAndPublishSensors`'s message (the one with the relays' 0/1 states)."""
    return any(reading.metric == "light_state" for reading in decoded.readings)


def is_status_message(decoded: Decoded) -> bool:
    """A `publishStatus` message: `status` set, and neither the data message nor the heartbeat
    (`type: heartbeat`), which both carry `status: online` as well."""
    attributes = decoded.attributes
    if not isinstance(attributes.get("status"), str) or attributes.get("type") == "heartbeat":
        return False
    return not is_data_message(decoded)


def _uptime_of(decoded: Decoded) -> float | None:
    for reading in decoded.readings:
        if reading.metric == "uptime_ms":
            return reading.value
    return None


def _restarted(before: float | None, now: float) -> bool:
    if before is None or now >= before:
        return False
    wrapped = before > MILLIS_WRAP - MILLIS_WRAP_MARGIN_MS and now < MILLIS_WRAP_MARGIN_MS
    return not wrapped


@dataclass(slots=True)
class StateEcho(Expectation):
    """The next report shows `metric` = `value`. `before` is the device's latest value of it
    before the command went out (from the store when it was accepted, then each report until it
    was sent; None: never reported): when it already was `value`, the echo is no proof that the
    command ran, and the rule that decides says so (`echo_unchanged`)."""

    metric: str
    value: float
    before: float | None = None
    # The node's data message may leave `metric` out (SMART_MODE's `smart_mode`: see
    # FASTAPI_DATA_DOC_BYTES): then a data message without it ends the command by `next_message`.
    may_be_unreported: bool = False

    def observe(self, decoded: Decoded) -> None:
        for reading in decoded.readings:
            if reading.metric == self.metric:
                self.before = reading.value

    @property
    def unchanged(self) -> bool:
        """True when the device already was in the target state at admission."""
        return self.before == self.value

    def check(self, decoded: Decoded) -> Verdict | None:
        for reading in decoded.readings:
            if reading.metric == self.metric and reading.value == self.value:
                shown = f"{self.metric}={self.value:g}"
                if self.unchanged:
                    return Verdict(
                        CommandState.SUCCEEDED,
                        f"echo_unchanged:{shown}",
                        f"the device's next report shows {shown}, as it already did when the "
                        "command was accepted: the state is right, but this is no proof the "
                        "command ran",
                        {self.metric: reading.value},
                    )
                return Verdict(
                    CommandState.SUCCEEDED,
                    f"echo:{shown}",
                    f"the device's next report shows {shown} (it was "
                    f"{'not reported' if self.before is None else f'{self.before:g}'} before)",
                    {self.metric: reading.value},
                )
        if (
            self.may_be_unreported
            and is_data_message(decoded)
            and not any(reading.metric == self.metric for reading in decoded.readings)
        ):
            return Verdict(
                CommandState.SUCCEEDED,
                "next_message",
                f"the node kept reporting after the command; its data message does not carry "
                f"{self.metric}, so the new state cannot be seen",
            )
        return None


@dataclass(slots=True)
class Restart(Expectation):
    """REBOOT: handleReboot publishes `rebooting` before `ESP.restart()`; if that is lost, the
    uptime (`millis()`) the node reports afterwards is lower than the one before."""

    last_uptime_ms: float | None = None

    def observe(self, decoded: Decoded) -> None:
        uptime = _uptime_of(decoded)
        if uptime is not None:
            self.last_uptime_ms = uptime

    def check(self, decoded: Decoded) -> Verdict | None:
        if is_status_message(decoded) and decoded.attributes.get("status") == "rebooting":
            return Verdict(
                CommandState.SUCCEEDED, "status:rebooting", "the node said it is rebooting"
            )
        uptime = _uptime_of(decoded)
        if uptime is None:
            return None
        before, self.last_uptime_ms = self.last_uptime_ms, uptime
        if _restarted(before, uptime):
            return Verdict(
                CommandState.SUCCEEDED,
                "uptime_reset",
                f"the node's uptime went from {before:g} ms to {uptime:g} ms: it restarted",
                {"uptime_ms": uptime},
            )
        return None


@dataclass(frozen=True, slots=True)
class StatusAnswer(Expectation):
    """STATUS_REQUEST: handleStatusRequest publishes `publishStatus("online")`."""

    def check(self, decoded: Decoded) -> Verdict | None:
        if is_status_message(decoded) and decoded.attributes.get("status") == "online":
            return Verdict(
                CommandState.SUCCEEDED, "status_message", "the node published its status"
            )
        return None


# handleFirmwareUpdate's outcome words after `updating`. HTTP_UPDATE_OK is only published when
# httpUpdate does not restart the node itself (its default does: then the restart is the success).
FIRMWARE_OUTCOMES: Mapping[str, CommandState] = MappingProxyType(
    {
        "update_success": CommandState.SUCCEEDED,
        "no_update_needed": CommandState.SUCCEEDED,
        "update_failed": CommandState.FAILED,
    }
)


@dataclass(slots=True)
class FirmwareOutcome(Expectation):
    """FIRMWARE_UPDATE: `updating`, then `update_failed` / `no_update_needed` /
    `update_success`, or (after `updating`) the restart into the new image."""

    last_uptime_ms: float | None = None
    updating: bool = False

    def observe(self, decoded: Decoded) -> None:
        uptime = _uptime_of(decoded)
        if uptime is not None:
            self.last_uptime_ms = uptime

    def check(self, decoded: Decoded) -> Verdict | None:
        status = decoded.attributes.get("status") if is_status_message(decoded) else None
        uptime = _uptime_of(decoded)
        before = self.last_uptime_ms
        if uptime is not None:
            self.last_uptime_ms = uptime
        if status == "updating":
            self.updating = True
            return None
        if isinstance(status, str) and status in FIRMWARE_OUTCOMES:
            state = FIRMWARE_OUTCOMES[status]
            failed = state is CommandState.FAILED
            return Verdict(
                state,
                f"status:{status}",
                f"the node reported {status}" + (" (download or flash failed)" if failed else ""),
                error=status if failed else None,
            )
        if self.updating and uptime is not None and _restarted(before, uptime):
            return Verdict(
                CommandState.SUCCEEDED,
                "update_rebooted",
                "the node restarted after `updating` (httpUpdate restarts it into the new image "
                "once flashed)",
                {"uptime_ms": uptime},
            )
        return None


def _fastapi(outgoing: Outgoing) -> dict[str, Any]:
    spec = FASTAPI_COMMANDS[outgoing.name]
    # The schema's field order and types (True stays a JSON true, which `bool state =
    # doc["state"]` reads; a missing field would read as 0/false).
    body: dict[str, Any] = {"action": outgoing.name}
    body.update(spec.params.model_validate(dict(outgoing.params)).model_dump())
    # As the stack's backend sends them (mqtt_publisher.py): the sketch ignores `message_id`, and
    # reads `cmd_timestamp` (epoch s) only on the retained fallback topic.
    body["message_id"] = outgoing.command_id
    body["cmd_timestamp"] = outgoing.at_us // US_PER_S
    used = arduinojson_bytes(body)
    if used > FASTAPI_JSON_DOC_BYTES:
        raise CommandError(
            "payload_too_large",
            f"the command needs {used} bytes of the node's {FASTAPI_JSON_DOC_BYTES}-byte JSON "
            "document (it would drop it unparsed); use a shorter id or url",
        )
    return body


def arduinojson_bytes(body: Mapping[str, Any]) -> int:
    """What ArduinoJson 6 spends on a flat object parsed from a String (see above)."""
    used = ARDUINOJSON_SLOT_BYTES * len(body)
    for key, value in body.items():
        used += len(key.encode()) + 1
        if isinstance(value, str):
            used += len(value.encode()) + 1
    return used


def _fastapi_state_metrics(name: str, params: Mapping[str, Any]) -> tuple[str, ...]:
    if name in ("REBOOT", "FIRMWARE_UPDATE"):
        return ("uptime_ms",)
    target = fastapi_target(name, params)
    return () if target is None else (target[0],)


def _fastapi_expectation(
    name: str, params: Mapping[str, Any], state: Mapping[str, float]
) -> Expectation | None:
    if name == "REBOOT":
        return Restart(state.get("uptime_ms"))
    if name == "FIRMWARE_UPDATE":
        return FirmwareOutcome(state.get("uptime_ms"))
    if name == "STATUS_REQUEST":
        return StatusAnswer()
    target = fastapi_target(name, params)
    if target is None:  # SET_LIGHT_SCHEDULE: the node reports no schedule
        return NextMessage()
    metric, value = target
    return StateEcho(metric, value, state.get(metric), may_be_unreported=metric == "smart_mode")


FASTAPI_COMMANDS: Mapping[str, CommandSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            CommandSpec("SERVO_ANGLE", "Turn the servo (degrees, 0-180)", ServoParams),
            CommandSpec("SERVO_CONTROL", "Turn the servo (the same as SERVO_ANGLE)", ServoParams),
            CommandSpec("LIGHT_CONTROL", "Switch the light (relay 1)", SwitchParams),
            CommandSpec("FAN_CONTROL", "Switch the fan (relay 2)", SwitchParams),
            CommandSpec("RELAY_CONTROL", "Switch one relay (1-5)", RelayParams),
            CommandSpec("REAL_MODEL_CONTROL", "Switch the real model output", SwitchParams),
            CommandSpec("SMART_MODE", "Turn smart automation on or off", SmartModeParams),
            CommandSpec(
                "SET_LIGHT_SCHEDULE", "Smart mode's light hours (0-23)", LightScheduleParams
            ),
            CommandSpec("REBOOT", "Restart the node", timeout_s=FASTAPI_REBOOT_TIMEOUT_S),
            CommandSpec("STATUS_REQUEST", "Ask the node to publish its status"),
            CommandSpec(
                "FIRMWARE_UPDATE",
                "Flash a new image from an http:// URL",
                FirmwareParams,
                timeout_s=FASTAPI_FIRMWARE_TIMEOUT_S,
            ),
        )
    }
)


def _iot_node(outgoing: Outgoing) -> dict[str, Any]:
    return {"command": outgoing.name, "params": dict(outgoing.params)}


def _sensor(outgoing: Outgoing) -> dict[str, Any]:
    # The ML service's control message (the backbone's models.InferenceResponse): `timestamp`
    # RFC 3339 for Go's time.Time, and `features_used` an object (Go decodes it into a map: a
    # list makes the backbone drop the whole message).
    params = outgoing.params
    return {
        "device_id": outgoing.topic_id,
        "timestamp": format_us(outgoing.at_us),
        "position": params["position"],
        "confidence": params.get("confidence", 1.0),
        "features_used": dict(params.get("features_used") or {}),
    }


NATIVE = CommandFormat(
    name="native",
    topic_pattern="devices/{id}/commands",
    commands=MappingProxyType(
        {
            "set_window": CommandSpec("set_window", "Move the window (percent open)", WindowParams),
            "set_interval": CommandSpec(
                "set_interval", "Change the telemetry period (seconds)", IntervalParams
            ),
            "ping": CommandSpec("ping", "Ask the node to answer (version, buffered readings)"),
            "reboot": CommandSpec("reboot", "Restart the node"),
        }
    ),
    encode_payload=_native,
    expectation=lambda name, params, state: None,
    max_payload_bytes=NATIVE_MAX_COMMAND_BYTES,
    open_catalogue=True,
)

FASTAPI = CommandFormat(
    name="fastapi",
    topic_pattern="devices/{id}/commands",
    commands=FASTAPI_COMMANDS,
    encode_payload=_fastapi,
    expectation=_fastapi_expectation,
    max_payload_bytes=FASTAPI_JSON_DOC_BYTES,
    state_metrics=_fastapi_state_metrics,
    fallback_topic_pattern="devices/{id}/commands/last",
    fallback_commands=FASTAPI_IDEMPOTENT,
)

IOT_NODE = CommandFormat(
    name="iot-node",
    topic_pattern="iot/node/{id}/command",
    commands=MappingProxyType(
        {"set_led": CommandSpec("set_led", "Switch the LED and set its brightness", LedParams)}
    ),
    encode_payload=_iot_node,
    expectation=lambda name, params, state: StatusReply(name),
    max_payload_bytes=PUBSUBCLIENT_MAX_PAYLOAD_BYTES,
)

SENSOR = CommandFormat(
    name="sensor",
    topic_pattern="window/{id}/control",
    commands=MappingProxyType(
        {
            "set_window": CommandSpec(
                "set_window", "Move the window (percent open)", SensorWindowParams
            )
        }
    ),
    encode_payload=_sensor,
    expectation=lambda name, params, state: NextMessage(),
    max_payload_bytes=SENSOR_MAX_PAYLOAD_BYTES,
    default_timeout_s=SENSOR_DEFAULT_TIMEOUT_S,
)

FORMATS: Mapping[str, CommandFormat] = MappingProxyType(
    {fmt.name: fmt for fmt in (NATIVE, FASTAPI, IOT_NODE, SENSOR)}
)
