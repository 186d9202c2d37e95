"""Access control against the real Mosquitto 2.0.11: credentials, ACLs, reload, revocation.

Mosquitto drops an unauthorised PUBLISH silently for MQTT 3.1.1 (it still sends PUBACK), and the
ACL file grants every SUBSCRIBE (SUBACK with the QoS asked for, never 0x80) and filters each
message at delivery. So every refusal here is shown by what a subscriber that may see
everything (the ingest credential) or the subscriber itself receives: a sentinel message sent
after the refused ones on the same connection arrives, and the refused ones never did
(Mosquitto keeps one publisher's messages in order for one subscriber).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from broker.clients import Client, connect, settle, wait_received
from broker.probes import wait_until
from fieldhub.broker import (
    BrokerAccess,
    BrokerStartError,
    DeviceCredential,
    InternalClient,
    LegacyListener,
    MosquittoProcess,
    Role,
    TlsListener,
    hash_password,
)
from fieldhub.broker.access import INGEST_READ, fastapi_firmware_login
from fieldhub.broker.legacy import FASTAPI_FIRMWARE_PASSWORD, LEGACY_POLICIES
from fieldhub.net import free_port

MAC = "3C:E9:0E:72:12:4C"
MAC_USERNAME = "3CE90E72124C"


@dataclass
class Secured:
    broker: MosquittoProcess
    legacy_port: int
    passwords: dict[str, str]
    access: BrokerAccess
    ingest_user: str
    commands_user: str

    def login(self, username: str, **kwargs: object) -> Client:
        return connect(
            self.broker.host,
            self.broker.port,
            username=username,
            password=self.passwords[username],
            **kwargs,  # type: ignore[arg-type]
        )

    def legacy(self, **kwargs: object) -> Client:
        return connect(self.broker.host, self.legacy_port, **kwargs)  # type: ignore[arg-type]


def make_access(passwords: dict[str, str], devices: tuple[str, ...]) -> BrokerAccess:
    ingest = next(u for u in passwords if u.startswith("fieldhub-ingest-"))
    commands = next(u for u in passwords if u.startswith("fieldhub-commands-"))
    return BrokerAccess(
        internal=(
            InternalClient(ingest, hash_password(passwords[ingest]), Role.INGEST),
            InternalClient(commands, hash_password(passwords[commands]), Role.COMMANDS),
        ),
        devices=tuple(
            DeviceCredential(d, hash_password(passwords[d.replace(":", "")])) for d in devices
        ),
        legacy=tuple(LEGACY_POLICIES.values()),
        legacy_logins=(fastapi_firmware_login(),),
    )


def start_secured(
    data_dir: Path,
    devices: tuple[str, ...] = ("dev-a", "dev-b", MAC, "win-1"),
    *,
    host: str = "127.0.0.1",
    tls: TlsListener | None = None,
) -> Secured:
    passwords = {
        f"fieldhub-ingest-{secrets.token_hex(8)}": secrets.token_urlsafe(32),
        f"fieldhub-commands-{secrets.token_hex(8)}": secrets.token_urlsafe(32),
    }
    for device in devices:
        passwords[device.replace(":", "")] = secrets.token_urlsafe(32)
    access = make_access(passwords, devices)
    for attempt in range(3):
        legacy_port = free_port()
        broker = MosquittoProcess(
            data_dir=data_dir,
            port=free_port(),
            host=host,
            access=access,
            legacy=LegacyListener(host, legacy_port),
            tls=None if tls is None else replace(tls, port=free_port()),
        )
        try:
            broker.start()
        except BrokerStartError:
            if attempt == 2:
                raise
            continue
        break
    ingest, commands = (c.username for c in access.internal)
    return Secured(broker, legacy_port, passwords, access, ingest, commands)


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    # A data dir the broker's unprivileged user can reach (pytest's tmp root is 0700).
    data_dir = Path(tempfile.mkdtemp(prefix="fieldhub-access-"))
    data_dir.chmod(0o755)
    setup = start_secured(data_dir)
    yield setup
    setup.broker.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def ingest(secured: Secured) -> Iterator[Client]:
    """The ingest credential, subscribed to every profile's topics."""
    client = secured.login(secured.ingest_user)
    assert client.subscribe(*INGEST_READ) == [1] * len(INGEST_READ)
    yield client
    client.stop()


