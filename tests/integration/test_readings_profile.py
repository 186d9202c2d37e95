"""The Flask gateway stack's firmware, byte for byte, against a real fieldhub and Mosquitto."""

from __future__ import annotations

import random
import time
from pathlib import Path

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.protocol.timestamps import parse_time_param
from fieldhub.sim.readings import ReadingsGateway
from support.fieldhub_process import FieldhubProcess, wait_until


def _random_mac() -> str:
    return "3C:E9:0E:" + ":".join(f"{random.randrange(256):02X}" for _ in range(3))


def _rssi_readings(fh: FieldhubProcess, device: str) -> list[dict[str, object]]:
    response = fh.get(f"/api/v1/devices/{device}/readings", metric="rssi_percent")
    return response.json()["data"] if response.status_code == 200 else []


def test_firmware_message_stored_once_per_publish_and_not_again_on_reconnect(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    """Each retained QoS 1 publish on a fresh connection is one reading; re-deliveries are not."""
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=mosquitto.url).start()
    mac = _random_mac()
    gateway = ReadingsGateway(endpoint=parse_mqtt_url(mosquitto.url), mac=mac, period_s=1.0)
    started_us = time.time_ns() // 1000
    for _ in range(3):
        assert gateway.publish_once(), "the gateway's publish was not acknowledged"
    # Any MAC spelling finds the device.
    spelled = mac.lower().replace(":", "-")
    rows = wait_until(
        lambda: len(_rssi_readings(fh, spelled)) == 3 and _rssi_readings(fh, spelled),
        what="three rssi readings",
    )
    device = fh.get(f"/api/v1/devices/{mac.replace(':', '')}").json()
    assert device["id"] == mac
    assert device["profile"] == "readings"
    assert {m["name"] for m in device["metrics"]} == {"rssi_percent", "uptime_ms"}
    for row in rows:
        # The firmware's timestamp is uptime, so the reading time is the receive time.
        assert row["ts"] == row["received_at"]
        assert parse_time_param(str(row["ts"])) >= started_us

    # Restart on the same persistent session: nothing is handed over again.
    assert fh.stop() == 0
    fh.start()
    # A new session (another client id) makes the broker send its retained copy with the retain
    # flag; fieldhub recognises it and stores nothing.
    assert fh.stop() == 0
    fresh = FieldhubProcess(
        data_dir=fh.data_dir,
        mqtt_url=mosquitto.url,
        env={"FIELDHUB_MQTT_CLIENT_ID": f"fieldhub-other-{mac[-2:]}"},
    ).start()
    wait_until(
        lambda: (
            fresh.metric("fieldhub_ingest_messages_total", {"outcome": "retained_redelivery"}) >= 1
        ),
        what="the retained copy to be recognised",
    )
    assert len(_rssi_readings(fresh, mac)) == 3
    # A fourth real publish is still stored.
    assert gateway.publish_once()
    wait_until(lambda: len(_rssi_readings(fresh, mac)) == 4, what="the fourth reading")
    fresh.stop()
