"""The legacy listener end to end: a real `fieldhub up` with authentication on and its embedded
Mosquitto's legacy listener (`--mqtt-legacy-port`), each earlier stack's traffic replayed through
it (the frames of tests/integration/test_stack_replays.py), and the spoofing each stack's policy
(fieldhub/broker/legacy.py) says it cannot do, shown refused by what fieldhub stores and what
other clients receive.

Mosquitto 2.0.11 with ACL files grants every SUBSCRIBE and drops an unauthorised PUBLISH
silently (PUBACK, never delivered), so nothing here is proven by a refusal code: every "refused"
is an absence checked after a positive control, a permitted message sent after the forbidden one
and seen arriving, which the forbidden one would have preceded (one broker thread, one ingest
session: delivery follows the order the broker acknowledged the publishes in).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from broker.clients import Client, connect, settle, wait_received
from fieldhub.broker.legacy import FASTAPI, FASTAPI_FIRMWARE_PASSWORD
from fieldhub.mqtt.publisher import Will
from fieldhub.net import free_port
from fieldhub.protocol.timestamps import US_PER_S, format_us
from integration.test_stack_replays import (
    device,
    device_client,
    fastapi_frames,
    fastapi_heartbeat,
    flask_gateway_frames,
    iot_node_frames,
    metric_names,
    random_mac,
    readings,
    replay,
    window_control_frames,
)
from support.commands import get_command, wait_device, wait_state
from support.fieldhub_process import FieldhubProcess, wait_until

HOST = "127.0.0.1"
FASTAPI_LOGIN = FASTAPI.login or "rnr_iot_user"
# Long enough that no command of these tests times out while a forgery is being tried.
COMMAND_TIMEOUT_S = 600.0
START_ATTEMPTS = 3


@dataclass
class Hub:
    """fieldhub with auth on, and where its broker's main and legacy listeners are."""

    fh: FieldhubProcess
    legacy_port: int

    @property
    def main_port(self) -> int:
        assert self.fh.mqtt_port is not None
        return self.fh.mqtt_port

    @property
    def legacy_url(self) -> str:
        return f"mqtt://{HOST}:{self.legacy_port}"

    @property
    def fastapi_url(self) -> str:
        """The legacy listener with the FastAPI firmware's compiled-in login."""
        password = quote(FASTAPI_FIRMWARE_PASSWORD, safe="")
        return f"mqtt://{FASTAPI_LOGIN}:{password}@{HOST}:{self.legacy_port}"

    def legacy(self, **kwargs: Any) -> Client:
        """A client on the legacy listener (anonymous unless given a username)."""
        return connect(HOST, self.legacy_port, **kwargs)

    def fastapi(self, client_id: str) -> Client:
        """A client on the legacy listener with the FastAPI firmware's login."""
        return self.legacy(
            username=FASTAPI_LOGIN, password=FASTAPI_FIRMWARE_PASSWORD, client_id=client_id
        )

    def command(self, device_id: str, body: dict[str, Any]) -> str:
        """Send a command as the admin; its id."""
        response = httpx.post(
            f"{self.fh.base_url}/api/v1/devices/{device_id}/commands",
            json={"timeout_s": COMMAND_TIMEOUT_S, **body},
            headers=self.fh.headers,
            timeout=10.0,
        )
        assert response.status_code == 201, response.text
        command_id: str = response.json()["id"]
        return command_id


def start_hub(tmp_path_factory: pytest.TempPathFactory) -> Hub:
    """fieldhub with auth on and a legacy listener. FieldhubProcess retries its own ports when
    one was taken meanwhile, not this one: a fresh port (and data dir) per attempt."""
    for attempt in range(1, START_ATTEMPTS + 1):
        legacy_port = free_port()
        fh = FieldhubProcess(
            data_dir=tmp_path_factory.mktemp("legacy-listener"),
            auth=True,
            extra_args=["--mqtt-legacy-port", str(legacy_port)],
        )
        try:
            fh.start()
        except AssertionError as error:
            if attempt == START_ATTEMPTS or "address already in use" not in str(error).lower():
                raise
            continue
        return Hub(fh, legacy_port)
    raise AssertionError("unreachable")  # the loop returns or raises


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    started = start_hub(tmp_path_factory)
    try:
        yield started
    finally:
        started.fh.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bare(mac: str) -> str:
    """A MAC as the FastAPI stack (and a credentialed device's username) spells it."""
    return mac.replace(":", "")


