"""Rule documents: what a rule watches, on which devices, and what it does (docs/rules.md).

A rule is data (JSON or YAML, one shape): an id, a scope, one condition, a severity and actions.
Every model refuses unknown keys (`extra="forbid"`), so a misspelt key is an error naming it, not
a silently ignored setting; every cross-field check raises inside pydantic, so an invalid document
is always a `ValidationError` whose location or message names the field (the API maps it to 422).

A condition and an action are each an object with exactly one key naming its kind
(`{threshold: {...}}`, `{webhook: {...}}`): the key is the discriminator, which keeps YAML short
and makes "which kind is this" impossible to get wrong.

YAML is read with `yaml.safe_load` only. Two YAML 1.1 traps are worth knowing: unquoted `on`,
`off`, `yes`, `no` are booleans (so no key here is named `on`), and an unquoted all-digit MAC
such as `12:34:56:12:34:56` is a base-60 integer, refused as a device id: quote device ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from string import Template
from typing import Annotated, Any, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml  # type: ignore[import-untyped]  # no stubs installed; only safe_load/safe_dump used
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fieldhub.errors import Invalid
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.protocol.messages import AttributeValue
from fieldhub.protocol.profiles import BUILTIN_PROFILES

RULE_ID_PATTERN = r"^[a-z0-9-]{1,64}$"
# Metric names as ingest stores them (`temperature`, `gas_sensor`, `rssi_percent`).
METRIC_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# A z-score baseline is kept in the rule's state for every device: bounded.
MAX_ZSCORE_N = 10_000
# A day: a rate window or for-duration longer than this is better served by rollups.
MAX_WINDOW_S = 7 * 86_400

Severity = Literal["critical", "major", "minor", "warning"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# When an action runs: at the alarm's start, its end, or both.
When = Literal["fire", "clear", "both"]

Metric = Annotated[str, Field(pattern=METRIC_PATTERN)]
Level = Annotated[float, Field(allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, le=MAX_WINDOW_S, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_WINDOW_S, allow_inf_nan=False)]
Hour = Annotated[int, Field(ge=0, le=23, strict=True)]


class Doc(BaseModel):
    """Every document part: unknown keys refused, immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Conditions
# ---------------------------------------------------------------------------------------------


class ThresholdParams(Doc):
    """`above` xor `below` a level for `for_s` seconds of reading time; clear past the clear level
    (`clear_below` with `above`, `clear_above` with `below`; default: the trigger level)."""

    metric: Metric
    above: Level | None = None
    below: Level | None = None
    clear_below: Level | None = None
    clear_above: Level | None = None
    for_s: Seconds = 0.0

    @model_validator(mode="after")
    def _one_side(self) -> ThresholdParams:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of above, below")
        if self.above is not None:
            if self.clear_above is not None:
                raise ValueError("clear_above goes with below; with above, use clear_below")
            if self.clear_below is not None and self.clear_below > self.above:
                raise ValueError(
                    f"clear_below ({self.clear_below:g}) must not be above the trigger level "
                    f"above ({self.above:g}): it clears on the way back down"
                )
        if self.below is not None:
            if self.clear_below is not None:
                raise ValueError("clear_below goes with above; with below, use clear_above")
            if self.clear_above is not None and self.clear_above < self.below:
                raise ValueError(
                    f"clear_above ({self.clear_above:g}) must not be below the trigger level "
                    f"below ({self.below:g}): it clears on the way back up"
                )
        return self


class NoDataParams(Doc):
    """No reading (of `metric`, or of any metric) for more than `for_s` seconds."""

    for_s: PositiveSeconds
    metric: Metric | None = None


class RateParams(Doc):
    """Change per second over the last `window_s`, from the oldest reading in the window to the
    newest: active while above `above` or below `below` (give one or both)."""

    metric: Metric
    window_s: PositiveSeconds
    above: Level | None = None
    below: Level | None = None

    @model_validator(mode="after")
    def _a_level(self) -> RateParams:
        if self.above is None and self.below is None:
            raise ValueError("give above, below or both (change per second)")
        if self.above is not None and self.below is not None and self.below >= self.above:
            raise ValueError(
                f"below ({self.below:g}) must be less than above ({self.above:g}), or the "
                "rate is always beyond one of them"
            )
        return self


