"""The store's vocabulary: the rows it speaks, the batches it writes, and the small literal types
(aggregates, presence states, retention tiers, series selectors).

A leaf: it imports nothing else from the store, so the interface, the shared core, the engines,
rollups and retention all build on it without importing one another in circles. Times are integer
epoch microseconds everywhere in the store: exact, cheap to index, and the same in SQLite and
PostgreSQL; the API formats them as ISO 8601.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import AttributeValue, CommandReply, Decoded

PresenceState = Literal["online", "offline", "stale", "unknown"]
Aggregate = Literal["avg", "min", "max", "sum", "count", "first", "last"]
AGGREGATES: tuple[Aggregate, ...] = ("avg", "min", "max", "sum", "count", "first", "last")


class StoreError(RuntimeError):
    """The database refused or failed an operation; the message says what to check."""


class StoreUnavailable(StoreError):
    """The database cannot do its part now: the disk is full, an I/O error, the file is
    read-only or locked, the connection is lost, the server is shutting down. Nothing is wrong
    with what was asked, and the same operation succeeds once the cause is gone: ingest keeps
    such a batch unacknowledged and retries it, never dead-letters it (docs/limits.md). Every
    other StoreError may be about the data (a constraint, a value the database refuses)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message, kept with its raw bytes so nothing is silently dropped."""

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_us: int
    device_id: str | None = None
    profile: str | None = None


@dataclass(slots=True)
class WriteBatch:
    """Everything one ingest batch stores, committed in one transaction.

    `retained_digests` records, per topic, the digest of the last payload stored from a topic whose
    devices publish retained, so a re-delivery after a reconnect is recognised and not stored again.
    """

    decoded: list[Decoded] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    retained_digests: dict[str, bytes] = field(default_factory=dict)
    command_replies: list[CommandReply] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.decoded) + len(self.dead_letters) + len(self.command_replies)


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A device's presence changed in a committed batch."""

    device_id: str
    state: Literal["online", "offline"]
    at_us: int


@dataclass(slots=True)
class WriteResult:
    """What a committed batch did."""

    readings_written: int = 0
    readings_duplicate: int = 0
    dead_letters: int = 0
    new_devices: list[str] = field(default_factory=list)
    presence_changes: list[PresenceChange] = field(default_factory=list)
    # Commands the batch's replies ended (each row as it now is, with its new history entries).
    command_transitions: list[CommandRow] = field(default_factory=list)
    # Replies that matched no command still waiting for one (already final, or unknown ids).
    late_replies: int = 0
    # New attribute keys not stored: their device had max_attributes_per_device (admission.py).
    attributes_dropped: int = 0


@dataclass(frozen=True, slots=True)
class CommandTransition:
    """One stored step of a command's life."""

    state: CommandState
    at_us: int
    detail: str


@dataclass(frozen=True, slots=True)
class CommandRow:
    """A command as stored. `history` holds its transitions, oldest first, when asked for
    (a store write returns the entries it added)."""

    device_id: str
    command_id: str
    name: str
    params: dict[str, object]
    format: str
    topic: str
    state: CommandState
    created_us: int
    updated_us: int
    timeout_s: float
    expires_us: int | None
    sent_us: int | None = None
    finished_us: int | None = None
    result: object = None
    error: str | None = None
    decided_by: str | None = None
    history: tuple[CommandTransition, ...] = ()


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What a transition stores besides the new state (for end states)."""

    detail: str
    decided_by: str | None = None
    result: object = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A registered device as the API shows it."""

    device_id: str
    profile: str
    first_seen_us: int
    last_seen_us: int
    presence: PresenceState
    presence_changed_us: int | None
    attributes: dict[str, AttributeValue]
    stale_after_s: int
    # How to command the device (fieldhub/commands/formats.py) and its id as its topics spell it;
    # None until a message said (the profile's default then applies).
    command_format: str | None = None
    topic_id: str | None = None


@dataclass(frozen=True, slots=True)
class MetricSummary:
    """One metric of a device with its latest value."""

    name: str
    last_ts_us: int
    last_value: float


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A stored presence change."""

    ts_us: int
    state: Literal["online", "offline"]


@dataclass(frozen=True, slots=True)
class ReadingRow:
    """One stored reading."""

    metric: str
    ts_us: int
    value: float
    received_us: int


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One aggregated bucket: its start time, the aggregate and how many readings it covers."""

    ts_us: int
    value: float
    count: int