def dashed(mac: str) -> str:
    return mac.lower().replace(":", "-")


def values(fh: FieldhubProcess, device_id: str, metric: str) -> list[float]:
    return [value for _, value in readings(fh, device_id, metric)]


def wait_values(fh: FieldhubProcess, device_id: str, metric: str, expected: list[float]) -> None:
    wait_until(
        lambda: values(fh, device_id, metric) == expected,
        what=f"{device_id}'s {metric} = {expected}",
    )


def connect_device(port: int, username: str, password: str) -> Client:
    """A device with credentials on the main listener, subscribed to its commands as its
    firmware is. Its client id does not matter: the broker replaces it with the username."""
    client = connect(HOST, port, username=username, password=password, client_id=unique("any"))
    client.subscribe(f"devices/{username}/commands")
    return client


@dataclass
class CredentialedDevice:
    """A native device with fieldhub credentials, connected on the main listener."""

    mac: str  # its device id
    username: str  # the bare MAC: its username, client id and topics' id
    password: str
    client: Client

    def reconnect(self, port: int) -> None:
        self.client.stop()
        self.client = connect_device(port, self.username, self.password)

    @property
    def ack_topic(self) -> str:
        return f"devices/{self.username}/commands/ack"

    def telemetry(self, temperature: float) -> None:
        self.client.publish(
            f"devices/{self.username}/telemetry", json.dumps({"temperature": temperature}).encode()
        )


@pytest.fixture
def credentialed(hub: Hub) -> Iterator[CredentialedDevice]:
    """A MAC-named device provisioned through the admin API (so each legacy stack can name it
    in its own spelling), connected with its secret, reporting 20.5 and online."""
    mac = random_mac()
    response = httpx.post(
        f"{hub.fh.base_url}/api/v1/devices/{mac}/credentials", headers=hub.fh.headers, timeout=10
    )
    assert response.status_code == 201, response.text
    issued = response.json()
    assert issued["username"] == bare(mac)
    username, password = issued["username"], issued["password"]
    found = CredentialedDevice(
        mac, username, password, connect_device(hub.main_port, username, password)
    )
    try:
        found.telemetry(20.5)
        wait_device(hub.fh, mac, presence="online", command_format="native")
        yield found
    finally:
        found.client.stop()


# --- the main listener ---------------------------------------------------------------------------


def test_main_listener_refuses_anonymous_clients_while_the_legacy_listener_is_on(hub: Hub) -> None:
    connect(HOST, hub.main_port, expect=5)
    connect(HOST, hub.main_port, client_id=random_mac(), expect=5)  # a gateway, as it connects
    # The FastAPI firmware's login is the legacy listener's only: the main one refuses it.
    connect(
        HOST,
        hub.main_port,
        username=FASTAPI_LOGIN,
        password=FASTAPI_FIRMWARE_PASSWORD,
        expect=5,
    )
    hub.legacy().stop()  # while the legacy listener takes anonymous clients


# --- each stack's replay under its policy --------------------------------------------------------


def test_flask_gateway_replay_on_the_legacy_listener(hub: Hub) -> None:
    """A fresh MQTT v5 connection per retained reading, client id = the MAC (= its topics' id)."""
    fh, mac = hub.fh, random_mac()
    for frame in flask_gateway_frames(mac, temperature_id=mac):
        client = device_client(hub.legacy_url, mac, protocol=5)
        replay(client, [frame])
        client.stop(disconnect=False)

    wait_until(lambda: len(readings(fh, mac, "uptime_ms")) == 3, what="three uptimes")
    found = device(fh, bare(mac))
    assert found is not None
    assert (found["id"], found["profile"], found["presence"]) == (mac, "readings", "online")
    assert found["attributes"] == {"macAddress": mac}
    assert values(fh, mac, "rssi_percent") == [65.0, 63.0]
    assert values(fh, mac, "temperature") == [21.4]
    assert sorted(values(fh, mac, "uptime_ms")) == [93_387, 123_391, 123_400]


