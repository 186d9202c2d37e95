"""The FastAPI/RabbitMQ stack's REST API, replayed against a real fieldhub.

A client written from the stack's `backend/api/schemas.py` and `routes.py`: the field names and
types of `NodeResponse`, `SensorDataResponse` and `ActionResponse`, the `{"count"}` of
`/nodes/count`, the dict of `/dashboard/stats`, FastAPI's `{"detail": ...}` errors. fieldhub runs
as `fieldhub up` against the test's own Mosquitto, fed the firmware's exact data messages on
`devices/{MAC}/data` (`IoT_Platform_Node.ino`'s keys in its order). An action becomes a command
fieldhub tracks, seen through `GET /api/v1/devices/{id}/commands`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import MosquittoFactory
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

NODE_A = "24:6F:28:AB:CD:EF"
NODE_B = "30:AE:A4:12:34:56"
NODE_KEYS = {
    "id",
    "node_id",
    "name",
    "mac_address",
    "created_at",
    "last_seen",
    "is_active",
    "status",
}
SENSOR_KEYS = {"id", "node_id", "data", "received_at"}
STATS_KEYS = {"total_devices", "active_devices", "data_points_24h", "system_health", "timestamp"}
# The firmware's `%H:%M:%S` clock, a few seconds back (so it is no later than the arrival).
BASE = datetime.now(UTC) - timedelta(seconds=30)


def _clock(offset_s: int) -> str:
    return (BASE + timedelta(seconds=offset_s)).strftime("%H:%M:%S")


def _data(node: str, offset_s: int, temperature: float, servo: int, light: bool) -> bytes:
    """`publishSensorData()`'s message, serialised as ArduinoJson does (no spaces)."""
    light_text = "true" if light else "false"
    return (
        f'{{"timestamp":"{_clock(offset_s)}","temperature":{temperature},"humidity":55.2,'
        f'"humidity_mq":41,"humidity_mq_raw":1700,"gas_sensor":412,"status":"online",'
        f'"node_id":"{node}","servo_angle":{servo},"light_state":{light_text},'
        f'"fan_state":false,"relay3_state":false,"relay4_state":false,'
        f'"real_model_state":false,"smart_mode":true,"uptime":{60000 + offset_s * 1000},'
        f'"wifi_rssi":-58}}'
    ).encode()


MESSAGES = [
    (NODE_A, _data(NODE_A, 1, 24.5, 0, False)),
    (NODE_A, _data(NODE_A, 2, 24.6, 45, True)),
    (NODE_A, _data(NODE_A, 3, 24.7, 90, True)),
    (NODE_B, _data(NODE_B, 4, 19.5, 10, False)),
]


@pytest.fixture
def fieldhub(mosquitto_factory: MosquittoFactory, tmp_path: Path) -> Iterator[FieldhubProcess]:
    """A fieldhub on a private broker, holding the firmware's data messages."""
    broker = mosquitto_factory()
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url).start()
    publisher = connected_publisher(broker.url)
    # One at a time: each message its own arrival time, in order.
    for node, payload in MESSAGES:
        publish_all(publisher, [(f"devices/{node}/data", payload)])
    publisher.stop()
    wait_until(
        lambda: len(_json(fh.get("/api/sensor-data"), 200)) == len(MESSAGES),
        what="the firmware's messages to be stored",
    )
    yield fh
    assert fh.stop() == 0


