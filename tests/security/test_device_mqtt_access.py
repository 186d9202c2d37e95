"""Devices with fieldhub credentials on a real `fieldhub up` (auth on, embedded Mosquitto on every
interface): a device connects from the network with its own login and can act only as itself.

What the probe of issue 15 did as an anonymous client, done here as device A with valid
credentials: telemetry, status and a command ack as device B, a subscription to B's commands
and to `#`, and taking a client id of fieldhub's own. None of it lands; revoking A disconnects it.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.clients import Client, connect, settle, wait_received
from fieldhub.broker import MosquittoProcess
from fieldhub.security import mqtt_clients
from support.fieldhub_process import FieldhubProcess, wait_until
from support.secrets import remember

REVOKE_DISCONNECT_S = 2.0


def non_loopback_ipv4() -> str:
    """An address of this machine that is not loopback: the devices' side of the network."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout
    for address in out.split():
        if "." in address and not address.startswith("127."):
            return address
    raise AssertionError(
        "this machine has no non-loopback IPv4 address; the test needs one to connect from"
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldhubProcess]:
    fh = FieldhubProcess(
        data_dir=tmp_path_factory.mktemp("secured") / "fh",
        auth=True,
        extra_args=["--mqtt-host", "0.0.0.0"],
    ).start()
    yield fh
    fh.stop()


def api(hub: FieldhubProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{hub.base_url}{path}", headers=hub.headers, timeout=15.0, **kwargs
    )


def provision(hub: FieldhubProcess, device_id: str) -> dict[str, Any]:
    response = api(hub, "POST", f"/api/v1/devices/{device_id}/credentials")
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    remember(answer["password"])
    return answer


