"""The Raspberry Pi/Mosquitto stack's `iot/node/...` traffic against a real fieldhub and broker."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from fieldhub.broker import MosquittoProcess
from fieldhub.protocol.timestamps import US_PER_S, format_us
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all


def test_node_telemetry_and_health_are_stored_once_at_the_node_time(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=mosquitto.url).start()
    node = f"n{uuid.uuid4().hex[:8]}"
    node_s = int(time.time()) - 30
    telemetry = {
        "node_id": f"node_{node}",
        "timestamp": node_s,
        "sensors": {"temperature": 22.5, "humidity": 45.2},
        "wifi_rssi": -65,
        "uptime": 3600,
    }
    publisher = connected_publisher(mosquitto.url)
    try:
        # The same message twice: what a QoS 1 redelivery looks like. The node's own time makes
        # it one reading per metric.
        payload = json.dumps(telemetry).encode()
        publish_all(publisher, [(f"iot/node/{node}/telemetry", payload)] * 2)
        publish_all(publisher, [(f"iot/node/{node}/status", b'{"uptime": 3601, "wifi_rssi": -66}')])
    finally:
        publisher.stop()

    def node_with_all_metrics() -> dict[str, object] | None:
        response = fh.get(f"/api/v1/devices/{node}")
        if response.status_code != 200 or len(response.json()["metrics"]) < 4:
            return None
        body: dict[str, object] = response.json()
        return body

    def uptime_readings() -> int:
        return len(fh.get(f"/api/v1/devices/{node}/readings", metric="uptime_s").json()["data"])

    detail = wait_until(node_with_all_metrics, what="the node with its four metrics")
    assert detail["profile"] == "iot-node"
    assert detail["presence"] == "online"
    assert detail["attributes"] == {"node_id": f"node_{node}"}
    # The telemetry's uptime (node time) and the heartbeat's (receive time): two, not three.
    wait_until(lambda: uptime_readings() == 2, what="the heartbeat's uptime reading")
    rows = fh.get(f"/api/v1/devices/{node}/readings", metric="temperature").json()["data"]
    assert [(r["ts"], r["value"]) for r in rows] == [(format_us(node_s * US_PER_S), 22.5)]
    assert fh.stop() == 0