def test_fastapi_replay_with_the_compiled_in_login(hub: Hub) -> None:
    """Client id ESP32-<MAC>, the firmware's login, everything on devices/<MAC>/data, the
    retained `offline` will on devices/<MAC>/status."""
    fh, mac = hub.fh, random_mac()
    node = bare(mac)
    client = device_client(
        hub.fastapi_url,
        f"ESP32-{node}",
        will=Will(topic=f"devices/{node}/status", payload=b"offline", qos=1, retain=True),
    )
    replay(client, fastapi_frames(node, time.time()))

    wait_until(lambda: len(readings(fh, mac, "uptime_ms")) == 4, what="four uptimes")
    wait_until(lambda: len(readings(fh, mac, "temperature")) == 2, what="both data")
    found = device(fh, mac)
    assert found is not None
    assert (found["id"], found["profile"], found["presence"]) == (mac, "native", "online")
    assert found["attributes"]["node_id"] == node
    assert values(fh, mac, "uptime_ms") == [6_004, 9_012, 12_015, 12_480]
    assert values(fh, mac, "temperature") == [20.1, 20.2]
    assert values(fh, mac, "servo_angle") == [90.0, 90.0, 90.0, 135.0]
    assert fh.get("/api/v1/dead-letters", device=mac).json()["data"] == []

    client.stop(disconnect=False)  # power lost: its will is permitted too
    wait_until(lambda: (device(fh, mac) or {}).get("presence") == "offline", what="the will")


def test_iot_node_replay_on_the_legacy_listener(hub: Hub) -> None:
    """Telemetry and retained health stored; the replay's last frame, the management utility's
    command on iot/node/<id>/command, is not the node's to publish: a subscriber to that topic
    (which the policy lets read) receives fieldhub's command only."""
    fh = hub.fh
    node = f"node_{uuid.uuid4().hex[:6]}"
    node_s = int(time.time()) - 20
    frames = iot_node_frames(node, node_s)
    assert frames[-1].topic == f"iot/node/{node}/command"
    listener = hub.legacy(client_id=unique("node_listener"))
    try:
        assert listener.subscribe(f"iot/node/{node}/command") == [1]
        client = device_client(hub.legacy_url, node)
        try:
            replay(client, frames)
        finally:
            client.stop()

        wait_until(lambda: len(readings(fh, node, "uptime_s")) == 3, what="three uptimes")
        found = device(fh, node)
        assert found is not None
        assert (found["profile"], found["presence"]) == ("iot-node", "online")
        assert found["attributes"] == {"node_id": node}
        assert readings(fh, node, "temperature") == [
            (format_us((node_s + step * 10) * US_PER_S), 22.5 + step) for step in range(2)
        ]
        assert metric_names(fh, node) == {"temperature", "humidity", "rssi", "uptime_s"}

        # Positive control: fieldhub's own command, sent after the forged one was acknowledged.
        command_id = hub.command(
            node, {"name": "set_led", "params": {"state": "on", "brightness": 7}}
        )
        wait_received(listener, f"iot/node/{node}/command", "fieldhub's command")
        settle()
        [(_, payload)] = listener.received
        assert json.loads(payload)["params"] == {"state": "on", "brightness": 7}
        assert get_command(fh, node, command_id)["state"] == "sent"
    finally:
        listener.stop()


