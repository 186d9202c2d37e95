"""What devices flashed for the four earlier stacks may do on the legacy listener, as data.

Those fleets cannot be reflashed to carry fieldhub credentials, so the operator may open a
separate listener for them (off unless configured). Each stack gets one `LegacyPolicy`: the
topics an unauthenticated client may publish and read there, bound to the client's own id with
Mosquitto's `%c` wherever the stack's client id is the topic's id, and otherwise the narrowest
filter its topics allow. `access.render_legacy_acl_file` turns the enabled policies into the
legacy listener's ACL file, adding `deny` lines for every device that has fieldhub credentials.
The `can_spoof` / `cannot_spoof` texts are what docs/security.md and the tests quote.

Facts about Mosquitto 2.0.11 these policies rely on (read in src/security_default.c and
measured against the binary, tests/broker/test_legacy_listener.py):

* A listener's ACL lines are checked in this order: the client's own `topic` lines (those before
  any `user` line for a client without a username, its `user` block otherwise), `deny` lines
  first; then every `pattern` line, `deny` patterns first. The first match decides; no match
  denies. So `topic deny` lines override every allowing `pattern`.
* The ACL file does not check subscriptions at all (`FIXME - implement ACL subscription
  strings`): every SUBSCRIBE is granted (SUBACK with the QoS asked for, never 0x80), and each
  message is checked with `read` access when it would be delivered, retained ones included. An
  unauthorised subscription therefore receives nothing, silently.
* An unauthorised PUBLISH is dropped silently for MQTT 3.1.1 (acknowledged, never delivered).
* A client id or username holding `+` or `#` is refused every pattern-based access.
* Client ids are one namespace across listeners: a client on the legacy listener that takes the
  id of a connected client on another listener disconnects it, and with a persistent session
  takes over what the broker queued for it (no ACL check on that hand-over).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class LegacyPolicy:
    """One legacy stack's compatibility policy on the legacy listener.

    `publish` and `read` are ACL topic filters; `%c` stands for the client's id. `login` is the
    username the stack's firmware logs in with, if it has credentials compiled in: its grants
    are then given to that user only (the legacy listener's password file holds it), never to
    anonymous clients. `id_topics` are templates (`{id}` = a device id) of every topic of the
    stack that names a device: the legacy ACL denies them for devices with fieldhub credentials.
    """

    name: str
    stack: str
    client_id: str
    publish: tuple[str, ...]
    read: tuple[str, ...]
    id_topics: tuple[str, ...]
    can_spoof: str
    cannot_spoof: str
    login: str | None = None

    def __post_init__(self) -> None:
        for topic in (*self.publish, *self.read):
            levels = topic.split("/")
            if "#" in levels or any(level.startswith("$") for level in levels):
                raise ValueError(f"legacy policy {self.name}: {topic!r} is too wide")
            if "commands/ack" in topic:
                raise ValueError(f"legacy policy {self.name}: {topic!r} is a command ack")


# The FastAPI stack's firmware logs in with these (mqtt_user, mqtt_password in
# IoT_Platform_Node.ino; fieldhub/sim/fastapi_node.py). They are public, so they prove only
# that a client is that firmware or read its source; an operator who compiled other ones in
# gives those instead.
FASTAPI_FIRMWARE_USERNAME = "rnr_iot_user"
FASTAPI_FIRMWARE_PASSWORD = "rnr_iot_2025!"

_NEVER = (
    "It can never publish a command ack or a command, never publish or read a topic of a "
    "device that has fieldhub credentials (in any of its id's upper- or lower-case spellings), "
    "and never receive anything its grants do not name, whatever it subscribes to (`#` "
    "included). The broker cannot tell the stacks without credentials (readings, iot-node, "
    "sensor) apart: an anonymous client holds the grants of every such stack enabled on the "
    "listener, so enable only the stacks still in the field (`FIELDHUB_MQTT_LEGACY_POLICIES`)."
)

READINGS = LegacyPolicy(
    name="readings",
    stack="Flask/SQLite gateway (norvi-esp32-gateway-mqtt)",
    client_id="its MAC address, upper case with colons: the same as its topics' id",
    publish=("/readings/gateway/%c", "/readings/temperature/%c"),
    read=(),
    id_topics=("/readings/gateway/{id}", "/readings/temperature/{id}"),
    can_spoof=(
        "A client that connects with another gateway's MAC address as its client id can publish "
        "that gateway's readings (the stack has no credentials: nothing on the wire tells the "
        "two apart); its connection also disconnects that gateway until the gateway's next "
        "30 s cycle takes the id back."
    ),
    cannot_spoof=(
        "On one connection it can publish gateway readings only for the id it connected with, "
        "and this stack reads nothing. " + _NEVER
    ),
)

FASTAPI = LegacyPolicy(
    name="fastapi",
    stack="FastAPI/RabbitMQ/React (rnr-iot, IoT_Platform_Node.ino)",
    client_id="ESP32-<MAC without colons>, not its topics' id (the bare MAC), so no %c binding",
    publish=("devices/+/data", "devices/+/status"),
    read=("devices/+/commands", "devices/+/commands/last"),
    id_topics=("devices/{id}/#",),
    login=FASTAPI_FIRMWARE_USERNAME,
    can_spoof=(
        "A client that logs in with the stack's compiled-in username and password (public in "
        "its firmware) can publish data and status (`online`/`offline`) for any device id "
        "under `devices/` that has no fieldhub credentials, and read any such device's "
        "commands and retained `/commands/last` command: the firmware's client id is not its "
        "topic id, so Mosquitto cannot bind the two."
    ),
    cannot_spoof=(
        "Without that login it can do nothing of this stack (another username is refused at "
        "connect; an anonymous client gets none of these topics). It can never publish "
        "`devices/+/telemetry`, `devices/+/commands` or `/commands/last`. " + _NEVER
    ),
)

IOT_NODE = LegacyPolicy(
    name="iot-node",
    stack="Raspberry Pi/Mosquitto design (ECE-26.1-Winter-River)",
    client_id="node_<id> (fieldhub's simulator; the design has no firmware), not its topic id",
    publish=("iot/node/+/telemetry", "iot/node/+/status"),
    read=("iot/node/+/command",),
    id_topics=("iot/node/{id}/#",),
    can_spoof=(
        "Any anonymous client can publish telemetry and status (`online`/`offline`, readings) "
        "for any iot-node id that has no fieldhub credentials, and read any such node's "
        "commands: the stack's client id (`node_01`) is not its topic id (`01`), so Mosquitto "
        "cannot bind the two."
    ),
    cannot_spoof=("It can never publish `iot/node/+/command`. " + _NEVER),
)

SENSOR = LegacyPolicy(
    name="sensor",
    stack="Go/ClickHouse window control (ji-just-ji/ESP32)",
    client_id="its device id: the same as its topics' id",
    publish=("sensor/%c/temperature", "sensor/%c/humidity", "sensor/%c/audio"),
    read=("window/%c/control",),
    id_topics=("sensor/{id}/#", "window/{id}/#"),
    can_spoof=(
        "A client that connects with another device's id as its client id can publish that "
        "device's temperature, humidity and audio and read its window orders (the stack has no "
        "credentials); its connection also disconnects that device."
    ),
    cannot_spoof=(
        "On one connection it can publish sensor readings and read window orders only for the "
        "id it connected with. It can never publish a window order (`window/+/control`, "
        "fieldhub's command) nor an ML request (`ml/inference/request/+`). " + _NEVER
    ),
)

LEGACY_POLICIES: Mapping[str, LegacyPolicy] = MappingProxyType(
    {policy.name: policy for policy in (READINGS, FASTAPI, IOT_NODE, SENSOR)}
)


def select_legacy_policies(names: Iterable[str]) -> tuple[LegacyPolicy, ...]:
    """The policies named, in order; ValueError naming the choices for an unknown one."""
    chosen = []
    for name in names:
        try:
            chosen.append(LEGACY_POLICIES[name])
        except KeyError:
            known = ", ".join(sorted(LEGACY_POLICIES))
            raise ValueError(f"unknown legacy policy {name!r}; known: {known}") from None
    return tuple(chosen)