@dataclass(frozen=True, slots=True)
class TimeRow:
    """The readings of one device that share one time: what one message said, as a row.

    `values` always holds the row's primary metric; other asked-for metrics appear only when the
    device stored them at exactly the same time (the same message: receive times are unique per
    message). The Flask stack's API serves its readings this way, one row per message.
    """

    ts_us: int
    received_us: int
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A stored dead letter."""

    id: int
    received_us: int
    topic: str
    reason: str
    detail: str
    payload: bytes
    size: int
    device_id: str | None
    profile: str | None


Tier = Literal["raw", "minute", "hour"]
TIERS: tuple[Tier, ...] = ("raw", "minute", "hour")


@dataclass(frozen=True, slots=True)
class Selector:
    """Which series a rule covers: a device, a metric, both, or (neither) every series."""

    device: str | None = None
    metric: str | None = None

    @property
    def specificity(self) -> int:
        return (2 if self.device is not None else 0) + (1 if self.metric is not None else 0)

    def overlaps(self, other: Selector) -> bool:
        """True when some series matches both."""
        return (self.device is None or other.device is None or self.device == other.device) and (
            self.metric is None or other.metric is None or self.metric == other.metric
        )


# -- security (issue 15): who may sign in, what they hold, what they did ------------------
# Roles and outcomes are plain text here: what they mean belongs to fieldhub.security, above
# the store, and a new role must not need a migration.


@dataclass(frozen=True, slots=True)
class UserRow:
    """A person who signs in to the UI or API."""

    username: str  # 1..64 characters (the service checks)
    role: str  # "viewer" | "operator" | "admin"
    password_hash: str  # an argon2 encoded hash, never the password
    created_us: int
    updated_us: int
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A browser's signed-in session; the cookie value itself is never stored."""

    token_hash: str  # sha256 hex of the cookie value
    username: str
    csrf_token: str
    created_us: int
    last_seen_us: int
    expires_us: int  # the absolute end, whatever the activity
    address: str | None