def login(hub: FieldhubProcess, issued: dict[str, Any], **kwargs: Any) -> Client:
    assert hub.mqtt_port is not None
    return connect(
        non_loopback_ipv4(),
        hub.mqtt_port,
        username=issued["username"],
        password=issued["password"],
        **kwargs,
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def telemetry(hub: FieldhubProcess, device_id: str, metric: str) -> list[float]:
    response = hub.get(f"/api/v1/devices/{device_id}/readings", metric=metric, limit=100)
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    return [point["value"] for point in response.json()["data"]]


def test_a_device_logs_in_from_the_network_with_its_credentials_only(
    hub: FieldhubProcess,
) -> None:
    assert hub.mqtt_port is not None
    address = non_loopback_ipv4()
    device_id = new_id("net")
    issued = provision(hub, device_id)
    assert issued["config"]["device_id"] == device_id
    assert issued["config"]["mqtt"]["user"] == issued["username"] == device_id
    assert issued["enforced"] is True

    device = login(hub, issued)
    device.publish(f"devices/{device_id}/telemetry", json.dumps({"temperature": 21.5}).encode())
    wait_until(lambda: telemetry(hub, device_id, "temperature") == [21.5], timeout_s=10)
    device.stop()

    connect(address, hub.mqtt_port, username=device_id, password="wrong" * 4, expect=5)
    connect(address, hub.mqtt_port, expect=5)  # anonymous
    connect(address, hub.mqtt_port, username=new_id("nobody"), password="x" * 20, expect=5)


def test_a_device_cannot_act_as_another(hub: FieldhubProcess) -> None:
    a_id, b_id = new_id("dev-a"), new_id("dev-b")
    a, b = login(hub, provision(hub, a_id)), login(hub, provision(hub, b_id))
    try:
        b.subscribe(f"devices/{b_id}/commands")
        assert a.subscribe(f"devices/{b_id}/commands", "#")  # granted, yet nothing arrives
        b.publish(f"devices/{b_id}/status", b"online", retain=True)
        b.publish(f"devices/{b_id}/telemetry", json.dumps({"temperature": 5.0}).encode())
        wait_until(lambda: telemetry(hub, b_id, "temperature") == [5.0], timeout_s=10)

        sent = api(
            hub,
            "POST",
            f"/api/v1/devices/{b_id}/commands",
            json={"name": "ping", "timeout_s": 60},
        )
        assert sent.status_code in (200, 201, 202), sent.text
        command_id = sent.json()["id"]
        wait_received(b, f"devices/{b_id}/commands", "B's command at B")
        wait_until(lambda: command_state(hub, b_id, command_id) == "sent", timeout_s=10)

        # A, with valid credentials of its own, forges everything the probe forged as anonymous.
        forged = {"id": command_id, "status": "ok", "result": {"forged": True}}
        a.publish(f"devices/{b_id}/commands/ack", json.dumps(forged).encode())
        a.publish(f"devices/{b_id}/status", b"offline", retain=True)
        a.publish(f"devices/{b_id}/telemetry", json.dumps({"temperature": 99.0}).encode())
        # Positive control: A's own reading, published last, is stored; the broker delivers one
        # client's messages to ingest in order, so the forged ones had their chance before it.
        a.publish(f"devices/{a_id}/telemetry", json.dumps({"temperature": 1.0}).encode())
        wait_until(lambda: telemetry(hub, a_id, "temperature") == [1.0], timeout_s=10)

        assert command_state(hub, b_id, command_id) == "sent"
        assert telemetry(hub, b_id, "temperature") == [5.0]
        device = hub.get(f"/api/v1/devices/{b_id}").json()
        assert device["presence"] == "online"
        settle()
        assert a.topics() == []  # neither B's command nor anything else reached A
    finally:
        a.stop()
        b.stop()


def command_state(hub: FieldhubProcess, device_id: str, command_id: str) -> str:
    response = hub.get(f"/api/v1/devices/{device_id}/commands/{command_id}")
    assert response.status_code == 200, response.text
    state: str = response.json()["state"]
    return state


def test_a_revoked_device_is_disconnected_at_once_and_refused(hub: FieldhubProcess) -> None:
    assert hub.mqtt_port is not None
    device_id = new_id("revoked")
    issued = provision(hub, device_id)
    device = login(hub, issued)
    started = time.monotonic()
    response = api(hub, "DELETE", f"/api/v1/devices/{device_id}/credentials")
    assert response.status_code == 204, response.text
    assert device.disconnected.wait(REVOKE_DISCONNECT_S), "still connected 2 s after revoking"
    assert time.monotonic() - started <= REVOKE_DISCONNECT_S
    device.stop()
    login(hub, issued, expect=5)
    # A rotation issues a new secret and the device is back; the old secret stays refused.
    again = provision(hub, device_id)
    assert again["password"] != issued["password"]
    login(hub, again).stop()
    login(hub, issued, expect=5)


def test_a_device_cannot_take_fieldhubs_client_ids(hub: FieldhubProcess) -> None:
    logins = mqtt_clients.load_or_create(hub.data_dir)
    device_id = new_id("thief")
    issued = provision(hub, device_id)
    # The broker makes every client id its username: asking for ingest's id changes nothing.
    thief = login(hub, issued, client_id=logins["ingest"].username, clean_session=False)
    try:
        thief.publish(f"devices/{device_id}/telemetry", json.dumps({"temperature": 7.0}).encode())
        wait_until(lambda: telemetry(hub, device_id, "temperature") == [7.0], timeout_s=10)
        health = httpx.get(f"{hub.base_url}/healthz", timeout=5).json()
        assert health["status"] == "ok", health
        assert health["mqtt_connected"] is True
    finally:
        thief.stop()


def test_nothing_in_the_data_dir_is_readable_by_others(hub: FieldhubProcess) -> None:
    for path in [hub.data_dir, *Path(hub.data_dir).rglob("*")]:
        mode = path.stat().st_mode & 0o077
        assert mode == 0, f"{path} is open to group/others ({oct(path.stat().st_mode)})"


def test_with_an_external_broker_the_answer_says_the_credential_is_not_enforced(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    fh = FieldhubProcess(data_dir=tmp_path / "fh", auth=True, mqtt_url=mosquitto.url).start()
    try:
        issued = provision(fh, new_id("external"))
        assert issued["enforced"] is False
        assert issued["config"]["mqtt"]["port"] == mosquitto.port
    finally:
        fh.stop()


def test_a_network_listener_without_tls_is_warned_about_at_start(hub: FieldhubProcess) -> None:
    log = hub.log_path.read_text()
    assert "Warning: MQTT on 0.0.0.0 without TLS" in log
    assert "Warning: HTTP" not in log  # its HTTP listens on loopback only
