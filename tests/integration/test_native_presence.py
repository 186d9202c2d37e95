"""A native device registers itself and its last will marks it offline."""

from __future__ import annotations

import uuid
from pathlib import Path

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.sim.native import NativeDevice
from support.fieldhub_process import FieldhubProcess, wait_until


def test_native_device_appears_and_will_marks_it_offline(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    """First message registers the device; dropping the connection fires the will: offline."""
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=mosquitto.url).start()
    device_id = f"node-{uuid.uuid4().hex[:8]}"
    device = NativeDevice(endpoint=parse_mqtt_url(mosquitto.url), device_id=device_id)
    device.start()
    assert device.wait_connected(10)
    device.publish_telemetry()

    def detail() -> dict[str, object] | None:
        response = fh.get(f"/api/v1/devices/{device_id}")
        body = response.json() if response.status_code == 200 else None
        return body if body and body["metrics"] else None

    body = wait_until(detail, what="the device to register with metrics")
    assert body["profile"] == "native"
    assert {"temperature", "humidity", "rssi", "seq"} <= {m["name"] for m in body["metrics"]}  # type: ignore[union-attr]
    wait_until(
        lambda: fh.get(f"/api/v1/devices/{device_id}").json()["presence"] == "online",
        what="presence online",
    )
    listed = fh.get("/api/v1/devices", online="true", search=device_id).json()
    assert [d["id"] for d in listed["data"]] == [device_id]

    device.crash()
    offline = wait_until(
        lambda: (b := fh.get(f"/api/v1/devices/{device_id}").json())["presence"] == "offline" and b,
        what="the will to mark the device offline",
    )
    assert offline["presence_since"] is not None
    listed = fh.get("/api/v1/devices", presence="offline", search=device_id).json()
    assert [d["id"] for d in listed["data"]] == [device_id]
    fh.stop()
