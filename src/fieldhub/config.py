"""Settings: command-line flags over `FIELDHUB_*` environment variables over defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fieldhub.broker.legacy import LEGACY_POLICIES, select_legacy_policies
from fieldhub.mqtt.endpoint import MqttEndpoint, MqttUrlError, parse_mqtt_url
from fieldhub.net import is_loopback
from fieldhub.protocol.ids import canonical_device_id
from fieldhub.protocol.messages import RejectReason
from fieldhub.protocol.profiles import DEFAULT_PROFILES, select_profiles
from fieldhub.store.admission import InputLimits
from fieldhub.store.open import sqlite_path
from fieldhub.store.retention import RetentionPolicy, Rule
from fieldhub.store.types import TIERS, Selector, StoreError, Tier

# Preferred ports when none is given; when taken (another broker or app), a free one is chosen
# and printed rather than failing, because `fieldhub up` must just work on a busy machine.
PREFERRED_MQTT_PORT = 1883
PREFERRED_HTTP_PORT = 8000
PREFERRED_MQTT_TLS_PORT = 8883


Days = Annotated[float, Field(gt=0, le=100 * 365)]


class RetentionRuleSetting(BaseModel):
    """An override: days per tier for one device, one metric, or one device's metric. A tier
    left out follows the next less specific rule; `null` keeps it forever."""

    model_config = ConfigDict(extra="forbid")

    device: str | None = None
    metric: str | None = None
    raw_days: Days | None = None
    minute_days: Days | None = None
    hour_days: Days | None = None

    @model_validator(mode="after")
    def _says_something(self) -> RetentionRuleSetting:
        if self.device is None and self.metric is None:
            raise ValueError("a retention rule names a device, a metric or both")
        if not self.model_fields_set & {"raw_days", "minute_days", "hour_days"}:
            raise ValueError("a retention rule sets raw_days, minute_days or hour_days")
        return self

    def rule(self) -> Rule:
        days: dict[Tier, float | None] = {}
        for tier in TIERS:
            if f"{tier}_days" in self.model_fields_set:
                days[tier] = getattr(self, f"{tier}_days")
        device = canonical_device_id(self.device) if self.device is not None else None
        return Rule(Selector(device, self.metric), days)


class Settings(BaseSettings):
    """Every setting of a fieldhub process. Environment: `FIELDHUB_<NAME>` (e.g. FIELDHUB_DB)."""

    model_config = SettingsConfigDict(env_prefix="FIELDHUB_", extra="forbid", validate_default=True)

    data_dir: Path = Field(
        Path("fieldhub-data"), description="Directory for the database and broker state"
    )
    db: str | None = Field(
        None, description="Database URL; default sqlite:///<data_dir>/fieldhub.db"
    )
    mqtt_url: str | None = Field(
        None,
        description="External broker, mqtt://[user:pass@]host:port; unset = embedded Mosquitto",
    )
    mqtt_port: int | None = Field(None, ge=1, le=65535, description="Port of the embedded broker")
    # Ingest speaks MQTT 3.1.1 by default: paho decodes MQTT 5 properties on every PUBLISH, which
    # measured 66 vs 44 us of CPU per message (bench/README.md), and ingest uses no MQTT 5 feature
    # that 3.1.1 lacks (flow control comes from the broker's max_inflight_messages either way).
    mqtt_protocol: Literal["5", "3.1.1"] = "3.1.1"
    # Also the name of the ingest workers' share group ($share/<id>/...), which may not hold
    # '/', '+' or '#'; MQTT 3.1.1 brokers need accept only [0-9a-zA-Z] ids, so nothing exotic.
    mqtt_client_id: str = Field(
        "fieldhub-ingest", min_length=1, max_length=64, pattern=r"^[0-9A-Za-z_.:-]+$"
    )
    # False: `fieldhub up --no-ingest`, the API beside `fieldhub ingest` workers
    # (ingest/follower.py); it needs the workers' broker (mqtt_url) and database.
    ingest: bool = Field(True, description="Store what the broker delivers (else workers do)")
    mosquitto: str | None = Field(None, description="Path of the mosquitto executable")
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(None, ge=1, le=65535)
    profiles: list[str] = Field(default_factory=lambda: list(DEFAULT_PROFILES))
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # text: one line a record for people; json: one object a line for log collectors, with the
    # request, device and command ids as keys (fieldhub/logs.py, docs/operations.md).
    log_format: Literal["text", "json"] = "text"
    # Per-device command limits (docs/commands.md): an ESP32 handles a few commands a second;
    # more is a runaway script, which should meet a 429 rather than the device's heap.
    command_rate_per_s: float = Field(5.0, gt=0, le=1_000_000)
    command_burst: int = Field(20, ge=1, le=1_000_000)
    command_queue_max: int = Field(
        100, ge=1, le=1_000_000, description="Commands not yet final a device may have"
    )
    command_expiry_s: float = Field(
        3600.0, gt=0, le=365 * 86400, description="Default life of a command not yet sent"
    )
    # Retention (store/retention.py): raw readings 30 days, minute rollups a year, hour rollups
    # forever (None), with per-device/per-metric rules, applied hourly.
    retention_raw_days: Days | None = 30.0
    retention_minute_days: Days | None = 365.0
    retention_hour_days: Days | None = None
    retention_ml_decisions_days: Days | None = 90.0
    # Dead letters (docs/limits.md): hostile input must not fill the disk through them.
    dead_letter_days: Days | None = Field(
        30.0,
        description="Days to keep dead letters (unset: forever) unless their reason has a rule",
    )
    dead_letter_reason_days: dict[str, Days | None] = Field(
        default_factory=dict,
        description='Days per reason, e.g. {"store_rejected": 90} (null: forever)',
    )
    dead_letter_max_mb: float | None = Field(
        100.0,
        gt=0,
        description="Most the dead letters may take, oldest deleted first (unset: no bound)",
    )
    retention_rules: list[RetentionRuleSetting] = Field(default_factory=list)
    retention_interval_s: float = Field(3600.0, ge=1, le=7 * 86400)
    disk_budget_mb: float | None = Field(
        None, gt=0, description="Warn (log, metric) when the database reaches 90 % of this"
    )
    # The scheduled backup inside `fieldhub up` (fieldhub/backup/, docs/backups.md): off unless
    # a directory is given; the first one is made one interval after the start.
    backup_dir: Path | None = Field(
        None, description="Make scheduled backups in this directory; unset: none"
    )
    backup_every_h: float = Field(24.0, gt=0, le=24 * 365, description="Hours between backups")
    backup_keep: int = Field(
        7, ge=1, le=10_000, description="Scheduled backups kept; older ones are deleted"
    )
    # A full disk or a lost database makes /healthz `degraded` at once (messages wait on the
    # broker, nothing is lost); past this it answers 503, so an orchestrator acts on it.
    # Bounds on what devices may create (store/admission.py, docs/limits.md): random device ids,
    # metric names or attributes from a script must not grow the database without end.
    new_devices_per_hour: float = Field(
        10_000.0,
        gt=0,
        le=10_000_000,
        description="New devices admitted per hour (a bucket: a whole fleet at once fits); "
        "past it their messages are dead letters `device_limit`",
    )
    max_metrics_per_device: int = Field(
        500, ge=1, le=100_000, description="Metrics a device may have (past: `metric_limit`)"
    )
    max_attributes_per_device: int = Field(
        64, ge=1, le=10_000, description="Attribute keys kept per device (new ones past it: not)"
    )
    max_attribute_chars: int = Field(
        256, ge=8, le=65_536, description="A string attribute is cut to this many characters"
    )
    store_unwritable_503_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="/healthz answers 503 once database writes have failed this long (seconds)",
    )
    # Security (docs/security.md). Off is demo mode: no credential anywhere, so it is refused on
    # any address but loopback (the validator below).
    auth: bool = Field(True, description="Require credentials (off: demo mode, loopback only)")
    mqtt_host: str = Field("127.0.0.1", description="Address the embedded broker listens on")
    mqtt_tls_port: int | None = Field(
        None, ge=1, le=65535, description="TLS listener of the embedded broker (needs tls_*)"
    )
    mqtt_legacy_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Listener for fleets flashed for the earlier stacks (no credentials, "
        "per-profile ACLs); unset: off",
    )
    mqtt_legacy_host: str | None = Field(None, description="Its address; default mqtt_host")
    mqtt_legacy_policies: list[str] = Field(
        default_factory=lambda: list(LEGACY_POLICIES),
        description="Which earlier stacks the legacy listener serves (docs/security.md)",
    )
    tls_cert: Path | None = Field(None, description="Server certificate (PEM) for HTTPS and MQTT")
    tls_key: Path | None = Field(None, description="Its private key (PEM)")
    tls_ca: Path | None = Field(None, description="The CA that signed it, given to devices")
    http_origins: list[str] = Field(
        default_factory=list, description="Origins besides the page's own that may open /live"
    )
    run_as: str | None = Field(
        None,
        description="User to switch to when started as root (default: fieldhub, else the data "
        "dir's owner; root keeps root)",
    )
    # Rules and alarms (docs/rules.md): the engine's timer (no-data, `for` windows, schedules,
    # repeats) and the SMTP server rule e-mails go through; without smtp_host an e-mail action
    # is logged as dropped (no sender), webhooks still go out.
    rules_tick_s: float = Field(
        1.0, gt=0, le=3600, description="How often the rule engine's timer runs, seconds"
    )
    # The window loop (docs/ml.md): what a device without its own configuration may be told.
    # Shadow by default: a model that moves physical things acts only where someone said so.
    ml_mode: Literal["off", "shadow", "act"] = Field(
        "shadow",
        description="Window loop default: off, shadow (decide and record, never move) or act",
    )
    models_dir: Path | None = Field(
        None, description="The model registry; default <data_dir>/models"
    )
    smtp_host: str | None = Field(None, description="SMTP server for rule e-mails; unset: none")
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_starttls: bool = Field(True, description="Upgrade the SMTP connection before login")
    smtp_username: str | None = Field(None, description="SMTP login; unset: send without one")
    # A SecretStr: never shown by a repr or a settings dump (docs/security.md).
    smtp_password: SecretStr | None = None
    smtp_from: str = Field(
        "fieldhub@localhost",
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="The From address of rule e-mails",
    )

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_mqtt_url(value)
            except MqttUrlError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("dead_letter_reason_days")
    @classmethod
    def _check_dead_letter_reasons(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        known = {reason.value for reason in RejectReason}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"no dead-letter reason {', '.join(unknown)}; "
                f"the reasons: {', '.join(sorted(known))}"
            )
        return value

    @field_validator("profiles")
    @classmethod
    def _check_profiles(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("enable at least one profile")
        select_profiles(value)
        return value

    @field_validator("mqtt_legacy_policies")
    @classmethod
    def _check_legacy_policies(cls, value: list[str]) -> list[str]:
        select_legacy_policies(value)
        return value

    @field_validator("db")
    @classmethod
    def _check_db(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("sqlite:"):
            try:
                sqlite_path(value)
            except StoreError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _broker_choice(self) -> Settings:
        if self.mqtt_url is not None and self.mqtt_port is not None:
            raise ValueError(
                "give either mqtt_url (external broker) or mqtt_port (embedded), not both"
            )
        return self

    @model_validator(mode="after")
    def _reachable_only_with_auth(self) -> Settings:
        if self.auth:
            return self
        for what, host in (
            ("http_host", self.http_host),
            ("mqtt_host", self.mqtt_host),
            ("mqtt_legacy_host", self.mqtt_legacy_host),
        ):
            if host is not None and not is_loopback(host):
                raise ValueError(
                    f"without authentication (demo mode) fieldhub listens on 127.0.0.1 only, "
                    f"not {what}={host}: run without --demo / FIELDHUB_AUTH=false, and the "
                    "first start creates an admin and prints a setup link (docs/security.md)"
                )
        if self.mqtt_legacy_port is not None:
            raise ValueError(
                "the legacy listener (mqtt_legacy_port) applies per-profile ACLs, which exist "
                "only with authentication on: drop --demo / FIELDHUB_AUTH=false"
            )
        return self

    @model_validator(mode="after")
    def _smtp_login(self) -> Settings:
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("give smtp_username and smtp_password together (or neither)")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "give tls_cert and tls_key together (`fieldhub certs init` makes both)"
            )
        if self.mqtt_tls_port is not None and self.tls_cert is None:
            raise ValueError("mqtt_tls_port needs tls_cert and tls_key (`fieldhub certs init`)")
        for what, path in (
            ("tls_cert", self.tls_cert),
            ("tls_key", self.tls_key),
            ("tls_ca", self.tls_ca),
        ):
            if path is not None and not path.is_file():
                raise ValueError(
                    f"{what} {path} is not a readable file (`fieldhub certs init` makes "
                    "ca.pem, server.pem and server.key in <data_dir>/certs)"
                )
        return self

    @property
    def db_url(self) -> str:
        """The database URL, defaulting to a file in the data directory."""
        return self.db or f"sqlite:///{(self.data_dir / 'fieldhub.db').absolute()}"

    @property
    def model_registry(self) -> Path:
        """Where the window loop's model versions live."""
        return self.models_dir or self.data_dir / "models"

    @property
    def external_broker(self) -> MqttEndpoint | None:
        """The external broker, or None when fieldhub runs its own."""
        return parse_mqtt_url(self.mqtt_url) if self.mqtt_url else None

    @property
    def retention(self) -> RetentionPolicy:
        """The retention policy these settings describe."""
        return RetentionPolicy(
            raw_days=self.retention_raw_days,
            minute_days=self.retention_minute_days,
            hour_days=self.retention_hour_days,
            overrides=tuple(rule.rule() for rule in self.retention_rules),
            ml_decision_days=self.retention_ml_decisions_days,
            dead_letter_days=self.dead_letter_days,
            dead_letter_reason_days=tuple(sorted(self.dead_letter_reason_days.items())),
            dead_letter_max_bytes=None
            if self.dead_letter_max_mb is None
            else int(self.dead_letter_max_mb * 2**20),
        )

    @property
    def input_limits(self) -> InputLimits:
        """The bounds on what devices may create."""
        return InputLimits(
            new_devices_per_hour=self.new_devices_per_hour,
            max_metrics_per_device=self.max_metrics_per_device,
            max_attributes_per_device=self.max_attributes_per_device,
            max_attribute_chars=self.max_attribute_chars,
        )

    @property
    def protocol_version(self) -> int:
        """MQTT protocol level for paho: 5 or 4 (3.1.1)."""
        return 5 if self.mqtt_protocol == "5" else 4
