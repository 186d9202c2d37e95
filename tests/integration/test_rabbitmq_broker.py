"""`fieldhub up --mqtt-url` against RabbitMQ's MQTT plugin, the FastAPI/RabbitMQ stack's broker.

A private RabbitMQ node (tests/support/rabbitmq.py) is started once for this module's tests; in
CI (CI=true) a missing or broken RabbitMQ fails them, elsewhere a missing one skips them.
What RabbitMQ 3.10 differs in from Mosquitto, and what these tests pin down (docs/brokers.md):
MQTT 3.1.1 only, persistent sessions as durable queues, retained messages only for subscriptions
without wildcards (so fieldhub, which subscribes with wildcards, never gets retained copies).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import pytest

from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.mqtt.publisher import MqttPublisher, Will
from fieldhub.sim import FastApiNode
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import count_metric
from support.rabbitmq import RabbitMQNode, RabbitMQUnavailable, in_ci

# A burst big enough to need many batches and to exceed the plugin's default prefetch (10) many
# times over, small enough to keep this module well under a minute on 2 vCPUs.
BURST_DEVICES = 5
BURST_PER_DEVICE = 600
# Messages that wait on the broker while fieldhub is stopped.
OFFLINE_MESSAGES = 50
# A backlog that takes fieldhub seconds to drain from RabbitMQ, so a kill -9 lands in it. 5,000
# was drained whole between two polls once (batches of thousands commit in one step).
CRASH_BACKLOG = 30_000
# Loopback round trips take milliseconds; these bound how long a broken test hangs.
DEADLINE_S = 20.0
BURST_DEADLINE_S = 60.0


@pytest.fixture(scope="session")
def rabbitmq(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[RabbitMQNode]:
    """One private RabbitMQ node for the session: a fresh node boots in ~10 s here."""
    try:
        node = RabbitMQNode(base_dir=tmp_path_factory.mktemp("rabbitmq"))
    except RabbitMQUnavailable as exc:
        if in_ci():
            pytest.fail(f"{exc}; CI must run the RabbitMQ tests")
        pytest.skip(str(exc))
    node.start()  # RabbitMQStartError (with the node's log tail) fails every test here
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nRabbitMQ {node.nodename} started in {node.startup_s:.1f} s")
    try:
        yield node
    finally:
        node.stop()


FieldhubFactory = Callable[..., FieldhubProcess]


@pytest.fixture
def fieldhub_on_rabbitmq(rabbitmq: RabbitMQNode, tmp_path: Path) -> Iterator[FieldhubFactory]:
    """Start `fieldhub up --mqtt-url <rabbitmq>`; each test's ingest has its own client id.

    Its own client id, because RabbitMQ keeps a persistent session as a durable queue that
    receives every matching message until the session is cleaned: teardown cleans each one, so
    later tests' traffic does not pile up in queues nobody reads.
    """
    client_id = f"fieldhub-ingest-{uuid.uuid4().hex[:8]}"
    started: list[FieldhubProcess] = []

    def start(
        *, data_dir: Path | None = None, env: dict[str, str] | None = None
    ) -> FieldhubProcess:
        fh = FieldhubProcess(
            data_dir=data_dir or tmp_path / "fh",
            mqtt_url=rabbitmq.mqtt_url,
            env={"FIELDHUB_MQTT_CLIENT_ID": client_id, **(env or {})},
        )
        started.append(fh)
        return fh.start()

    yield start
    for fh in started:
        if fh.proc is not None:
            fh.stop()
    forget_session(rabbitmq.mqtt_url, client_id)


def forget_session(url: str, client_id: str) -> None:
    """Connect once with a clean session: RabbitMQ then deletes the session's queue."""
    client = MqttPublisher(endpoint=parse_mqtt_url(url), client_id=client_id, protocol=4)
    client.start()
    try:
        assert client.wait_connected(DEADLINE_S)
    finally:
        client.stop()


def device_client(url: str, client_id: str, *, will: Will | None = None) -> MqttPublisher:
    """A connected client standing in for a device's firmware (MQTT 3.1.1, as RabbitMQ needs)."""
    client = MqttPublisher(endpoint=parse_mqtt_url(url), client_id=client_id, will=will, protocol=4)
    client.start()
    assert client.wait_connected(DEADLINE_S), f"device {client_id} could not connect to {url}"
    return client


def random_mac_prefix() -> str:
    """`3C:E9:0E:XX:YY:` with random XX:YY, so no two tests (or runs) share devices."""
    return "3C:E9:0E:" + "".join(f"{random.randrange(256):02X}:" for _ in range(2))