@pytest.fixture
def commands(secured: Secured) -> Iterator[Client]:
    client = secured.login(secured.commands_user)
    yield client
    client.stop()


def test_files_are_private_and_hold_no_password(secured: Secured) -> None:
    broker = secured.broker
    owner = os.getuid() if os.geteuid() != 0 else pwd.getpwnam(broker.run_as).pw_uid
    files = sorted(broker.process.access_dir.iterdir())
    assert [f.name for f in files] == ["acl", "legacy-acl", "legacy-passwd", "passwd"]
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path
        assert path.stat().st_uid == owner, path
    assert broker.process.access_dir.stat().st_mode & 0o777 == 0o700
    generated = "".join(p.read_text() for p in [*files, broker.config_path])
    for password in [*secured.passwords.values(), FASTAPI_FIRMWARE_PASSWORD]:
        assert password not in generated
    conf = broker.config_path.read_text().splitlines()
    assert "per_listener_settings true" in conf
    assert conf.count("use_username_as_clientid true") == 1
    assert conf.count("allow_anonymous false") == 1
    assert conf.count("allow_anonymous true") == 1  # the legacy listener


def test_main_listener_refuses_anonymous_unknown_and_wrong_password(secured: Secured) -> None:
    host, port = secured.broker.host, secured.broker.port
    connect(host, port, expect=5)
    connect(host, port, username="nobody", password="x", expect=5)
    connect(host, port, username="dev-a", password="wrong", expect=5)
    connect(host, port, username=secured.ingest_user, password="wrong", expect=5)


def test_device_publishes_only_as_itself(secured: Secured, ingest: Client) -> None:
    device = secured.login("dev-a")
    try:
        for topic in (
            "devices/dev-b/telemetry",
            "devices/dev-b/status",
            "devices/dev-b/commands/ack",
            "devices/dev-b/data",
            "devices/dev-a/commands",  # a down-link, even its own
            "devices/dev-a/data",  # the FastAPI stack's topic, not fieldhub firmware's
            "/readings/gateway/dev-a",
            "iot/node/dev-a/telemetry",
            "sensor/dev-a/temperature",
            "window/dev-a/control",
        ):
            device.publish(topic, b'{"forged": 1}')
        for suffix in ("status", "commands/ack", "audio", "ota/status", "telemetry"):
            device.publish(f"devices/dev-a/{suffix}", b'{"own": 1}')
        wait_received(ingest, "devices/dev-a/telemetry", "dev-a's own telemetry")
        assert ingest.topics() == [
            "devices/dev-a/status",
            "devices/dev-a/commands/ack",
            "devices/dev-a/audio",
            "devices/dev-a/ota/status",
            "devices/dev-a/telemetry",
        ]
    finally:
        device.stop()


def test_device_reads_only_its_own_commands(secured: Secured, commands: Client) -> None:
    commands.publish("devices/dev-b/commands/last", b"held for b", retain=True)
    device = secured.login("dev-a")
    try:
        # Granted, not refused with 0x80: Mosquitto 2.0.11's ACL file does not check
        # subscriptions; it filters each message at delivery instead.
        assert device.subscribe("#", "devices/dev-b/commands", "devices/+/commands/last") == [
            1,
            1,
            1,
        ]
        assert device.subscribe("devices/dev-a/commands", "devices/dev-a/ota") == [1, 1]
        commands.publish("devices/dev-b/commands", b"for b")
        commands.publish("devices/dev-b/ota", b"for b")
        commands.publish("devices/dev-a/commands", b"for a")
        wait_received(device, "devices/dev-a/commands", "dev-a's own command")
        settle()
        assert device.topics() == ["devices/dev-a/commands"]
    finally:
        device.stop()
        commands.publish("devices/dev-b/commands/last", b"", retain=True)


def test_internal_clients_publish_and_read_only_their_part(
    secured: Secured, ingest: Client, commands: Client
) -> None:
    commands.publish("devices/dev-a/commands/ack", b'{"id": "x", "status": "ok"}')
    commands.publish("devices/dev-a/telemetry", b"{}")
    ingest.publish("devices/dev-a/commands", b"{}")
    ingest.publish("devices/dev-a/telemetry", b"{}")
    for topic in ("devices/dev-a/commands", "iot/node/01/command", "window/01/control"):
        commands.publish(topic, b"{}")
    wait_received(ingest, "window/01/control", "the commands client's window order")
    assert ingest.topics() == [
        "devices/dev-a/commands",
        "iot/node/01/command",
        "window/01/control",
    ]


