"""Settings: command-line flags over `FIELDHUB_*` environment variables over defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fieldhub.mqtt.client import MqttEndpoint, MqttUrlError, parse_mqtt_url
from fieldhub.protocol.profiles import DEFAULT_PROFILES, select_profiles
from fieldhub.store.base import StoreError
from fieldhub.store.open import sqlite_path

# Preferred ports when none is given; when taken (another broker or app), a free one is chosen
# and printed rather than failing, because `fieldhub up` must just work on a busy machine.
PREFERRED_MQTT_PORT = 1883
PREFERRED_HTTP_PORT = 8000


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
    mqtt_client_id: str = Field("fieldhub-ingest", min_length=1, max_length=64)
    mosquitto: str | None = Field(None, description="Path of the mosquitto executable")
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(None, ge=1, le=65535)
    profiles: list[str] = Field(default_factory=lambda: list(DEFAULT_PROFILES))
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_mqtt_url(value)
            except MqttUrlError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("profiles")
    @classmethod
    def _check_profiles(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("enable at least one profile")
        select_profiles(value)
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

    @property
    def db_url(self) -> str:
        """The database URL, defaulting to a file in the data directory."""
        return self.db or f"sqlite:///{(self.data_dir / 'fieldhub.db').absolute()}"

    @property
    def external_broker(self) -> MqttEndpoint | None:
        """The external broker, or None when fieldhub runs its own."""
        return parse_mqtt_url(self.mqtt_url) if self.mqtt_url else None

    @property
    def protocol_version(self) -> int:
        """MQTT protocol level for paho: 5 or 4 (3.1.1)."""
        return 5 if self.mqtt_protocol == "5" else 4