def fastapi_data(node_id: str, second: int) -> bytes:
    """The FastAPI stack's sensor data exactly as its firmware sends it (IoT_Platform_Node.ino,
    readAndPublishSensors()): the 14 members that fit its StaticJsonDocument<250>, compact."""
    return (
        f'{{"timestamp":"12:{second // 60 % 60:02d}:{second % 60:02d}",'
        f'"temperature":{24.0 + second / 10:.1f},"humidity":55,"humidity_mq":0,'
        f'"humidity_mq_raw":0,"gas_sensor":312,"status":"online","node_id":"{node_id}",'
        f'"servo_angle":90,"light_state":true,"fan_state":false,"relay3_state":false,'
        f'"relay4_state":false,"real_model_state":false}}'
    ).encode()


def fastapi_heartbeat(node_id: str, uptime_ms: int) -> bytes:
    """publishHeartbeat(), every 3 s on the data topic."""
    return (
        f'{{"type":"heartbeat","status":"online","node_id":"{node_id}","uptime":{uptime_ms}}}'
    ).encode()


def fastapi_status(node_id: str, status: str, uptime_ms: int, rssi: int, strength: int) -> bytes:
    """publishStatus(status), on the data topic; its clock is local time without a zone."""
    return (
        f'{{"timestamp":"2026-12-05 11:31:20","status":"{status}","uptime":{uptime_ms},'
        f'"free_heap":201344,"wifi_rssi":{rssi},"node_id":"{node_id}","servo_angle":90,'
        f'"gas_sensor":312,"signal_strength":{strength}}}'
    ).encode()


def device(fh: FieldhubProcess, device_id: str) -> dict[str, Any] | None:
    response = fh.get(f"/api/v1/devices/{device_id}")
    return response.json() if response.status_code == 200 else None


def values(fh: FieldhubProcess, device_id: str, metric: str) -> list[float]:
    """A metric's values, oldest first."""
    response = fh.get(f"/api/v1/devices/{device_id}/readings", metric=metric, limit=1000)
    if response.status_code != 200:
        return []
    return [row["value"] for row in sorted(response.json()["data"], key=lambda row: row["ts"])]


def stored_messages(fh: FieldhubProcess) -> float:
    return fh.metric("fieldhub_ingest_messages_total", {"outcome": "stored"})


def publish_all(client: MqttPublisher, frames: list[tuple[str, bytes]]) -> None:
    """QoS 1; returns when RabbitMQ acknowledged every message."""
    futures: list[Future[None]] = [client.publish(topic, body, qos=1) for topic, body in frames]
    done, pending = wait(futures, timeout=BURST_DEADLINE_S)
    assert not pending, f"{len(pending)} publishes not acknowledged"
    for future in done:
        future.result()


def test_startup_reports_rabbitmq_as_the_external_broker(
    rabbitmq: RabbitMQNode, fieldhub_on_rabbitmq: FieldhubFactory
) -> None:
    """/healthz and /api/v1/system name the RabbitMQ URL, external, connected."""
    fh = fieldhub_on_rabbitmq()
    health = fh.health()
    assert health is not None
    assert (health["status"], health["broker"], health["mqtt_url"]) == (
        "ok",
        "external",
        rabbitmq.mqtt_url,
    )
    assert health["mqtt_connected"] is True
    assert (health["broker_running"], health["broker_restarts"]) == (None, None)
    broker = fh.get("/api/v1/system").json()["broker"]
    assert broker == {
        "kind": "external",
        "url": rabbitmq.mqtt_url,
        "connected": True,
        "running": None,
        "restarts": None,
        "problem": None,
    }
    # The ingest session is a durable queue on the node: proof the subscription is RabbitMQ's
    # own (and that rabbitmqctl reaches the private node with its cookie).
    queues = rabbitmq.ctl("list_queues", "name", "durable", "--no-table-headers", "--quiet")
    assert queues.returncode == 0, queues.stderr
    assert f"mqtt-subscription-{fh.env['FIELDHUB_MQTT_CLIENT_ID']}qos1\ttrue" in queues.stdout


