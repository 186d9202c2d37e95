"""Demo mode stays one command and stays local: no credentials, 127.0.0.1 only, it says so, and
it answers only requests addressed to a loopback name (a DNS-rebinding page gets nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.fieldhub_process import FieldhubProcess

FIELDHUB = Path(sys.executable).with_name("fieldhub")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldhubProcess]:
    fh = FieldhubProcess(data_dir=tmp_path_factory.mktemp("demo") / "fh").start()
    yield fh
    fh.stop()


def test_demo_mode_serves_without_credentials_and_says_so(demo: FieldhubProcess) -> None:
    assert httpx.get(f"{demo.base_url}/api/v1/devices", timeout=5).status_code == 200
    assert "Authentication: OFF (demo mode)" in demo.log_path.read_text()


@pytest.mark.parametrize("host", ["attacker.example", "192.0.2.2", "fieldhub.lan:8000"])
def test_a_request_for_another_host_name_is_refused(demo: FieldhubProcess, host: str) -> None:
    response = httpx.get(f"{demo.base_url}/api/v1/devices", headers={"Host": host}, timeout=5)
    assert response.status_code == 400
    assert "data" not in response.text


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_loopback_names_are_served(demo: FieldhubProcess, host: str) -> None:
    port = demo.http_port
    response = httpx.get(
        f"{demo.base_url}/api/v1/devices", headers={"Host": f"{host}:{port}"}, timeout=5
    )
    assert response.status_code == 200


@pytest.mark.parametrize("flag", ["--http-host", "--mqtt-host"])
def test_demo_mode_refuses_a_network_address(flag: str, tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FIELDHUB_")}
    result = subprocess.run(
        [str(FIELDHUB), "up", "--demo", "--data-dir", str(tmp_path / "d"), flag, "0.0.0.0"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "without authentication (demo mode) fieldhub listens on 127.0.0.1 only" in result.stderr
    assert "setup link" in result.stderr
