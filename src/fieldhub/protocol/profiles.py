"""Topic profiles as data: each row is (topic pattern, channel, decoder).

The ingest router is one table built from the enabled profiles, so adding a profile adds rows, not
code paths. A pattern has exactly one `+`, the level holding the device id. docs/protocol.md
lists the stacks each profile keeps compatible and what their devices send.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fieldhub.protocol.payload import MAX_PAYLOAD_BYTES


@dataclass(frozen=True, slots=True)
class Route:
    """One topic pattern of a profile and how to read what arrives on it.

    `publishes_retained` marks topics whose devices publish with the retain flag: the broker hands
    the last message over again on every new subscription, and ingest must not store it twice.
    `required` names numeric fields the decoder insists on (a strict legacy schema).
    `metric` names the reading of payloads that carry a bare value with no field name (a number
    as text, an audio clip's level). `max_payload_bytes` is the largest payload accepted; only
    routes that carry audio need more than the default. `command_format` marks routes whose
    messages tell which stack a device runs, and so how to send it commands (fieldhub/commands).
    `from_device` is False for topics other systems publish about a device (the window-control
    stack's ML orders, fieldhub's own commands there): they are stored, but do not prove the
    device is alive, so they leave its last-seen time alone. `renames` maps field names of this
    route only, before the profile's `renames`: one profile can carry two stacks whose same field
    has different units (`uptime` in seconds on one topic, milliseconds on another).
    """

    pattern: str
    channel: str
    decoder: str
    publishes_retained: bool = False
    required: tuple[str, ...] = ()
    metric: str | None = None
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    command_format: str | None = None
    from_device: bool = True
    renames: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        levels = self.pattern.split("/")
        if levels.count("+") != 1 or "#" in levels:
            raise ValueError(f"route pattern {self.pattern!r} needs exactly one '+' and no '#'")

    @property
    def id_level(self) -> int:
        """Index of the topic level that holds the device id."""
        return self.pattern.split("/").index("+")


@dataclass(frozen=True, slots=True)
class Profile:
    """A named family of topics and payloads, usually the contract of one existing stack.

    `subscriptions` are the broker filters that cover the profile's whole prefix, so a topic under
    the prefix that matches no route reaches dead letters instead of vanishing. `renames` maps a
    payload's field names to fieldhub metric names where the stack's names mislead (units).
    `stale_after_s` is how long a device may stay silent before its presence shows `stale`.
    `command_format` is how to command a device of the profile whose messages did not say more.
    """

    name: str
    subscriptions: tuple[str, ...]
    routes: tuple[Route, ...]
    stale_after_s: int
    renames: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    command_format: str | None = None


NATIVE = Profile(
    name="native",
    subscriptions=("devices/#",),
    routes=(
        Route("devices/+/telemetry", "telemetry", "json_telemetry", command_format="native"),
        # The FastAPI/RabbitMQ stack's node publishes everything here: sensor data every second,
        # a heartbeat every 3 s and a status message around connects, reboots and updates
        # (decode_fastapi_data tells them apart). It takes that stack's `{"action": ...}`
        # commands, not fieldhub's. Its `uptime` is `millis()` (IoT_Platform_Node.ino), so it is
        # stored as `uptime_ms`; `wifi_rssi` -> `rssi` comes from the profile's renames.
        Route(
            "devices/+/data",
            "telemetry",
            "fastapi_data",
            command_format="fastapi",
            renames=MappingProxyType({"uptime": "uptime_ms"}),
        ),
        Route("devices/+/status", "status", "status", publishes_retained=True),
        # Down-link topics fieldhub itself publishes to, and up-links later features consume.
        Route("devices/+/commands", "commands", "ignore"),
        # The FastAPI stack's retained fallback: fieldhub publishes a held command there for a
        # node that is offline and clears it (docs/commands.md); both are down-link, not data.
        Route("devices/+/commands/last", "commands", "ignore"),
        Route("devices/+/commands/ack", "command_ack", "command_ack"),
        Route("devices/+/audio", "audio", "ignore"),
        Route("devices/+/ota", "ota", "ignore"),
        Route("devices/+/ota/status", "ota_status", "ignore"),
    ),
    # Native nodes publish every few seconds and heartbeat on status; two silent minutes is news.
    stale_after_s=120,
    # Payloads in the iot-node stack's shape on `devices/+/telemetry` name RSSI in dBm
    # `wifi_rssi` and uptime in seconds `uptime`; stored under fieldhub's names, as for iot-node.
    # The `devices/+/data` route overrides `uptime` (milliseconds there). fieldhub's own firmware
    # sends `rssi` and `uptime_s` and is not affected.
    renames=MappingProxyType({"wifi_rssi": "rssi", "uptime": "uptime_s"}),
    command_format="native",
)

READINGS = Profile(
    name="readings",
    subscriptions=("/readings/#",),
    routes=(
        Route(
            "/readings/gateway/+",
            "gateway",
            "readings",
            publishes_retained=True,
            required=("rssi",),
        ),
        Route(
            "/readings/temperature/+",
            "temperature",
            "readings",
            publishes_retained=True,
            required=("temperature",),
        ),
    ),
    # The firmware publishes every 30 s; three missed periods make a device stale.
    stale_after_s=90,
    # Its `rssi` is a 0-100 % mapping of -90..-30 dBm, not dBm like every other profile's, and its
    # `timestamp` is uptime in milliseconds.
    renames=MappingProxyType({"rssi": "rssi_percent", "timestamp": "uptime_ms"}),
)

IOT_NODE = Profile(
    name="iot-node",
    # Only the nodes' subtree: `iot/broker/...` is the broker's own health, not a device.
    subscriptions=("iot/node/#",),
    routes=(
        # `{"node_id", "timestamp": <epoch s>, "sensors": {...}, "wifi_rssi", "uptime"}`
        Route("iot/node/+/telemetry", "telemetry", "json_telemetry", command_format="iot-node"),
        # Node health as JSON (uptime, RSSI, ...): a heartbeat that also carries readings. Nodes
        # may publish it retained (so a dashboard sees the last health at once), and a retained
        # heartbeat handed over again on a new session must not store its readings twice.
        Route(
            "iot/node/+/status",
            "status",
            "status",
            publishes_retained=True,
            command_format="iot-node",
        ),
        # Down-link: the stack's management utility (and later fieldhub) publishes commands here.
        Route("iot/node/+/command", "commands", "ignore"),
    ),
    # The stack documents no period; nodes report every few seconds to a minute.
    stale_after_s=180,
    # Same names as every other profile's: RSSI in dBm is `rssi`, and the unit of `uptime`
    # (seconds here, milliseconds in the Flask firmware) goes into its name.
    renames=MappingProxyType({"wifi_rssi": "rssi", "uptime": "uptime_s"}),
    command_format="iot-node",
)

# Two seconds of 16 kHz 16-bit mono WAV is 64 KB, 85 KB as base64 in JSON. 512 KiB takes up to
# ~12 s of that, or 2 s of 48 kHz stereo; larger clips are recordings, not level samples.
AUDIO_MAX_PAYLOAD_BYTES = 512 * 1024

SENSOR = Profile(
    name="sensor",
    subscriptions=("sensor/#", "window/#", "ml/inference/request/#"),
    routes=(
        # Each value on its own topic as bare text (`25.5`), named by the topic's last level.
        Route(
            "sensor/+/temperature",
            "telemetry",
            "number_text",
            metric="temperature",
            command_format="sensor",
        ),
        Route(
            "sensor/+/humidity",
            "telemetry",
            "number_text",
            metric="humidity",
            command_format="sensor",
        ),
        # `{"data": "<base64 WAV>", "sample_rate": 16000, "duration": 2.0}` from the I2S
        # microphone: stored as its RMS level in dBFS (protocol/audio.py), not as audio.
        Route(
            "sensor/+/audio",
            "audio",
            "sound_level",
            metric="sound_volume",
            max_payload_bytes=AUDIO_MAX_PAYLOAD_BYTES,
            command_format="sensor",
        ),
        # The ML service's order to the window motor: the position it commands is the actuator's
        # state (the firmware obeys without an echo), kept with the model's confidence.
        Route("window/+/control", "actuator", "window_control", from_device=False),
        # The stack's backend asks its ML service for a decision: fieldhub's ML loop answers it
        # (fieldhub/ml). Its numbers are window means of readings fieldhub already stores from
        # the sensor topics, so they are never stored as readings.
        Route("ml/inference/request/+", "ml_request", "ml_request"),
    ),
    # The stack's firmware reports "on change or periodic"; the audio clip goes every few seconds.
    stale_after_s=180,
    renames=MappingProxyType({"position": "window_position", "confidence": "window_confidence"}),
    command_format="sensor",
)

BUILTIN_PROFILES: Mapping[str, Profile] = MappingProxyType(
    {profile.name: profile for profile in (NATIVE, READINGS, IOT_NODE, SENSOR)}
)
# Every built-in profile listens by default: a device flashed for any of the stacks fieldhub
# replaces works without configuration. Each profile subscribes only under its own prefix.
DEFAULT_PROFILES: tuple[str, ...] = ("native", "readings", "iot-node", "sensor")


def select_profiles(names: Iterable[str]) -> list[Profile]:
    """The built-in profiles named, in order; ValueError naming the choices for an unknown one."""
    chosen = []
    for name in names:
        try:
            chosen.append(BUILTIN_PROFILES[name])
        except KeyError:
            known = ", ".join(sorted(BUILTIN_PROFILES))
            raise ValueError(f"unknown profile {name!r}; known profiles: {known}") from None
    return chosen