def test_window_control_replay_on_the_legacy_listener(hub: Hub) -> None:
    """Readings and the audio level stored; the replay's inference request and window order are
    the old backend's and ML service's, not the sensor's: its client publishes neither."""
    fh = hub.fh
    sensor = unique("esp32")
    frames = window_control_frames(sensor, 6_000)
    assert [f.topic for f in frames[-2:]] == [
        f"ml/inference/request/{sensor}",
        f"window/{sensor}/control",
    ]
    client = device_client(hub.legacy_url, sensor)
    try:
        replay(client, frames)
        # Positive control: a reading after the window order it would have followed.
        client.publish(f"sensor/{sensor}/temperature", b"26.5", qos=1).result(10)
    finally:
        client.stop()

    wait_values(fh, sensor, "temperature", [25.5, 26.5])
    found = device(fh, sensor)
    assert found is not None
    assert (found["profile"], found["presence"]) == ("sensor", "online")
    assert values(fh, sensor, "humidity") == [61.0]
    assert len(readings(fh, sensor, "sound_volume")) == 1
    assert metric_names(fh, sensor) == {"temperature", "humidity", "sound_volume"}
    assert readings(fh, sensor, "window_position") == []


# --- publishing under another id, where the policy binds the client id (%c) ---------------------


def test_gateway_publishes_only_under_its_own_mac(hub: Hub) -> None:
    fh, own, other = hub.fh, random_mac(), random_mac()
    gateway = hub.legacy(client_id=own)
    try:
        for frame in flask_gateway_frames(other, temperature_id=other):
            gateway.publish(frame.topic, frame.payload)
        gateway.publish(f"/readings/gateway/{dashed(other)}", b'{"rssi": 40}')
        gateway.publish(f"/readings/gateway/{own}", b'{"rssi":65}')
    finally:
        gateway.stop()
    wait_values(fh, own, "rssi_percent", [65.0])
    assert device(fh, other) is None


def test_window_sensor_publishes_and_reads_only_under_its_own_id(hub: Hub) -> None:
    fh, own, other = hub.fh, unique("win"), unique("win")
    neighbour = hub.legacy(client_id=other)
    sensor = hub.legacy(client_id=own)
    try:
        neighbour.publish(f"sensor/{other}/temperature", b"10")
        wait_values(fh, other, "temperature", [10.0])

        # Its grants are window/%c/control to read: `window/+/control` is granted as a
        # SUBSCRIBE (Mosquitto does not check those) but delivers only its own orders.
        assert sensor.subscribe("window/+/control") == [1]
        control = {"device_id": other, "timestamp": time.time(), "position": 99, "confidence": 1}
        for topic, payload in (
            (f"sensor/{other}/temperature", b"99"),
            (f"sensor/{other}/humidity", b"99"),
            (f"window/{other}/control", json.dumps(control).encode()),
            (f"ml/inference/request/{other}", b'{"temperature": 99}'),
        ):
            sensor.publish(topic, payload)
        sensor.publish(f"sensor/{own}/temperature", b"20")
        wait_values(fh, own, "temperature", [20.0])
        assert values(fh, other, "temperature") == [10.0]
        assert metric_names(fh, other) == {"temperature"}

        # fieldhub's order to the neighbour goes out first, then its order to this sensor.
        first = hub.command(other, {"name": "set_window", "params": {"position": 30}})
        wait_state(fh, other, first, "sent")
        hub.command(own, {"name": "set_window", "params": {"position": 60}})
        wait_received(sensor, f"window/{own}/control", "its own order")
        settle()
        assert sensor.topics() == [f"window/{own}/control"]
    finally:
        sensor.stop()
        neighbour.stop()


# --- what no legacy stack can do to a device with fieldhub credentials ---------------------------


@dataclass
class LegacyClients:
    """One client of each stack on the legacy listener, each with a permitted up-link."""

    gateway_mac: str
    fastapi_mac: str
    iot_node: str
    sensor: str
    gateway: Client
    fastapi: Client
    node: Client
    window: Client

    def all(self) -> tuple[Client, ...]:
        return (self.gateway, self.fastapi, self.node, self.window)

    def publish_own(self, value: int) -> None:
        """Each one's own reading, `value` as its number."""
        self.gateway.publish(
            f"/readings/gateway/{self.gateway_mac}", f'{{"rssi":{value}}}'.encode()
        )
        self.fastapi.publish(
            f"devices/{bare(self.fastapi_mac)}/data",
            fastapi_heartbeat(bare(self.fastapi_mac), value),
        )
        self.node.publish(
            f"iot/node/{self.iot_node}/telemetry",
            json.dumps({"sensors": {"temperature": value}}).encode(),
        )
        self.window.publish(f"sensor/{self.sensor}/temperature", str(value).encode())

    def wait_own(self, fh: FieldhubProcess, value: int) -> None:
        """Until every reading `value` of `publish_own` is stored."""
        for device_id, metric in (
            (self.gateway_mac, "rssi_percent"),
            (self.fastapi_mac, "uptime_ms"),
            (self.iot_node, "temperature"),
            (self.sensor, "temperature"),
        ):

            def stored(device_id: str = device_id, metric: str = metric) -> bool:
                return float(value) in values(fh, device_id, metric)

            wait_until(stored, what=f"{device_id}'s {metric} {value}")


