"""`fieldhub command`: an operator's one-line command, answered with how it ended."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from support.fieldhub_process import FIELDHUB, FieldhubProcess, wait_until
from support.sim_devices import SimDevice


@pytest.fixture
def fh_with_device(mosquitto: MosquittoProcess, tmp_path: Path) -> Iterator[FieldhubProcess]:
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=mosquitto.url).start()
    device = SimDevice(endpoint=parse_mqtt_url(mosquitto.url), device_id="cli-1", seed=3).start()
    device.publish()
    wait_until(
        lambda: fh.get("/api/v1/devices/cli-1").json().get("presence") == "online",
        what="cli-1 online",
    )
    yield fh
    device.stop()
    assert fh.stop() == 0


def run(fh: FieldhubProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIELDHUB), "command", *args, "--url", fh.base_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_command_that_worked_exits_0_with_its_history(fh_with_device: FieldhubProcess) -> None:
    done = run(fh_with_device, "cli-1", "set_window", "position=35")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1] for line in lines[:3]] == ["pending", "sent", "succeeded"]
    assert '"position": 35' in done.stdout
    stored = fh_with_device.get("/api/v1/devices/cli-1/commands").json()["data"]
    assert [(c["name"], c["params"], c["state"]) for c in stored] == [
        ("set_window", {"position": 35}, "succeeded")
    ]


def test_a_device_error_exits_1(fh_with_device: FieldhubProcess) -> None:
    """Unknown names pass through to a native device, which answers with an error ack."""
    done = run(fh_with_device, "cli-1", "self_destruct")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed" in done.stdout
    assert "unknown command" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cli-1", "set_window", "position=300"], "422: set_window: params.position"),
        (["nobody", "ping"], "404: no device 'nobody'"),
        (["cli-1", "set_window", "position"], "is not key=value"),
    ],
)
def test_refusals_exit_2_saying_why(
    fh_with_device: FieldhubProcess, args: list[str], message: str
) -> None:
    done = run(fh_with_device, *args)
    assert done.returncode == 2
    assert message in done.stderr