def test_no_client_takes_an_internal_client_id(secured: Secured, ingest: Client) -> None:
    """use_username_as_clientid: a device asking for the ingest client id gets its own."""
    for clean in (True, False):
        device = secured.login("dev-a", client_id=secured.ingest_user, clean_session=clean)
        try:
            device.publish("devices/dev-a/telemetry", b"{}")
        finally:
            device.stop()
    connect(
        secured.broker.host,
        secured.broker.port,
        username="dev-a",
        password="wrong",
        client_id=secured.ingest_user,
        expect=5,
    )
    wait_until(lambda: len(ingest.topics()) == 2, "both telemetry messages")
    assert not ingest.disconnected.is_set()


def test_mac_device_logs_in_with_the_bare_mac(secured: Secured, ingest: Client) -> None:
    device = secured.login(MAC_USERNAME)
    try:
        device.publish(f"devices/{MAC}/telemetry", b"{}")  # ':' is not its username's spelling
        device.publish(f"devices/{MAC_USERNAME}/telemetry", b"{}")
        wait_received(ingest, f"devices/{MAC_USERNAME}/telemetry", "the MAC device's telemetry")
        assert ingest.topics() == [f"devices/{MAC_USERNAME}/telemetry"]
    finally:
        device.stop()


# --- the legacy listener ----------------------------------------------------------------------


def test_legacy_listener_refuses_other_usernames(secured: Secured) -> None:
    secured.legacy(username="dev-a", password=secured.passwords["dev-a"], expect=5)
    secured.legacy(username="rnr_iot_user", password="wrong", expect=5)
    secured.legacy(username="anyone", password="x", expect=5)


def test_legacy_readings_gateway(secured: Secured, ingest: Client) -> None:
    own = "AA:BB:CC:DD:EE:01"
    gateway = secured.legacy(client_id=own)
    try:
        for topic in (
            "/readings/gateway/AA:BB:CC:DD:EE:02",  # another gateway
            "/readings/temperature/AA:BB:CC:DD:EE:02",
            f"devices/{own}/commands/ack",
            f"devices/{own}/telemetry",
            "#",
        ):
            if topic != "#":
                gateway.publish(topic, b"{}")
        assert gateway.subscribe("#") == [1]
        gateway.publish(f"/readings/temperature/{own}", b'{"temperature": 21.4}', retain=True)
        gateway.publish(f"/readings/gateway/{own}", b'{"rssi": 65}', retain=True)
        wait_received(ingest, f"/readings/gateway/{own}", "the gateway's own reading")
        assert ingest.topics() == [f"/readings/temperature/{own}", f"/readings/gateway/{own}"]
        assert gateway.topics() == []  # it reads nothing, not even its own topics
    finally:
        gateway.stop()
        _clear_retained(secured, ingest, own)


def _clear_retained(secured: Secured, ingest: Client, mac: str) -> None:
    gateway = secured.legacy(client_id=mac)
    for kind in ("gateway", "temperature"):
        gateway.publish(f"/readings/{kind}/{mac}", b"", retain=True)
    gateway.stop()


@pytest.mark.parametrize("spelling", [MAC, MAC.lower(), MAC_USERNAME, "3C-E9-0E-72-12-4C"])
def test_legacy_client_cannot_use_a_credentialed_device_id(
    secured: Secured, ingest: Client, spelling: str
) -> None:
    """A gateway connecting as a credentialed device's MAC publishes nothing under it."""
    spoofer = secured.legacy(client_id=spelling)
    try:
        spoofer.publish(f"/readings/gateway/{spelling}", b'{"rssi": 1}')
        spoofer.publish(f"sensor/{spelling}/temperature", b"99")
    finally:
        spoofer.stop()
    sensor = secured.legacy(client_id="win-9")
    try:
        sensor.publish("sensor/win-9/temperature", b"20")
        wait_received(ingest, "sensor/win-9/temperature", "the sentinel")
        assert ingest.topics() == ["sensor/win-9/temperature"]
    finally:
        sensor.stop()