@pytest.fixture
def legacy_clients(hub: Hub) -> Iterator[LegacyClients]:
    gateway_mac, fastapi_mac = random_mac(), random_mac()
    iot_node, sensor = unique("node"), unique("win")
    clients: list[Client] = []
    try:
        clients.append(hub.legacy(client_id=gateway_mac))
        clients.append(hub.fastapi(f"ESP32-{bare(fastapi_mac)}"))
        clients.append(hub.legacy(client_id=f"node_{iot_node}"))
        clients.append(hub.legacy(client_id=sensor))
        found = LegacyClients(gateway_mac, fastapi_mac, iot_node, sensor, *clients)
        yield found
    finally:
        for client in clients:
            client.stop()


def test_no_legacy_stack_forges_an_ack_for_a_credentialed_device(
    hub: Hub, credentialed: CredentialedDevice, legacy_clients: LegacyClients
) -> None:
    """A command delivered to a device with fieldhub credentials stays `sent` whatever the four
    stacks publish on its ack topic, in every spelling of its id; its own ack then decides it."""
    fh, mac = hub.fh, credentialed.mac
    command_id = hub.command(mac, {"name": "ping"})
    wait_received(credentialed.client, f"devices/{credentialed.username}/commands", "the ping")
    wait_state(fh, mac, command_id, "sent")

    forged = {"id": command_id, "status": "ok", "result": {"forged": True}}
    spellings = (credentialed.username, credentialed.username.lower(), mac)
    # A gateway connecting under the device's own MAC is refused the ack all the same.
    as_device = hub.legacy(client_id=mac)
    try:
        for client in (*legacy_clients.all(), as_device):
            for spelling in spellings:
                client.publish(f"devices/{spelling}/commands/ack", json.dumps(forged).encode())
    finally:
        as_device.stop()
    legacy_clients.publish_own(41)
    legacy_clients.wait_own(fh, 41)
    settle()
    assert get_command(fh, mac, command_id)["state"] == "sent"

    # The device's own ack, published after every forged one, is the one that decides.
    credentialed.client.publish(
        credentialed.ack_topic,
        json.dumps({"id": command_id, "status": "ok", "result": {"pong": 1}}).encode(),
    )
    final = wait_state(fh, mac, command_id, "succeeded")
    assert (final["result"], final["decided_by"]) == ({"pong": 1}, "ack")