@dataclass(frozen=True, slots=True)
class ApiTokenRow:
    """An API token (`fh_<token_id>_<secret>`); only the hash of the whole token is stored."""

    token_id: str  # 12 hex characters, public (shown in lists)
    name: str
    token_hash: str  # sha256 hex of the whole token
    role: str
    created_by: str
    created_us: int
    expires_us: int | None
    last_used_us: int | None = None
    revoked_us: int | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What is appended to the audit log. `detail` is stored as JSON and must never hold a
    secret (a password, a token, a device secret)."""

    at_us: int
    actor: str  # a username, "token:<token_id>", "device:<id>", "system", "anonymous"
    action: str  # e.g. "login", "login_failed", "command.send", "token.create"
    target: str | None  # e.g. "device:esp32-01/command:abc", "user:alice"
    address: str | None  # the client's IP address
    outcome: str  # "ok" | "denied" | "failed"
    detail: dict[str, object]


@dataclass(frozen=True, slots=True)
class AuditRow(AuditEntry):
    """An audit entry as stored, with its place in the log (ascending, never reused)."""

    seq: int


@dataclass(frozen=True, slots=True)
class DeviceCredentialRow:
    """The broker password of one device. `device_id` is the canonical id; the device need not
    have reported yet (credentials are provisioned before a device first connects)."""

    device_id: str
    password_hash: str  # Mosquitto's $7$ hash of the device secret
    created_us: int
    rotated_us: int
    revoked_us: int | None = None


# -- rules and alarms (issue 16): rule documents by version, evaluation state, alarms and the
# notification log. What a document or a state means belongs to fieldhub.rules, above the
# store: here they are JSON values. The alarm transition table is the store's (it must be
# atomic), so alarm states are spelled here.

AlarmState = Literal["active", "acknowledged", "cleared"]
ALARM_STATES: tuple[AlarmState, ...] = ("active", "acknowledged", "cleared")


@dataclass(frozen=True, slots=True)
class RuleVersionRow:
    """One version of a rule document. `put_rule_version` assigns `version` (what the row says
    is ignored); reads fill it and `deleted_us`, the rule's deletion time (None while the rule
    exists), the same on every version of the rule."""

    rule_id: str  # [a-z0-9-]{1,64} (rules.model checks)
    document: dict[str, object]  # the rule document as JSON
    enabled: bool
    author: str  # who stored this version: a username, "token:<id>", "cli:<os user>"
    created_us: int
    version: int = 0
    deleted_us: int | None = None


@dataclass(frozen=True, slots=True)
class RuleStateRow:
    """What a rule's evaluation holds for one device (a pending `for`, the side of the
    hysteresis, a baseline), so a restart resumes where it was. `state` is any JSON value
    (fieldhub.rules.conditions' ConditionState.to_json)."""

    rule_id: str
    device_id: str  # the canonical device id (text, as in device_credentials)
    state: object
    updated_us: int


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """An alarm: raised by a rule for a device, at most one open (not cleared) per pair."""

    alarm_id: str  # a UUID (the caller draws it)
    rule_id: str
    device_id: str
    severity: str  # "critical" | "major" | "minor" | "warning" (rules.model checks)
    state: AlarmState
    raised_us: int
    acked_us: int | None = None
    acked_by: str | None = None
    ack_comment: str | None = None
    cleared_us: int | None = None
    cleared_by: str | None = None
    last_notified_us: int | None = None
    notifications: int = 0  # notifications sent about it (repeats included)
    escalated_us: int | None = None  # when it was first escalated


@dataclass(frozen=True, slots=True)
class AlarmEventRow:
    """One step of an alarm's life (raised, acknowledged, cleared), in `seq` order."""

    seq: int
    alarm_id: str
    at_us: int
    state: AlarmState
    actor: str  # "rule:<rule_id>" when raised; a username, a token or the engine afterwards
    comment: str | None


@dataclass(frozen=True, slots=True)
class NotificationEntry:
    """One delivery attempt of a notification, appended to the log. `target` and `detail` must
    never hold a secret (a webhook's signing secret, an SMTP password)."""

    at_us: int
    rule_id: str
    alarm_id: str | None  # None for actions without an alarm (a schedule's edge)
    kind: str  # "webhook" | "email" | "mqtt" | "digest" ...
    target: str  # a URL without credentials, addresses
    outcome: str  # e.g. "delivered" | "retry" | "failed" | "dropped"
    attempt: int  # 1 for the first
    detail: dict[str, object]


@dataclass(frozen=True, slots=True)
class NotificationRow(NotificationEntry):
    """A notification log entry as stored, with its place in the log (ascending, never
    reused)."""

    seq: int


# -- the window-control ML loop (issue 17): one row per decision, and per device the loop's guard
# configuration and state. What the JSON values mean (features, verdicts, GuardConfig,
# GuardState) is fieldhub.ml's business; the trigger and outcome words are spelled here because
# the store filters and counts by them.

MlTrigger = Literal["own", "request", "manual"]
ML_TRIGGERS: tuple[MlTrigger, ...] = ("own", "request", "manual")
MlOutcome = Literal["actuated", "held", "shadow", "refused", "fallback", "off", "error"]
ML_OUTCOMES: tuple[MlOutcome, ...] = (
    "actuated",
    "held",
    "shadow",
    "refused",
    "fallback",
    "off",
    "error",
)


@dataclass(frozen=True, slots=True)
class MlDecisionRow:
    """One decision of the window loop, as recorded. `seq` (ascending, never reused) is filled
    by the store on read; what a row to append says of it is ignored."""

    decision_id: str  # a UUID the caller draws; unique
    device_id: str  # the canonical device id (text, as in device_credentials)
    at_us: int  # when decided
    trigger: MlTrigger  # the loop's own schedule, a device's MQTT request, a manual command
    reason: str  # why now: "first_inference", "temperature_zscore,volume_zscore", "request"
    inputs: dict[str, object]  # the raw feature values and their ages
    verdicts: list[dict[str, object]]  # [{guard, ok, detail}] in the guards' order
    outcome: MlOutcome
    zscores: dict[str, object] | None = None
    model_name: str | None = None
    model_version: int | None = None
    position: float | None = None  # the model's output
    confidence: float | None = None
    target_position: int | None = None  # what was sent (None: nothing was)
    command_id: str | None = None
    latency_us: int | None = None
    request: dict[str, object] | None = None  # the MQTT request as received
    # When the data that started it was committed: the batch of the reading that ran the own
    # trigger, or of the MQTT request (None: the timer, an operator's decide). The loop's
    # reaction time is a command's publication minus this (`./scripts/bench ml`).
    committed_us: int | None = None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class MlDecisionStats:
    """What the ML page shows of the decisions since a time (of one device or all).

    `outcomes` counts every outcome (0 for those that did not occur), `confidence` is a
    histogram in 10 buckets [0, 0.1), [0.1, 0.2), ... [0.9, 1.0] of the decisions that had a
    confidence (values below 0 fall in the first bucket, above 1 in the last), and the latency
    percentiles are nearest-rank over the decisions that recorded one (None: none did)."""

    total: int
    outcomes: dict[str, int]
    confidence: tuple[int, ...]
    latency_p50_us: int | None
    latency_p99_us: int | None


@dataclass(frozen=True, slots=True)
class MlDeviceRow:
    """The window loop's guard configuration and guard state of one device, so a restart
    resumes with the same limits, the last move's time and a running manual override
    (fieldhub.ml.guards' GuardConfig and GuardState as JSON)."""

    device_id: str
    config: dict[str, object]
    state: dict[str, object]
    updated_us: int