class ZScoreParams(Doc):
    """|z| of a reading against the `n` readings before it reaches `threshold`."""

    metric: Metric
    n: Annotated[int, Field(ge=2, le=MAX_ZSCORE_N, strict=True)]
    threshold: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    min_std: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class ScheduleParams(Doc):
    """Active from `on_hour` to `off_hour` local time in `tz` (off < on wraps midnight), on the
    `days` a window starts (all days when left out)."""

    tz: str
    on_hour: Hour
    off_hour: Hour
    days: list[Weekday] | None = None

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as Europe/Berlin or UTC"
            ) from None
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[Weekday] | None) -> list[Weekday] | None:
        if value is not None:
            if not value:
                raise ValueError("days is empty: leave it out for every day")
            if len(set(value)) != len(value):
                raise ValueError("days names a day twice")
        return value

    @model_validator(mode="after")
    def _a_window(self) -> ScheduleParams:
        if self.on_hour == self.off_hour:
            raise ValueError(f"on_hour and off_hour are both {self.on_hour}: an empty window")
        return self


class Threshold(Doc):
    threshold: ThresholdParams


class NoData(Doc):
    no_data: NoDataParams


class Rate(Doc):
    rate: RateParams


class ZScore(Doc):
    zscore: ZScoreParams


class Schedule(Doc):
    schedule: ScheduleParams


class AllOf(Doc):
    """Active while every child is."""

    all: Annotated[list[Condition], Field(min_length=1, max_length=16)]


class AnyOf(Doc):
    """Active while any child is."""

    any: Annotated[list[Condition], Field(min_length=1, max_length=16)]


Leaf: TypeAlias = Threshold | NoData | Rate | ZScore | Schedule
LEAF_KINDS: Mapping[str, type[Doc]] = {
    "threshold": ThresholdParams,
    "no_data": NoDataParams,
    "rate": RateParams,
    "zscore": ZScoreParams,
    "schedule": ScheduleParams,
}
CONDITION_KINDS = (*LEAF_KINDS, "all", "any")
_CONDITION_CLASSES: Mapping[type[Doc], str] = {
    Threshold: "threshold",
    NoData: "no_data",
    Rate: "rate",
    ZScore: "zscore",
    Schedule: "schedule",
    AllOf: "all",
    AnyOf: "any",
}


def _single_key(value: Any, classes: Mapping[type[Doc], str], kinds: tuple[str, ...]) -> str | None:
    """The kind of a one-key object (a dict while validating, a model once built)."""
    for cls, kind in classes.items():
        if isinstance(value, cls):
            return kind
    if isinstance(value, dict) and len(value) == 1:
        (key,) = value
        if key in kinds:
            return str(key)
    return None


def _condition_kind(value: Any) -> str | None:
    return _single_key(value, _CONDITION_CLASSES, CONDITION_KINDS)


Condition = Annotated[
    Annotated[Threshold, Tag("threshold")]
    | Annotated[NoData, Tag("no_data")]
    | Annotated[Rate, Tag("rate")]
    | Annotated[ZScore, Tag("zscore")]
    | Annotated[Schedule, Tag("schedule")]
    | Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")],
    Discriminator(
        _condition_kind,
        custom_error_type="condition_kind",
        custom_error_message=(
            "a condition is an object with exactly one key, its kind: " + ", ".join(CONDITION_KINDS)
        ),
    ),
]

AllOf.model_rebuild()
AnyOf.model_rebuild()


def condition_kind(condition: Condition) -> str:
    """The kind key of a built condition (`threshold`, `all`, ...)."""
    return _CONDITION_CLASSES[type(condition)]