def _json(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def _time(value: Any) -> datetime:
    """A `datetime` field as pydantic (the stack's client side) reads it."""
    assert isinstance(value, str)
    return datetime.fromisoformat(value)


def _assert_node(node: dict[str, Any], mac: str) -> None:
    assert set(node) == NODE_KEYS
    assert isinstance(node["id"], int)
    assert node["node_id"] == mac
    assert node["mac_address"] == mac
    assert node["name"] == f"ESP32-{mac[-6:]}"
    assert _time(node["created_at"]) <= _time(node["last_seen"])
    assert node["is_active"] == "true"
    assert node["status"] in ("online", "offline")


def _detail_error(response: httpx.Response, status: int) -> Any:
    """FastAPI's error shape, as the stack answered: `{"detail": ...}`."""
    body = _json(response, status)
    assert set(body) == {"detail"}
    return body["detail"]


def test_nodes_sensor_data_and_stats_in_the_stacks_shapes(fieldhub: FieldhubProcess) -> None:
    fh = fieldhub

    nodes = _json(fh.get("/api/nodes"), 200)
    assert isinstance(nodes, list)
    by_id = {n["node_id"]: n for n in nodes}
    assert set(by_id) == {NODE_A, NODE_B}
    for mac, node in by_id.items():
        _assert_node(node, mac)
    assert len({n["id"] for n in nodes}) == 2

    online = _json(fh.get("/api/nodes/online"), 200)
    assert {n["node_id"] for n in online} == {NODE_A, NODE_B}
    assert all(n["status"] == "online" for n in online)

    assert _json(fh.get("/api/nodes/count"), 200) == {"count": 2}

    node = _json(fh.get(f"/api/nodes/{NODE_A}"), 200)
    assert node == by_id[NODE_A]
    # Any spelling of the MAC finds it.
    assert _json(fh.get("/api/nodes/246f28abcdef"), 200)["node_id"] == NODE_A
    assert _detail_error(fh.get("/api/nodes/AA:BB:CC:DD:EE:FF"), 404) == "Node not found"

    rows = _json(fh.get(f"/api/nodes/{NODE_A}/sensor-data"), 200)
    assert [r["data"]["temperature"] for r in rows] == [24.7, 24.6, 24.5]
    for row in rows:
        assert set(row) == SENSOR_KEYS
        assert isinstance(row["id"], int)
        assert row["node_id"] == NODE_A
        _time(row["received_at"])
        data = row["data"]
        # The firmware's names, its integers as integers and its booleans as booleans.
        assert data["humidity"] == 55.2
        assert data["gas_sensor"] == 412
        assert isinstance(data["gas_sensor"], int)
        assert data["wifi_rssi"] == -58
        assert data["smart_mode"] is True
        assert data["fan_state"] is False
    assert [r["data"]["servo_angle"] for r in rows] == [90, 45, 0]
    assert [r["data"]["light_state"] for r in rows] == [True, True, False]
    assert rows[0]["received_at"] >= rows[1]["received_at"] >= rows[2]["received_at"]
    assert len(_json(fh.get(f"/api/nodes/{NODE_A}/sensor-data", limit=2), 200)) == 2
    # An unknown node has no data, as in the stack: an empty list, not 404.
    assert _json(fh.get("/api/nodes/AA:BB:CC:DD:EE:FF/sensor-data"), 200) == []

    everything = _json(fh.get("/api/sensor-data"), 200)
    assert [r["node_id"] for r in everything] == [NODE_B, NODE_A, NODE_A, NODE_A]
    assert _json(fh.get("/api/sensor-data", node_id=NODE_B), 200) == everything[:1]
    latest = _json(fh.get("/api/sensor-data/latest", limit=2), 200)
    assert latest == everything[:2]

    stats = _json(fh.get("/api/dashboard/stats"), 200)
    assert set(stats) == STATS_KEYS
    assert stats["total_devices"] == 2
    assert stats["active_devices"] == 2
    assert stats["data_points_24h"] == len(MESSAGES)
    assert stats["system_health"] == "healthy"
    _time(stats["timestamp"])


def test_bad_requests_are_refused_in_fastapis_shape(fieldhub: FieldhubProcess) -> None:
    fh = fieldhub
    # The stack's bounds on `limit`, with FastAPI's validation error.
    for path, limit in (("/api/sensor-data", 0), ("/api/sensor-data", 1001)):
        detail = _detail_error(fh.get(path, limit=limit), 422)
        assert detail[0]["loc"] == ["query", "limit"]
        assert isinstance(detail[0]["msg"], str)
    detail = _detail_error(fh.get("/api/sensor-data/latest", limit=101), 422)
    assert detail[0]["loc"] == ["query", "limit"]

    # An action without `action`, and one whose `angle` is no integer.
    url = f"{fh.base_url}/api/nodes/{NODE_A}/actions"
    detail = _detail_error(httpx.post(url, json={"angle": 90}, timeout=10), 422)
    assert detail[0]["loc"] == ["body", "action"]
    detail = _detail_error(
        httpx.post(url, json={"action": "SERVO_ANGLE", "angle": "left"}, timeout=10), 422
    )
    assert detail[0]["loc"] == ["body", "angle"]
    # No such node.
    missing = f"{fh.base_url}/api/nodes/AA:BB:CC:DD:EE:FF/actions"
    response = httpx.post(missing, json={"action": "REBOOT"}, timeout=10)
    assert _detail_error(response, 404) == "Node not found"
    # An action the firmware does not know: refused, never sent.
    response = httpx.post(url, json={"action": "SELF_DESTRUCT"}, timeout=10)
    assert isinstance(_detail_error(response, 422), str)
    commands = _json(fh.get(f"/api/v1/devices/{NODE_A}/commands"), 200)
    assert commands["data"] == []


def _knows(fh: FieldhubProcess, name: str) -> bool:
    types = _json(fh.get(f"/api/v1/devices/{NODE_A}/command-types"), 200)
    return any(c["name"] == name for c in types["commands"])


def test_an_action_becomes_a_tracked_command(fieldhub: FieldhubProcess) -> None:
    """POST /api/nodes/{id}/actions turns each NodeAction into a tracked command of the
    firmware's action name, with the params the firmware reads."""
    fh = fieldhub
    assert _knows(fh, "SERVO_ANGLE"), "the fastapi format names commands by firmware actions"
    url = f"{fh.base_url}/api/nodes/{NODE_A}/actions"

    body = _json(httpx.post(url, json={"action": "SERVO_ANGLE", "angle": 90}, timeout=10), 200)
    assert set(body) == {"message", "command_id"}
    assert body["message"] == "Command 'SERVO_ANGLE' queued successfully for delivery via MQTT"
    servo_id = body["command_id"]

    # `value` goes to the action's one parameter, the firmware's `state`.
    body = _json(httpx.post(url, json={"action": "LIGHT_CONTROL", "value": True}, timeout=10), 200)
    light_id = body["command_id"]
    # A JSON object's keys become the params; `url` keeps its name.
    relay = {"action": "RELAY_CONTROL", "value": {"relay": 3, "state": True}}
    relay_id = _json(httpx.post(url, json=relay, timeout=10), 200)["command_id"]
    update = {"action": "FIRMWARE_UPDATE", "url": "http://10.0.0.2/firmware_v2.bin"}
    update_id = _json(httpx.post(url, json=update, timeout=10), 200)["command_id"]

    commands = {
        c["id"]: c for c in _json(fh.get(f"/api/v1/devices/{NODE_A}/commands"), 200)["data"]
    }
    assert commands[servo_id]["name"] == "SERVO_ANGLE"
    assert commands[servo_id]["params"] == {"angle": 90}
    assert commands[servo_id]["format"] == "fastapi"
    assert commands[light_id]["name"] == "LIGHT_CONTROL"
    assert commands[light_id]["params"] == {"state": True}
    assert commands[relay_id]["params"] == {"relay": 3, "state": True}
    assert commands[update_id]["name"] == "FIRMWARE_UPDATE"
    assert commands[update_id]["params"] == {"url": "http://10.0.0.2/firmware_v2.bin"}
    assert isinstance(commands[servo_id]["state"], str)