def test_legacy_fastapi_node(secured: Secured, ingest: Client, commands: Client) -> None:
    node_id = "AABBCCDDEE02"
    node = secured.legacy(
        username="rnr_iot_user",
        password=FASTAPI_FIRMWARE_PASSWORD,
        client_id=f"ESP32-{node_id}",
        clean_session=False,
        will=(f"devices/{node_id}/status", b"offline"),
    )
    anonymous = secured.legacy(client_id="ESP32-AABBCCDDEE03")
    try:
        assert node.subscribe(f"devices/{node_id}/commands", f"devices/{node_id}/commands/last")
        assert node.subscribe("#", "devices/dev-a/commands", f"devices/{MAC_USERNAME}/commands")
        anonymous.publish("devices/AABBCCDDEE03/data", b"{}")  # only with the firmware's login
        for topic in (
            f"devices/{node_id}/commands/ack",
            f"devices/{node_id}/telemetry",
            f"devices/{node_id}/commands",
            "devices/dev-a/data",  # a credentialed device
            f"devices/{MAC_USERNAME}/data",
            f"devices/{MAC_USERNAME.lower()}/status",
            "iot/node/01/telemetry",
        ):
            node.publish(topic, b"{}")
        node.publish(f"devices/{node_id}/data", b'{"type": "heartbeat"}')
        wait_received(ingest, f"devices/{node_id}/data", "the node's data")
        assert ingest.topics() == [f"devices/{node_id}/data"]

        commands.publish("devices/dev-a/commands", b"{}")
        commands.publish(f"devices/{MAC_USERNAME}/commands", b"{}")
        commands.publish(f"devices/{node_id}/commands/last", b'{"action": "X"}', retain=True)
        commands.publish(f"devices/{node_id}/commands", b'{"action": "STATUS_REQUEST"}')
        wait_received(node, f"devices/{node_id}/commands", "the node's command")
        assert node.topics() == [f"devices/{node_id}/commands/last", f"devices/{node_id}/commands"]

        # Its will (an abrupt end) is allowed: the stack's only status message.
        node.paho.socket().close()
        wait_received(ingest, f"devices/{node_id}/status", "the node's will")
    finally:
        node.paho.loop_stop()
        anonymous.stop()
        commands.publish(f"devices/{node_id}/commands/last", b"", retain=True)
        # Only the node's own login may clear its retained will.
        cleaner = secured.legacy(username="rnr_iot_user", password=FASTAPI_FIRMWARE_PASSWORD)
        cleaner.publish(f"devices/{node_id}/status", b"", retain=True)
        cleaner.stop()


def test_legacy_iot_node(secured: Secured, ingest: Client, commands: Client) -> None:
    node = secured.legacy(client_id="node_01")
    try:
        assert node.subscribe("iot/node/01/command", "#") == [1, 1]
        for topic in (
            "iot/node/01/command",
            "iot/node/dev-a/telemetry",  # a credentialed device's id
            "iot/node/win-1/status",
            "devices/01/telemetry",
            "devices/01/commands/ack",
        ):
            node.publish(topic, b"{}")
        node.publish("iot/node/01/status", b'{"status": "online"}')
        node.publish("iot/node/01/telemetry", b'{"sensors": {"t": 1}}')
        wait_received(ingest, "iot/node/01/telemetry", "the node's telemetry")
        assert ingest.topics() == ["iot/node/01/status", "iot/node/01/telemetry"]

        commands.publish("iot/node/dev-a/command", b"{}")
        commands.publish("devices/dev-a/commands", b"{}")
        commands.publish("iot/node/01/command", b'{"command": "set_led"}')
        wait_received(node, "iot/node/01/command", "the node's command")
        assert node.topics() == ["iot/node/01/command"]
    finally:
        node.stop()


def test_legacy_window_sensor(secured: Secured, ingest: Client, commands: Client) -> None:
    sensor = secured.legacy(client_id="win-7")
    try:
        assert sensor.subscribe("window/win-7/control", "window/+/control") == [1, 1]
        for topic in (
            "sensor/win-8/temperature",  # another device
            "sensor/win-1/temperature",  # a credentialed device
            "window/win-7/control",  # its own order: fieldhub's command
            "ml/inference/request/win-7",
            "devices/win-7/commands/ack",
        ):
            sensor.publish(topic, b"1")
        for quantity in ("humidity", "audio", "temperature"):
            sensor.publish(f"sensor/win-7/{quantity}", b"1")
        wait_received(ingest, "sensor/win-7/temperature", "the sensor's temperature")
        assert ingest.topics() == [
            f"sensor/win-7/{q}" for q in ("humidity", "audio", "temperature")
        ]

        commands.publish("window/win-8/control", b'{"position": 10}')
        commands.publish("window/win-7/control", b'{"position": 50}')
        wait_received(sensor, "window/win-7/control", "the sensor's order")
        assert sensor.topics() == ["window/win-7/control"]
    finally:
        sensor.stop()