def leaf_params(condition: Leaf) -> Doc:
    """The parameters object of a leaf condition."""
    params: Doc = getattr(condition, condition_kind(condition))
    return params


def leaves(condition: Condition) -> list[Leaf]:
    """Every leaf condition, depth first."""
    if isinstance(condition, AllOf):
        return [leaf for child in condition.all for leaf in leaves(child)]
    if isinstance(condition, AnyOf):
        return [leaf for child in condition.any for leaf in leaves(child)]
    return [condition]


def override_keys(condition: Condition) -> set[str]:
    """The parameter names a per-device override may set: every leaf's parameters except the
    metric (an override changes levels and durations, not what is watched)."""
    keys: set[str] = set()
    for leaf in leaves(condition):
        keys.update(name for name in type(leaf_params(leaf)).model_fields if name != "metric")
    return keys


Override = dict[str, Level | str | list[Weekday]]


def apply_overrides(condition: Condition, override: Mapping[str, Any]) -> Condition:
    """The condition with `override`'s parameters set on every leaf that has them (in `all`/`any`,
    each child with the key), validated again: an override can break a cross-field rule (a clear
    level on the wrong side of the device's own trigger level) and that is refused too."""
    if not override:
        return condition
    unknown = set(override) - override_keys(condition)
    if unknown:
        raise ValueError(
            f"{', '.join(sorted(unknown))}: not a parameter of this condition "
            f"(it has: {', '.join(sorted(override_keys(condition)))})"
        )
    return _apply(condition, override)


def _apply(condition: Condition, override: Mapping[str, Any]) -> Condition:
    if isinstance(condition, AllOf):
        return AllOf(all=[_apply(child, override) for child in condition.all])
    if isinstance(condition, AnyOf):
        return AnyOf(any=[_apply(child, override) for child in condition.any])
    kind = condition_kind(condition)
    params = leaf_params(condition)
    mine = {key: value for key, value in override.items() if key in type(params).model_fields}
    merged = {**params.model_dump(exclude_none=True), **mine}
    built: Condition = type(condition).model_validate({kind: merged})
    return built


# ---------------------------------------------------------------------------------------------
# Scope
# ---------------------------------------------------------------------------------------------


def _device_id(value: str) -> str:
    try:
        return canonical_device_id(value)
    except InvalidDeviceId as exc:
        raise ValueError(str(exc)) from None


class Scope(Doc):
    """Which devices a rule applies to: exactly one of the keys."""

    device: str | None = None
    devices: Annotated[list[str], Field(min_length=1, max_length=10_000)] | None = None
    profile: str | None = None
    attributes: Annotated[dict[str, AttributeValue], Field(min_length=1)] | None = None
    all: Literal[True] | None = None

    @field_validator("device")
    @classmethod
    def _canonical_device(cls, value: str | None) -> str | None:
        return None if value is None else _device_id(value)

    @field_validator("devices")
    @classmethod
    def _canonical_devices(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_device_id(item) for item in value]

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None and value not in BUILTIN_PROFILES:
            raise ValueError(
                f"unknown profile {value!r}; known profiles: {', '.join(sorted(BUILTIN_PROFILES))}"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Scope:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of device, devices, profile, attributes, all"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class ScopeMatch:
    """Answers "is this device in the rule's scope" without re-reading the scope each time (the
    engine asks for every reading)."""

    __slots__ = ("_attributes", "_everything", "_ids", "_profile")

    def __init__(self, scope: Scope) -> None:
        ids = [scope.device] if scope.device is not None else scope.devices
        self._ids = None if ids is None else frozenset(ids)
        self._profile = scope.profile
        self._attributes = scope.attributes
        self._everything = scope.all is True

    def matches(
        self, device_id: str, profile: str, attributes: Mapping[str, AttributeValue]
    ) -> bool:
        """True when the device (its canonical id, profile and attributes) is in scope. An
        attribute match needs every key present with an equal value of the same type (`1` is not
        `true`)."""
        if self._everything:
            return True
        if self._ids is not None:
            return device_id in self._ids
        if self._profile is not None:
            return profile == self._profile
        assert self._attributes is not None
        for key, wanted in self._attributes.items():
            if key not in attributes:
                return False
            have = attributes[key]
            if type(have) is not type(wanted) or have != wanted:
                return False
        return True


# ---------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------

# What a template may name ($device_id or ${device_id}).
TEMPLATE_FIELDS = frozenset(
    {"rule_id", "rule_name", "device_id", "edge", "severity", "metric", "value", "ts_us", "ts_s"}
)


def _template(value: str) -> str:
    template = Template(value)
    if not template.is_valid():
        raise ValueError("a bad $ placeholder: write $name or ${name}, and $$ for a dollar sign")
    unknown = set(template.get_identifiers()) - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"unknown placeholder {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(TEMPLATE_FIELDS))}"
        )
    return value