def test_no_legacy_stack_publishes_for_a_credentialed_device(
    hub: Hub, credentialed: CredentialedDevice, legacy_clients: LegacyClients
) -> None:
    """Readings, status and telemetry under a credentialed device's id, from each stack and
    under each id spelling it could use (the clients binding %c connect under that id), are
    never stored: the device keeps exactly its own readings and stays online."""
    fh, mac, username = hub.fh, credentialed.mac, credentialed.username
    spellings = (mac, dashed(mac), username, username.lower())
    for spelling in spellings:
        gateway = hub.legacy(client_id=spelling)
        try:
            for frame in flask_gateway_frames(spelling, temperature_id=spelling):
                gateway.publish(frame.topic, frame.payload)
        finally:
            gateway.stop()
        sensor = hub.legacy(client_id=spelling)
        try:
            sensor.publish(f"sensor/{spelling}/temperature", b"99")
            sensor.publish(f"sensor/{spelling}/humidity", b"99")
        finally:
            sensor.stop()
        for frame in fastapi_frames(spelling, time.time()):
            legacy_clients.fastapi.publish(frame.topic, frame.payload)
        for topic, payload in (
            (f"devices/{spelling}/status", b"offline"),
            (f"devices/{spelling}/telemetry", b'{"temperature": 99}'),
            (f"devices/{spelling}/data", b'{"temperature": 99}'),
        ):
            legacy_clients.fastapi.publish(topic, payload)
        for channel in ("telemetry", "status"):
            legacy_clients.node.publish(
                f"iot/node/{spelling}/{channel}", b'{"sensors": {"temperature": 99}}'
            )
    # Positive controls: each stack's own reading, then the device's own. A legacy client that
    # took the device's username as its client id disconnected it (client ids are one namespace
    # across listeners: docs/security.md, residual risks): it reconnects, as its firmware would.
    legacy_clients.publish_own(42)
    legacy_clients.wait_own(fh, 42)
    credentialed.reconnect(hub.main_port)
    credentialed.telemetry(21.5)
    wait_until(lambda: 21.5 in values(fh, mac, "temperature"), what="the device's own 21.5")
    settle()
    assert metric_names(fh, mac) == {"temperature"}
    assert values(fh, mac, "temperature") == [20.5, 21.5]
    found = device(fh, mac)
    assert found is not None
    assert (found["profile"], found["presence"]) == ("native", "online")
    assert found["attributes"] == {}


def test_wildcard_subscribers_receive_only_their_policies_down_links(
    hub: Hub, credentialed: CredentialedDevice, legacy_clients: LegacyClients
) -> None:
    """A `#` subscriber with each stack's identity, while every stack, a credentialed device and
    fieldhub's commands use the broker: none gets an up-link, anything of the credentialed
    device, or a down-link its credential class is not granted.

    The three anonymous stacks cannot be told apart (no credentials; only the `%c`-bound grants
    look at the client id), so every anonymous client holds the union of their grants: a client
    connecting as a gateway reads every iot-node's commands as an iot-node client does. What
    separates stacks on this listener is the FastAPI login against anonymous."""
    fh = hub.fh
    gateway_snoop = hub.legacy(client_id=random_mac())
    fastapi_snoop = hub.fastapi(f"ESP32-{bare(random_mac())}")
    node_snoop = hub.legacy(client_id=unique("node_snoop"))
    sensor_id = unique("win-snoop")
    sensor_snoop = hub.legacy(client_id=sensor_id)
    snoops = (gateway_snoop, fastapi_snoop, node_snoop, sensor_snoop)
    try:
        for snoop in snoops:
            assert snoop.subscribe("#") == [1]  # granted: Mosquitto checks each delivery instead
        sensor_snoop.publish(f"sensor/{sensor_id}/temperature", b"19")  # it exists, to command

        legacy_clients.publish_own(43)
        legacy_clients.wait_own(fh, 43)
        wait_values(fh, sensor_id, "temperature", [19.0])
        mac, username = credentialed.mac, credentialed.username
        credentialed.client.publish(f"devices/{username}/status", b"online")
        credentialed.telemetry(22.5)
        ping = hub.command(mac, {"name": "ping"})
        wait_received(credentialed.client, f"devices/{username}/commands", "the ping")
        credentialed.client.publish(
            credentialed.ack_topic, json.dumps({"id": ping, "status": "ok"}).encode()
        )
        wait_state(fh, mac, ping, "succeeded")
        fastapi = legacy_clients.fastapi_mac
        node, sensor = legacy_clients.iot_node, legacy_clients.sensor
        for device_id, body in (
            (fastapi, {"name": "STATUS_REQUEST"}),
            (node, {"name": "set_led", "params": {"state": "off", "brightness": 0}}),
            (sensor, {"name": "set_window", "params": {"position": 10}}),
        ):
            wait_state(fh, device_id, hub.command(device_id, body), "sent")
        # Positive control, last: an order the sensor snoop may read, its own.
        hub.command(sensor_id, {"name": "set_window", "params": {"position": 20}})
        wait_received(sensor_snoop, f"window/{sensor_id}/control", "the snoop's own order")
        settle()

        # Anonymous: the iot-node policy's `iot/node/+/command` (its documented can_spoof, which
        # every anonymous client shares) and only its own window orders (`window/%c/control`).
        iot_command = f"iot/node/{node}/command"
        assert gateway_snoop.topics() == [iot_command]
        assert node_snoop.topics() == [iot_command]
        assert sensor_snoop.topics() == [iot_command, f"window/{sensor_id}/control"]
        # The FastAPI login: its nodes' commands, not the credentialed device's nor iot-node's.
        fastapi_topics = fastapi_snoop.topics()
        assert fastapi_topics, "the FastAPI node's command"
        assert all(t.startswith(f"devices/{bare(fastapi)}/commands") for t in fastapi_topics)
    finally:
        for snoop in snoops:
            snoop.stop()


