"""One Mosquitto process against the real binary: find, start, refuse, stop, die with its parent."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.probes import CONNACK_ACCEPTED, is_gone, mqtt_handshake, wait_until
from fieldhub.broker import (
    BrokerStartError,
    MosquittoNotFound,
    MosquittoProcess,
    find_mosquitto,
)
from fieldhub.broker import executable as broker_executable
from fieldhub.net import free_port, port_is_free


def test_started_broker_answers_connect_with_connack(mosquitto: MosquittoProcess) -> None:
    """A started broker accepts an MQTT 3.1.1 CONNECT from an anonymous client."""
    assert mosquitto.is_running
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert mqtt_handshake(mosquitto.host, mosquitto.port) == CONNACK_ACCEPTED


def test_port_taken_raises_start_error(tmp_path: Path) -> None:
    """A port someone else listens on is reported as such, and nothing is left running."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = MosquittoProcess(data_dir=tmp_path, port=port)
        with pytest.raises(BrokerStartError, match=rf"127\.0\.0\.1:{port} is already in use"):
            broker.start()
    assert broker.pid is None
    assert not broker.is_running


def test_exit_during_startup_quotes_the_broker_log(tmp_path: Path) -> None:
    """When Mosquitto exits during startup the error carries its exit code and log."""
    persistence = tmp_path / "mosquitto" / "persistence"
    persistence.mkdir(parents=True)
    (persistence / "mosquitto.db").write_bytes(b"not a mosquitto database")
    broker = MosquittoProcess(data_dir=tmp_path, port=free_port())
    with pytest.raises(BrokerStartError, match="Unable to restore persistent database") as info:
        broker.start()
    assert info.value.returncode == 1
    assert info.value.log_path == broker.log_path
    assert not broker.is_running


def test_stop_leaves_no_process(mosquitto_factory: Callable[..., MosquittoProcess]) -> None:
    """stop() ends the broker process and frees its port."""
    broker = mosquitto_factory()
    pid = broker.pid
    assert pid is not None
    assert broker.stop() == 0
    assert not broker.is_running
    assert is_gone(pid)
    assert port_is_free(broker.host, broker.port)
    assert broker.stop() == 0  # idempotent


def test_blocking_calls_leave_the_threads_event_loop_alone(tmp_path: Path) -> None:
    """start() and stop() run on a loop of their own: the thread's current loop stays set."""
    outcome: dict[str, object] = {}

    def run() -> None:
        # A thread of its own, so the loop set here is nobody else's (pytest-asyncio's).
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            broker = MosquittoProcess(data_dir=tmp_path, port=free_port())
            broker.start()
            outcome["returncode"] = broker.stop()
            outcome["same_loop"] = asyncio.get_event_loop_policy().get_event_loop() is loop
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    thread = threading.Thread(target=run, name="blocking-broker")
    thread.start()
    thread.join()
    assert outcome == {"returncode": 0, "same_loop": True}


def test_missing_executable_names_the_fix(tmp_path: Path) -> None:
    """An explicit executable that does not exist fails with the install hint."""
    with pytest.raises(MosquittoNotFound, match="sudo apt-get install mosquitto"):
        find_mosquitto("/nonexistent/mosquitto")
    broker = MosquittoProcess(data_dir=tmp_path, port=free_port(), executable="/nonexistent/m")
    with pytest.raises(MosquittoNotFound, match="--mqtt-url"):
        broker.start()
    assert broker.pid is None


def test_no_mosquitto_anywhere_lists_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a broker on PATH or in the usual places, the error says where it looked."""
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(broker_executable, "MOSQUITTO_FALLBACK_PATHS", ("/nonexistent/mosquitto",))
    with pytest.raises(MosquittoNotFound, match="looked at: PATH, /nonexistent/mosquitto"):
        find_mosquitto()


def test_finds_debian_mosquitto_off_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's /usr/sbin/mosquitto is found when /usr/sbin is not on PATH."""
    if not os.access("/usr/sbin/mosquitto", os.X_OK):
        pytest.skip("this machine's mosquitto is not the Debian package")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert find_mosquitto() == "/usr/sbin/mosquitto"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("layout", ["reachable", "private"])
def test_broker_dies_with_a_killed_parent(layout: str, tmp_path: Path, reachable_dir: Path) -> None:
    """`kill -9` of the process that started the broker does not leave an orphan."""
    data_dir = reachable_dir if layout == "reachable" else tmp_path / "data"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from fieldhub.broker import MosquittoProcess\n"
        "broker = MosquittoProcess(data_dir=Path(sys.argv[1]), port=int(sys.argv[2]))\n"
        "broker.start()\n"
        "print(broker.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, str(data_dir), str(free_port())],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        broker_pid = int(parent.stdout.readline())
        assert not is_gone(broker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_until(lambda: is_gone(broker_pid), f"mosquitto (pid {broker_pid}) to exit")
    finally:
        parent.kill()
        parent.wait()