class AlarmParams(Doc):
    """Raise an alarm on fire, clear it on clear (one open alarm per rule and device)."""


class CommandParams(Doc):
    """A command through the tracked command service, in the device's own format (`name` and
    `params` as the format's catalogue has them; the engine validates them per device)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    params: dict[str, Any] = Field(default_factory=dict)
    when: When = "fire"


class WebhookParams(Doc):
    """A JSON POST signed with the secret in environment variable `secret_env`."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=2000)]
    secret_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")]
    when: When = "both"


class EmailParams(Doc):
    """An e-mail to every address in `to`."""

    to: Annotated[
        list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]],
        Field(min_length=1, max_length=100),
    ]
    when: When = "both"


class MqttParams(Doc):
    """An MQTT publish; `topic` and `payload` are templates ($device_id, $value, ...)."""

    topic: Annotated[str, Field(min_length=1, max_length=256)]
    payload: Annotated[str, Field(max_length=65_536)]
    qos: Annotated[int, Field(ge=0, le=2, strict=True)] = 1
    retain: StrictBool = False
    when: When = "fire"

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if "#" in value or "+" in value.split("/"):
            raise ValueError("a topic to publish to has no wildcards (+, #)")
        return _template(value)

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: str) -> str:
        return _template(value)


class AlarmAction(Doc):
    alarm: AlarmParams


class CommandAction(Doc):
    command: CommandParams


class WebhookAction(Doc):
    webhook: WebhookParams


class EmailAction(Doc):
    email: EmailParams


class MqttAction(Doc):
    mqtt: MqttParams


_ACTION_CLASSES: Mapping[type[Doc], str] = {
    AlarmAction: "alarm",
    CommandAction: "command",
    WebhookAction: "webhook",
    EmailAction: "email",
    MqttAction: "mqtt",
}
ACTION_KINDS = tuple(_ACTION_CLASSES.values())
NOTIFY_KINDS = ("webhook", "email", "mqtt")


def _action_kind(value: Any) -> str | None:
    return _single_key(value, _ACTION_CLASSES, ACTION_KINDS)


Action = Annotated[
    Annotated[AlarmAction, Tag("alarm")]
    | Annotated[CommandAction, Tag("command")]
    | Annotated[WebhookAction, Tag("webhook")]
    | Annotated[EmailAction, Tag("email")]
    | Annotated[MqttAction, Tag("mqtt")],
    Discriminator(
        _action_kind,
        custom_error_type="action_kind",
        custom_error_message=(
            "an action is an object with exactly one key, its kind: " + ", ".join(ACTION_KINDS)
        ),
    ),
]

Notify = Annotated[
    Annotated[WebhookAction, Tag("webhook")]
    | Annotated[EmailAction, Tag("email")]
    | Annotated[MqttAction, Tag("mqtt")],
    Discriminator(
        _action_kind,
        custom_error_type="notify_kind",
        custom_error_message="escalate.to is an object with one key: webhook, email or mqtt",
    ),
]


def action_kind(action: Action | Notify) -> str:
    """The kind key of a built action (`alarm`, `webhook`, ...)."""
    return _ACTION_CLASSES[type(action)]