# --- the FastAPI stack: its grants need the compiled-in login -----------------------------------


def test_fastapi_policy_needs_the_compiled_in_login(hub: Hub) -> None:
    fh, mac = hub.fh, random_mac()
    node = bare(mac)
    hub.legacy(username=FASTAPI_LOGIN, password="wrong", expect=5)
    hub.legacy(username=FASTAPI_LOGIN, password="", expect=5)
    hub.legacy(username="admin", password=FASTAPI_FIRMWARE_PASSWORD, expect=5)

    anonymous = hub.legacy(client_id=f"ESP32-{node}")
    try:
        for frame in fastapi_frames(node, time.time()):
            anonymous.publish(frame.topic, frame.payload)
        anonymous.publish(f"devices/{node}/status", b"offline", retain=True)
    finally:
        anonymous.stop()
    # Positive control: the same node with its login, after everything above was acknowledged.
    with_login = hub.fastapi(f"ESP32-{node}")
    try:
        with_login.publish(f"devices/{node}/data", fastapi_heartbeat(node, 777))
    finally:
        with_login.stop()
    wait_values(fh, mac, "uptime_ms", [777.0])
    settle()
    assert metric_names(fh, mac) == {"uptime_ms"}
    assert (device(fh, mac) or {}).get("presence") == "online"


def test_fastapi_login_cannot_forge_commands_or_native_telemetry(hub: Hub) -> None:
    """The login may publish data and status for any FastAPI node (its documented can_spoof),
    not a command to one, nor fieldhub firmware's telemetry."""
    fh = hub.fh
    target_mac, forger_mac = random_mac(), random_mac()
    target_id = bare(target_mac)
    target = hub.fastapi(f"ESP32-{target_id}")
    forger = hub.fastapi(f"ESP32-{bare(forger_mac)}")
    try:
        assert target.subscribe(
            f"devices/{target_id}/commands", f"devices/{target_id}/commands/last"
        ) == [1, 1]
        target.publish(f"devices/{target_id}/data", fastapi_heartbeat(target_id, 1_000))
        wait_device(fh, target_mac, command_format="fastapi")

        forger.publish(f"devices/{target_id}/commands", b'{"action": "REBOOT"}')
        forger.publish(f"devices/{target_id}/commands/last", b'{"action": "REBOOT"}', retain=True)
        forger.publish(f"devices/{target_id}/telemetry", b'{"temperature": 99}')
        # Positive controls: the forger's own data, then fieldhub's command to the target.
        forger.publish(
            f"devices/{bare(forger_mac)}/data", fastapi_heartbeat(bare(forger_mac), 2_000)
        )
        wait_values(fh, forger_mac, "uptime_ms", [2_000.0])
        hub.command(target_mac, {"name": "STATUS_REQUEST"})
        wait_received(target, f"devices/{target_id}/commands", "fieldhub's command")
        settle()
        # fieldhub's command only (on /commands, and /commands/last should it leave one there).
        actions = [json.loads(payload)["action"] for _, payload in target.received]
        assert actions, "fieldhub's command"
        assert set(actions) == {"STATUS_REQUEST"}
        assert metric_names(fh, target_mac) == {"uptime_ms"}
    finally:
        target.stop()
        forger.stop()