def test_legacy_wildcard_subscriber_sees_nothing_of_devices(
    secured: Secured, ingest: Client, commands: Client
) -> None:
    snoop = secured.legacy(client_id="snoop")
    device = secured.login("dev-a")
    try:
        assert snoop.subscribe("#", "devices/+/commands/ack", "+/+/+") == [1, 1, 1]
        device.publish("devices/dev-a/commands/ack", b'{"id": "c1", "status": "ok"}')
        device.publish("devices/dev-a/telemetry", b"{}")
        commands.publish("devices/dev-a/commands", b"{}")
        commands.publish("devices/AABBCCDDEE09/commands", b"{}")  # readable only by FastAPI
        wait_received(ingest, "devices/AABBCCDDEE09/commands", "the last message")
        settle()
        assert snoop.topics() == []
    finally:
        snoop.stop()
        device.stop()


# --- reload and revocation, on a broker of their own --------------------------------------------


def test_revoked_device_is_disconnected_within_2_s_and_refused(reachable_dir: Path) -> None:
    setup = start_secured(reachable_dir, devices=("dev-a", "dev-b"))
    try:
        revoked = setup.login("dev-a")
        kept = setup.login("dev-b")
        # dev-c is added by the same reload that revokes dev-a.
        setup.passwords["dev-c"] = secrets.token_urlsafe(32)
        access = make_access(setup.passwords, ("dev-b", "dev-c"))
        started = time.monotonic()
        setup.broker.reload(access)
        revoked.disconnected.wait(2.0)
        assert revoked.disconnected.is_set()
        assert time.monotonic() - started < 2.0
        assert not kept.disconnected.is_set()
        connect(
            setup.broker.host,
            setup.broker.port,
            username="dev-a",
            password=setup.passwords["dev-a"],
            expect=5,
        )
        setup.login("dev-c").stop()
        kept.stop()
        assert "Reloading config." in setup.broker.log_path.read_text()
    finally:
        setup.broker.stop()


def test_reload_refuses_unsafe_input_and_writes_nothing(reachable_dir: Path) -> None:
    setup = start_secured(reachable_dir, devices=("dev-a",))
    try:
        before = (setup.broker.process.access_dir / "passwd").read_bytes()
        bad = replace(setup.access, devices=(DeviceCredential("dev-a", "plaintext-password"),))
        with pytest.raises(ValueError, match="not a Mosquitto"):
            setup.broker.reload(bad)
        assert (setup.broker.process.access_dir / "passwd").read_bytes() == before
        setup.login("dev-a").stop()
    finally:
        setup.broker.stop()


def _non_loopback_ipv4() -> str | None:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    for address in out.stdout.split():
        if "." in address and not address.startswith("127."):
            return address
    return None


def test_device_on_a_non_loopback_address(reachable_dir: Path) -> None:
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    setup = start_secured(reachable_dir, devices=("dev-a",), host=address)
    try:
        device = setup.login("dev-a")
        assert setup.broker.host == address
        device.stop()
        connect(address, setup.broker.port, username="dev-a", password="wrong", expect=5)
        connect(address, setup.broker.port, expect=5)
    finally:
        setup.broker.stop()


def test_tls_listener_admits_devices_with_credentials_only(
    reachable_dir: Path, tmp_path: Path
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)  # readable by us only: the broker reads its own copy
    setup = start_secured(
        reachable_dir, devices=("dev-a",), tls=TlsListener(1, certfile=cert, keyfile=key)
    )
    try:
        tls = setup.broker.process.tls
        assert tls is not None
        port = tls.port
        good = connect(
            "127.0.0.1", port, username="dev-a", password=setup.passwords["dev-a"], tls_ca=cert
        )
        good.stop()
        connect("127.0.0.1", port, username="dev-a", password="wrong", tls_ca=cert, expect=5)
        connect("127.0.0.1", port, tls_ca=cert, expect=5)
    finally:
        setup.broker.stop()