class Escalate(Doc):
    """Notify a second target when the alarm is still active and unacknowledged after `after_s`."""

    after_s: PositiveSeconds
    to: Notify


# ---------------------------------------------------------------------------------------------
# The rule
# ---------------------------------------------------------------------------------------------


class Rule(Doc):
    """One rule document."""

    id: Annotated[str, Field(pattern=RULE_ID_PATTERN)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    enabled: StrictBool = True
    scope: Scope
    condition: Condition
    severity: Severity = "warning"
    actions: Annotated[list[Action], Field(min_length=1, max_length=32)]
    repeat_every_s: PositiveSeconds | None = None
    escalate: Escalate | None = None
    # Device id -> the condition's parameters for that device.
    overrides: dict[str, Override] = Field(default_factory=dict)

    @field_validator("actions")
    @classmethod
    def _one_alarm(cls, value: list[Action]) -> list[Action]:
        if sum(isinstance(action, AlarmAction) for action in value) > 1:
            raise ValueError("at most one alarm action (one open alarm per rule and device)")
        return value

    @field_validator("repeat_every_s", "escalate")
    @classmethod
    def _needs_alarm(cls, value: object, info: ValidationInfo) -> object:
        actions = info.data.get("actions")
        if (
            value is not None
            and actions is not None
            and not any(isinstance(action, AlarmAction) for action in actions)
        ):
            raise ValueError(
                f"{info.field_name} needs an alarm action: it runs while the alarm is "
                "active and unacknowledged"
            )
        return value

    @field_validator("overrides")
    @classmethod
    def _overrides_fit(
        cls, value: dict[str, Override], info: ValidationInfo
    ) -> dict[str, Override]:
        condition = info.data.get("condition")
        canonical: dict[str, Override] = {}
        for raw_id, override in value.items():
            device_id = _device_id(raw_id)
            if device_id in canonical:
                raise ValueError(f"device {device_id} has two overrides (two spellings of its id)")
            if condition is not None:
                try:
                    apply_overrides(condition, override)
                except ValueError as exc:
                    raise ValueError(f"overrides for {device_id}: {_first_line(exc)}") from None
            canonical[device_id] = override
        return canonical


def _first_line(exc: ValueError) -> str:
    """A nested ValidationError's gist (its error list without pydantic's URLs)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for error in errors():
            where = ".".join(str(part) for part in error["loc"][1:])
            message = str(error["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
        return "; ".join(parts)
    return str(exc)


# ---------------------------------------------------------------------------------------------
# Reading and writing documents
# ---------------------------------------------------------------------------------------------

Format = Literal["json", "yaml"]


def parse_document(text: str, *, format: Format) -> Any:
    """The document's data; Invalid (code `invalid_rule_document`) when it is not JSON/YAML or
    not an object."""
    try:
        data = json.loads(text) if format == "json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise Invalid(
            f"the rule is not valid {format.upper()}: {exc}", code="invalid_rule_document"
        ) from None
    if not isinstance(data, dict):
        raise Invalid(
            f"a rule document is an object (a mapping), not {type(data).__name__}",
            code="invalid_rule_document",
        )
    return data


def load_rule(text: str, *, format: Format) -> Rule:
    """Parse and validate one rule document. Invalid when the text does not parse; pydantic's
    ValidationError (naming each field) when it parses but is not a valid rule."""
    return Rule.model_validate(parse_document(text, format=format))


def rule_data(rule: Rule) -> dict[str, Any]:
    """The rule as plain JSON data: unset optional keys left out, defaults written."""
    data: dict[str, Any] = rule.model_dump(mode="json", exclude_none=True)
    return data


def dump_rule(rule: Rule, *, format: Format) -> str:
    """The rule as a document that `load_rule` reads back to an equal rule."""
    data = rule_data(rule)
    if format == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return text


def is_rule_id(value: str) -> bool:
    """True when `value` can be a rule id."""
    return re.fullmatch(RULE_ID_PATTERN, value) is not None
