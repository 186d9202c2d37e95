"""Where a broker listens: the `mqtt://` URL and its parts.

Apart from the client so that settings and the CLI can parse and check a broker URL without
loading the MQTT client library.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class MqttUrlError(ValueError):
    """An MQTT URL that fieldhub cannot use; the message says what to write instead."""


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    """Where a broker listens and how to log in."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """The endpoint as an `mqtt://` URL without the password."""
        user = f"{self.username}@" if self.username else ""
        return f"mqtt://{user}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttEndpoint:
    """`mqtt://[user[:password]@]host[:port]` -> MqttEndpoint, or MqttUrlError explaining why."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp"):
        raise MqttUrlError(f"{url!r}: use mqtt://host:port (TLS is not supported yet)")
    if not parts.hostname:
        raise MqttUrlError(f"{url!r} has no host; example: mqtt://127.0.0.1:1883")
    try:
        port = parts.port or 1883
    except ValueError:
        raise MqttUrlError(f"{url!r} has an invalid port") from None
    return MqttEndpoint(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
