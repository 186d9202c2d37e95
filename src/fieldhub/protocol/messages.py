"""The values that flow from the transport through decoding into the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, NamedTuple

AttributeValue = str | int | float | bool | None
Presence = Literal["online", "offline"]


class RejectReason(StrEnum):
    """Why a message went to dead letters. The value is the machine-readable code."""

    EMPTY_PAYLOAD = "empty_payload"
    OVERSIZE_PAYLOAD = "oversize_payload"
    NOT_UTF8 = "not_utf8"
    MALFORMED_JSON = "malformed_json"
    NON_FINITE_NUMBER = "non_finite_number"
    NOT_AN_OBJECT = "not_an_object"
    EXPECTED_NUMBER = "expected_number"
    MISSING_FIELD = "missing_field"
    NO_READINGS = "no_readings"
    TOO_MANY_FIELDS = "too_many_fields"
    TOO_DEEP = "too_deep"
    BAD_FIELD_NAME = "bad_field_name"
    ABSURD_TIMESTAMP = "absurd_timestamp"
    UNKNOWN_TOPIC = "unknown_topic"
    BAD_DEVICE_ID = "bad_device_id"
    BAD_STATUS = "bad_status"
    BAD_AUDIO = "bad_audio"
    BAD_COMMAND_ACK = "bad_command_ack"
    INTERNAL_ERROR = "internal_error"
    STORE_REJECTED = "store_rejected"
    # Bounds on what devices may create (store/admission.py, docs/limits.md).
    DEVICE_LIMIT = "device_limit"
    METRIC_LIMIT = "metric_limit"


class InboundMessage(NamedTuple):
    """One message as the transport received it, before any interpretation.

    A NamedTuple: one is made per message on the ingest hot path (see Reading).
    """

    topic: str
    payload: bytes
    received_us: int
    retain: bool = False
    qos: int = 0


class Reading(NamedTuple):
    """One numeric sample: metric name, the time it was taken, its value.

    A NamedTuple rather than a frozen dataclass: ingest makes several per message, and a frozen
    dataclass's __init__ costs about five times a tuple's.
    """

    metric: str
    ts_us: int
    value: float


@dataclass(slots=True)
class Decoded:
    """What a valid message says about its device.

    `device_time` tells whether the readings carry a time the device gave (exactly-once across a
    redelivery) or the receive time (at-least-once).
    """

    device_id: str
    profile: str
    channel: str
    received_us: int
    readings: list[Reading] = field(default_factory=list)
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    presence: Presence | None = None
    device_time: bool = False
    # For profiles that take commands: the device's id as spelled in its topics (they are
    # case-sensitive) and, from routes that tell, which stack's command format it speaks.
    command_format: str | None = None
    topic_id: str | None = None
    # False when someone else published it about the device (Route.from_device).
    from_device: bool = True


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that cannot be stored as data, with the reason it goes to dead letters."""

    reason: RejectReason
    detail: str
    device_id: str | None = None
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message on a topic fieldhub itself publishes to (commands, OTA): not data, not an error."""

    channel: str


@dataclass(frozen=True, slots=True)
class CommandReply:
    """A device's answer to a command: `{"id","status":"ok"|"error","result"|"error"}`."""

    device_id: str
    profile: str
    command_id: str
    ok: bool
    result: object
    error: str | None
    received_us: int


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """The window-control backbone asking for a window decision (`ml/inference/request/{id}`):
    `{"device_id", "timestamp", "temperature", "humidity", "sound_volume"}`, the means of its
    last 120 s. A feature that is missing or not a finite number is None here: the ML loop
    refuses the request, counted, and records why (docs/ml.md). `raw` is the object as sent."""

    device_id: str
    profile: str
    received_us: int
    at_us: int | None
    features: dict[str, float | None]
    raw: dict[str, object]


DecodeResult = Decoded | Rejected | Ignored | CommandReply | InferenceRequest
