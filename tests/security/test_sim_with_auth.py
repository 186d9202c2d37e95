"""`fieldhub sim` against a fieldhub with authentication on: its native devices get broker
credentials through the API and log in with them, the earlier stacks' kinds connect to the legacy
listener (the FastAPI node with its firmware's login), and every kind is stored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fieldhub.net import free_port
from support.fieldhub_process import FieldhubProcess, wait_until

FIELDHUB = Path(sys.executable).with_name("fieldhub")


def test_a_mixed_simulated_fleet_logs_in_and_is_stored(tmp_path: Path) -> None:
    legacy_port = free_port()
    fh = FieldhubProcess(
        data_dir=tmp_path / "fh", auth=True, extra_args=["--mqtt-legacy-port", str(legacy_port)]
    ).start()
    try:
        sim = subprocess.run(
            [
                str(FIELDHUB),
                "sim",
                "--profile",
                "mixed",
                "--devices",
                "5",
                "--rate",
                "2",
                "--duration",
                "8",
                "--mqtt-url",
                f"mqtt://127.0.0.1:{fh.mqtt_port}",
                "--legacy-mqtt-url",
                f"mqtt://127.0.0.1:{legacy_port}",
                "--url",
                fh.base_url,
            ],
            env={"FIELDHUB_TOKEN": fh.admin_token, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert "issued broker credentials to 1 native devices" in sim.stdout
        assert fh.admin_token not in sim.stdout + sim.stderr

        def profiles() -> set[str]:
            devices = fh.get("/api/v1/devices", limit=100).json()["data"]
            return {d["profile"] for d in devices}

        # native (sim-0001 with its own credentials), readings, fastapi (native profile's data
        # route), iot-node and sensor: every kind stored.
        wait_until(lambda: profiles() >= {"native", "readings", "iot-node", "sensor"}, timeout_s=15)
        ids = {d["id"] for d in fh.get("/api/v1/devices", limit=100).json()["data"]}
        assert "sim-0001" in ids
        assert any(len(i) == 17 and i.count(":") == 5 for i in ids if i.startswith("3C:E9:0E:1"))
        credentials = fh.get("/api/v1/device-credentials").json()
        assert [c["device_id"] for c in credentials] == ["sim-0001"]
    finally:
        fh.stop()