def test_fastapi_stack_devices_through_rabbitmq(
    rabbitmq: RabbitMQNode, fieldhub_on_rabbitmq: FieldhubFactory
) -> None:
    """The firmware's data, heartbeats and status messages stored once, with uptime in ms and
    RSSI in dBm; strings kept as attributes; MAC spellings merged into one device; presence
    online from the status and heartbeats, offline from the will on a lost link."""
    fh = fieldhub_on_rabbitmq()
    mac = random_mac_prefix() + "4C"
    bare = mac.replace(":", "")  # the firmware's node_id: WiFi.macAddress() without colons
    dashed = mac.lower().replace(":", "-")
    will = Will(topic=f"devices/{bare}/status", payload=b"offline", qos=1, retain=True)
    client = device_client(rabbitmq.mqtt_url, f"ESP32-{bare}", will=will)
    try:
        frames = [(f"devices/{bare}/data", fastapi_status(bare, "online", 6_004, -61, 55))]
        frames += [(f"devices/{bare}/data", fastapi_data(bare, s)) for s in range(5)]
        frames += [(f"devices/{dashed}/data", fastapi_data(bare, s)) for s in range(5, 7)]
        frames.append((f"devices/{bare}/data", fastapi_heartbeat(bare, 9_012)))
        frames.append((f"devices/{mac}/data", fastapi_status(bare, "light_on", 9_480, -60, 57)))
        publish_all(client, frames)

        wait_until(lambda: stored_messages(fh) >= len(frames), what="every message stored")
        listed = fh.get("/api/v1/devices", limit=1000).json()["data"]
        ours = [d["id"] for d in listed if d["id"].replace(":", "").upper() == bare]
        assert ours == [mac], f"one device for three MAC spellings, got {ours}"
        assert values(fh, mac, "temperature") == pytest.approx([24.0 + s / 10 for s in range(7)])
        assert values(fh, mac, "light_state") == [1.0] * 7
        assert values(fh, mac, "fan_state") == [0.0] * 7
        assert values(fh, mac, "uptime_ms") == [6_004.0, 9_012.0, 9_480.0]
        assert values(fh, mac, "uptime_s") == []
        assert values(fh, mac, "rssi") == [-61.0, -60.0]
        assert values(fh, mac, "signal_strength") == [55.0, 57.0]
        assert values(fh, mac, "free_heap") == [201_344.0, 201_344.0]
        found = device(fh, mac)
        assert found is not None
        assert found["profile"] == "native"
        assert found["attributes"]["node_id"] == bare
        assert found["attributes"]["status"] == "light_on"
        assert found["attributes"]["timestamp"] == "12:00:06"
        assert "temperature" not in found["attributes"]
        wait_until(lambda: (device(fh, mac) or {}).get("presence") == "online", what="online")
    finally:
        # Power lost: no DISCONNECT, so RabbitMQ publishes the retained will.
        client.stop(disconnect=False)
    wait_until(lambda: (device(fh, mac) or {}).get("presence") == "offline", what="the will")
    assert stored_messages(fh) == len(frames) + 1  # the will, and nothing twice


def test_simulated_fastapi_node_through_rabbitmq(
    rabbitmq: RabbitMQNode, fieldhub_on_rabbitmq: FieldhubFactory
) -> None:
    """The simulated node on RabbitMQ as the firmware connects: `ESP32-<id>`, a persistent
    session, QoS 1 subscriptions to /commands and /commands/last; its messages stored with
    their units, a command obeyed, and its will on a crash."""
    fh = fieldhub_on_rabbitmq()
    mac = random_mac_prefix() + "5D"
    node = FastApiNode(endpoint=parse_mqtt_url(rabbitmq.mqtt_url), mac=mac)
    node.start()
    try:
        assert node.wait_subscribed(DEADLINE_S), "the node did not subscribe"
        # RabbitMQ keeps the session as a durable queue named after the client id.
        queues = rabbitmq.ctl("list_queues", "name", "durable", "--no-table-headers", "--quiet")
        assert f"mqtt-subscription-{node.client_id}qos1\ttrue" in queues.stdout, queues.stdout
        assert node.publish_heartbeat() is not None
        wait_until(lambda: len(values(fh, mac, "uptime_ms")) >= 2, what="status and heartbeat")
        wait_until(lambda: len(values(fh, mac, "servo_angle")) >= 2, what="status and data")
        # setup()'s test ping follows the data message; it carries only attributes.
        wait_until(
            lambda: (device(fh, mac) or {}).get("attributes", {}).get("test") == "ping",
            what="the test ping",
        )
        found = device(fh, mac)
        assert found is not None
        assert (found["profile"], found["presence"]) == ("native", "online")
        assert found["attributes"]["status"] == "online"
        assert {"rssi", "free_heap", "signal_strength", "uptime_ms", "gas_sensor"} <= {
            metric["name"] for metric in found["metrics"]
        }

        commander = device_client(rabbitmq.mqtt_url, f"backend-{uuid.uuid4().hex[:8]}")
        try:
            body = {"action": "SERVO_ANGLE", "angle": 135, "cmd_timestamp": int(time.time())}
            commander.publish(node.commands_topic, json.dumps(body).encode(), qos=1).result(
                DEADLINE_S
            )
        finally:
            commander.stop()
        wait_until(lambda: node.actuators.servo_angle == 135, what="the servo to turn")
        wait_until(lambda: 135.0 in values(fh, mac, "servo_angle"), what="the status echo")
        wait_until(
            lambda: (
                (device(fh, mac) or {}).get("attributes", {}).get("status") == "servo_updated_wifi"
            ),
            what="the status attribute",
        )
    finally:
        node.crash()
        forget_session(rabbitmq.mqtt_url, node.client_id)
    wait_until(lambda: (device(fh, mac) or {}).get("presence") == "offline", what="the will")


