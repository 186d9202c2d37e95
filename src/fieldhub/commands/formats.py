"""How each stack takes commands: topic, payload, known commands, and how success is known.

One `CommandFormat` per stack (docs/commands.md has the table). A format validates a command's
params against the command's schema, encodes it for the wire, and says what will prove it worked:
the device's ack (`native`), or, for firmware that sends none, an `Expectation` met by the
device's next messages as ingest stores them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import Decoded
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
    device's stored messages received after the command went out."""

    def check(self, decoded: Decoded) -> Verdict | None:
        raise NotImplementedError


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


@dataclass(frozen=True, slots=True)
class CommandFormat:
    """One stack's command contract (see the module docstring)."""

    name: str
    topic_pattern: str
    commands: Mapping[str, CommandSpec]
    encode_payload: Callable[[Outgoing], dict[str, Any]]
    expectation: Callable[[str, Mapping[str, Any]], Expectation | None]
    max_payload_bytes: int
    default_timeout_s: float = DEFAULT_TIMEOUT_S
    # Names outside `commands` pass through unchecked (the device answers for itself).
    open_catalogue: bool = False

    def topic(self, topic_id: str) -> str:
        """The device's command topic."""
        return self.topic_pattern.format(id=topic_id)

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


# The FastAPI stack's manual controls: fieldhub's names -> (action, the state its data echoes).
FASTAPI_SWITCHES: Mapping[str, tuple[str, str, float]] = MappingProxyType(
    {
        "light_on": ("LIGHT_ON", "light_state", 1.0),
        "light_off": ("LIGHT_OFF", "light_state", 0.0),
        "fan_on": ("FAN_ON", "fan_state", 1.0),
        "fan_off": ("FAN_OFF", "fan_state", 0.0),
    }
)


def _fastapi(outgoing: Outgoing) -> dict[str, Any]:
    if outgoing.name == "set_servo":
        body: dict[str, Any] = {"action": "SERVO_ANGLE", "angle": outgoing.params["angle"]}
    else:
        body = {"action": FASTAPI_SWITCHES[outgoing.name][0]}
    # The stack's backend adds these to every command; the sketch ignores them.
    body["message_id"] = outgoing.command_id
    body["cmd_timestamp"] = int(time.time())
    return body


def _fastapi_expectation(name: str, params: Mapping[str, Any]) -> Expectation | None:
    if name == "set_servo":
        return Echo("servo_angle", float(params["angle"]))
    _, metric, value = FASTAPI_SWITCHES[name]
    return Echo(metric, value)


def _iot_node(outgoing: Outgoing) -> dict[str, Any]:
    return {"command": outgoing.name, "params": dict(outgoing.params)}


def _sensor(outgoing: Outgoing) -> dict[str, Any]:
    # The ML service's control message, as an operator's order: certain, and no features.
    return {
        "device_id": outgoing.topic_id,
        "timestamp": int(time.time()),
        "position": outgoing.params["position"],
        "confidence": 1.0,
        "features_used": ["manual"],
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
    expectation=lambda name, params: None,
    max_payload_bytes=NATIVE_MAX_COMMAND_BYTES,
    open_catalogue=True,
)

FASTAPI = CommandFormat(
    name="fastapi",
    topic_pattern="devices/{id}/commands",
    commands=MappingProxyType(
        {
            "set_servo": CommandSpec("set_servo", "Turn the servo (degrees)", ServoParams),
            "light_on": CommandSpec("light_on", "Switch the light relay on"),
            "light_off": CommandSpec("light_off", "Switch the light relay off"),
            "fan_on": CommandSpec("fan_on", "Switch the fan relay on"),
            "fan_off": CommandSpec("fan_off", "Switch the fan relay off"),
        }
    ),
    encode_payload=_fastapi,
    expectation=_fastapi_expectation,
    max_payload_bytes=PUBSUBCLIENT_MAX_PAYLOAD_BYTES,
)

IOT_NODE = CommandFormat(
    name="iot-node",
    topic_pattern="iot/node/{id}/command",
    commands=MappingProxyType(
        {"set_led": CommandSpec("set_led", "Switch the LED and set its brightness", LedParams)}
    ),
    encode_payload=_iot_node,
    expectation=lambda name, params: StatusReply(name),
    max_payload_bytes=PUBSUBCLIENT_MAX_PAYLOAD_BYTES,
)

SENSOR = CommandFormat(
    name="sensor",
    topic_pattern="window/{id}/control",
    commands=MappingProxyType(
        {"set_window": CommandSpec("set_window", "Move the window (percent open)", WindowParams)}
    ),
    encode_payload=_sensor,
    expectation=lambda name, params: NextMessage(),
    max_payload_bytes=SENSOR_MAX_PAYLOAD_BYTES,
    default_timeout_s=SENSOR_DEFAULT_TIMEOUT_S,
)

FORMATS: Mapping[str, CommandFormat] = MappingProxyType(
    {fmt.name: fmt for fmt in (NATIVE, FASTAPI, IOT_NODE, SENSOR)}
)