def test_messages_sent_while_fieldhub_is_down_arrive_once(
    rabbitmq: RabbitMQNode, fieldhub_on_rabbitmq: FieldhubFactory, tmp_path: Path
) -> None:
    """The persistent session's queue keeps QoS 1 messages until fieldhub is back; stored once."""
    fh = fieldhub_on_rabbitmq()
    queue = f"mqtt-subscription-{fh.env['FIELDHUB_MQTT_CLIENT_ID']}qos1"
    assert fh.stop() == 0
    mac = random_mac_prefix() + "01"
    client = device_client(rabbitmq.mqtt_url, mac.replace(":", ""))
    try:
        publish_all(
            client,
            [(f"devices/{mac}/data", fastapi_data(mac, s)) for s in range(OFFLINE_MESSAGES)],
        )
    finally:
        client.stop()
    listed = rabbitmq.ctl("list_queues", "name", "messages", "--no-table-headers", "--quiet")
    assert f"{queue}\t{OFFLINE_MESSAGES}" in listed.stdout, listed.stdout

    back = fieldhub_on_rabbitmq(data_dir=fh.data_dir)
    wait_until(lambda: stored_messages(back) >= OFFLINE_MESSAGES, what="the queued messages stored")
    assert "session resumed" in back.log_tail(200)
    assert len(values(back, mac, "temperature")) == OFFLINE_MESSAGES
    assert stored_messages(back) == OFFLINE_MESSAGES


def test_kill_9_mid_backlog_loses_nothing(
    rabbitmq: RabbitMQNode, fieldhub_on_rabbitmq: FieldhubFactory
) -> None:
    """kill -9 while fieldhub drains a backlog: RabbitMQ requeues what was delivered but not
    acknowledged, and after a restart every message (each with its own time) is stored once."""
    fh = fieldhub_on_rabbitmq()
    assert fh.stop() == 0
    prefix = f"crash{uuid.uuid4().hex[:6]}-"
    start_ms = int(time.time() * 1000) - 600_000
    frames = [
        (
            f"devices/{prefix}{n % BURST_DEVICES}/telemetry",
            json.dumps({"ts": start_ms + n, "seq": n, "temperature": 20 + n % 7}).encode(),
        )
        for n in range(CRASH_BACKLOG)
    ]
    client = device_client(rabbitmq.mqtt_url, f"{prefix}publisher")
    try:
        publish_all(client, frames)
    finally:
        client.stop()

    crashed = fieldhub_on_rabbitmq(data_dir=fh.data_dir)
    wait_until(
        lambda: count_metric(crashed.db_path, prefix, "seq") >= CRASH_BACKLOG // 10,
        timeout_s=BURST_DEADLINE_S,
        what="the first part of the backlog stored",
    )
    crashed.kill9()
    at_kill = count_metric(crashed.db_path, prefix, "seq")
    assert at_kill < CRASH_BACKLOG, "the backlog was drained before the kill: nothing proven"

    back = fieldhub_on_rabbitmq(data_dir=fh.data_dir)
    wait_until(
        lambda: count_metric(back.db_path, prefix, "seq") >= CRASH_BACKLOG,
        timeout_s=BURST_DEADLINE_S,
        what=f"{CRASH_BACKLOG} readings after the restart",
    )
    assert count_metric(back.db_path, prefix, "seq") == CRASH_BACKLOG  # the primary key held
    assert "session resumed" in back.log_tail(200)
    print(f"kill -9 after {at_kill} of {CRASH_BACKLOG}; all stored once after the restart")


def test_burst_is_stored_completely_and_once(
    rabbitmq: RabbitMQNode, fieldhub_on_rabbitmq: FieldhubFactory
) -> None:
    """Thousands of QoS 1 messages from several devices at once: every one stored, none twice."""
    fh = fieldhub_on_rabbitmq()
    prefix = random_mac_prefix()
    clients = [
        device_client(rabbitmq.mqtt_url, f"burst-{prefix}{index:02X}")
        for index in range(BURST_DEVICES)
    ]
    total = BURST_DEVICES * BURST_PER_DEVICE
    started = time.monotonic()
    futures: list[Future[None]] = []
    try:
        for second in range(BURST_PER_DEVICE):
            for index, client in enumerate(clients):
                node = f"{prefix}{index:02X}"
                futures.append(client.publish(f"devices/{node}/data", fastapi_data(node, second)))
        done, pending = wait(futures, timeout=BURST_DEADLINE_S)
        assert not pending, f"{len(pending)} of {total} publishes not acknowledged"
        for future in done:
            future.result()
        published_s = time.monotonic() - started
        wait_until(
            lambda: stored_messages(fh) >= total,
            timeout_s=BURST_DEADLINE_S,
            what=f"{total} messages stored",
        )
        stored_s = time.monotonic() - started
    finally:
        for client in clients:
            client.stop()
    assert count_metric(fh.db_path, prefix, "temperature") == total
    assert count_metric(fh.db_path, prefix, "servo_angle") == total
    assert stored_messages(fh) == total
    print(  # -s shows it: the burst's rates through RabbitMQ on this machine
        f"burst of {total}: published in {published_s:.2f} s, all stored after {stored_s:.2f} s "
        f"({total / stored_s:.0f} msg/s end to end)"
    )


def test_flask_gateway_leading_slash_topics_through_rabbitmq(
    rabbitmq: RabbitMQNode, fieldhub_on_rabbitmq: FieldhubFactory
) -> None:
    """`/readings/gateway/<MAC>` retained QoS 1 on fresh connections: each reading stored once;
    ingest asked for MQTT 5 falls back to 3.1.1 against RabbitMQ and says so."""
    fh = fieldhub_on_rabbitmq(env={"FIELDHUB_MQTT_PROTOCOL": "5"})
    assert "falls back to MQTT 3.1.1" in fh.log_tail(200)
    mac = random_mac_prefix() + "4C"
    uptimes = [1_835_587 + 30_000 * n for n in range(3)]
    for uptime in uptimes:
        # The firmware: a fresh connection per reading, client id = the MAC, no DISCONNECT.
        client = device_client(rabbitmq.mqtt_url, mac)
        payload = f'{{"macAddress":"{mac}", "timestamp":{uptime}, "rssi":65}}'.encode()
        client.publish(f"/readings/gateway/{mac}", payload, qos=1, retain=True).result(DEADLINE_S)
        client.stop(disconnect=False)
    wait_until(lambda: len(values(fh, mac, "uptime_ms")) == 3, what="three gateway readings")
    assert values(fh, mac, "uptime_ms") == uptimes
    assert values(fh, mac, "rssi_percent") == [65.0] * 3
    assert (device(fh, mac) or {}).get("profile") == "readings"

    # A new ingest session: RabbitMQ 3.10 hands retained messages only to subscriptions without
    # wildcards, so nothing comes again; if a later RabbitMQ does send the retained copy, the
    # retained-digest check must still keep it from being stored twice.
    fh.stop()
    fresh_id = f"fieldhub-fresh-{uuid.uuid4().hex[:8]}"
    fresh = fieldhub_on_rabbitmq(data_dir=fh.data_dir, env={"FIELDHUB_MQTT_CLIENT_ID": fresh_id})
    try:
        # A reading of another gateway, published after the subscription: once it is stored,
        # anything the broker sent on subscribing has been handled.
        marker = random_mac_prefix() + "01"
        client = device_client(rabbitmq.mqtt_url, marker)
        body = f'{{"macAddress":"{marker}", "timestamp":1000, "rssi":50}}'.encode()
        client.publish(f"/readings/gateway/{marker}", body, qos=1, retain=True).result(DEADLINE_S)
        client.stop(disconnect=False)
        wait_until(lambda: values(fresh, marker, "uptime_ms") == [1000.0], what="the marker")
        assert values(fresh, mac, "uptime_ms") == uptimes
    finally:
        fresh.stop()
        forget_session(rabbitmq.mqtt_url, fresh_id)
