"""The embedded broker against the real Mosquitto: start, config, stop, restart."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldhub.broker import (
    BrokerStartError,
    BrokerSupervisor,
    MosquittoNotFound,
    MosquittoProcess,
    find_mosquitto,
    render_mosquitto_conf,
)
from fieldhub.broker import config as broker_config
from fieldhub.broker import supervisor as broker_supervisor
from fieldhub.net import free_port, port_is_free

# Deadline for anything that should happen "soon" (a restart, a message). Tests
# poll for the condition and return as soon as it holds; this only bounds a hang.
DEADLINE_S = 10.0
POLL_S = 0.02

# Mosquitto's default max_inflight_messages: the number the raised limit must beat.
MOSQUITTO_DEFAULT_INFLIGHT = 20


def mqtt_connect_packet(client_id: str) -> bytes:
    """Hand-built MQTT 3.1.1 CONNECT: clean session, keepalive 60 s."""
    cid = client_id.encode()
    variable_header = b"\x00\x04MQTT" + bytes([4, 0x02]) + (60).to_bytes(2, "big")
    payload = len(cid).to_bytes(2, "big") + cid
    remaining = variable_header + payload
    assert len(remaining) < 128  # one-byte remaining length
    return bytes([0x10, len(remaining)]) + remaining


def mqtt_handshake(host: str, port: int) -> bytes:
    """Send CONNECT and return the 4 bytes the broker answers with."""
    with socket.create_connection((host, port), timeout=DEADLINE_S) as sock:
        sock.sendall(mqtt_connect_packet("fieldhub-test"))
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                break
            answer += chunk
        return answer


CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S} s waiting for {what}")
        time.sleep(POLL_S)


async def async_wait_until(condition: Callable[[], bool], what: str) -> None:
    """`wait_until` for async tests: yields to the event loop while polling."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def is_gone(pid: int) -> bool:
    """True if `pid` has exited (a zombie counts: it no longer runs)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def mqtt_client(broker: MosquittoProcess, **kwargs: object) -> mqtt.Client:
    """A connected paho client running its network loop in a thread."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311, **kwargs)  # type: ignore[arg-type]
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def stop_client(client: mqtt.Client) -> None:
    """Disconnect first: it wakes the network thread, so loop_stop() is instant."""
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A data dir every user can reach (pytest's tmp root is 0700, root-only)."""
    path = Path(tempfile.mkdtemp(prefix="fieldhub-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_started_broker_answers_connect_with_connack(mosquitto: MosquittoProcess) -> None:
    """A started broker accepts an MQTT 3.1.1 CONNECT from an anonymous client."""
    assert mosquitto.is_running
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert mqtt_handshake(mosquitto.host, mosquitto.port) == CONNACK_ACCEPTED


def test_config_file_has_listener_address_nodelay_and_raised_limits(
    mosquitto: MosquittoProcess,
) -> None:
    """The written config binds the given address and raises the QoS 1 limits."""
    lines = mosquitto.config_path.read_text().splitlines()
    assert f"listener {mosquitto.port} 127.0.0.1" in lines
    assert "allow_anonymous true" in lines
    assert "set_tcp_nodelay true" in lines
    assert f"max_inflight_messages {broker_config.MAX_INFLIGHT_MESSAGES}" in lines
    assert f"max_queued_messages {broker_config.MAX_QUEUED_MESSAGES}" in lines
    assert f"max_queued_bytes {broker_config.MAX_QUEUED_BYTES}" in lines
    assert broker_config.MAX_INFLIGHT_MESSAGES > MOSQUITTO_DEFAULT_INFLIGHT
    assert broker_config.MAX_QUEUED_MESSAGES > 1000
    assert "persistence true" in lines
    assert f"persistence_location {mosquitto.persistence_dir.absolute()}/" in lines
    assert "connection_messages false" in lines
    # One log_type per line: Mosquitto ignores every word after the first.
    assert {"log_type error", "log_type warning", "log_type notice"} <= set(lines)
    assert not any(line.startswith("pid_file") for line in lines)


def test_render_refuses_port_zero() -> None:
    """`listener 0` is refused by Mosquitto, so rendering refuses it first."""
    with pytest.raises(ValueError, match="port"):
        render_mosquitto_conf(host="127.0.0.1", port=0, persistence_dir=Path("/tmp/x"))


def test_broker_sends_more_than_20_unacked_qos1_messages(
    mosquitto: MosquittoProcess, unique_topic_prefix: str
) -> None:
    """The raised max_inflight_messages reaches a client that acks late."""
    count = 200
    received: list[int] = []
    subscribed = False

    def on_subscribe(*_args: object) -> None:
        nonlocal subscribed
        subscribed = True

    subscriber = mqtt_client(mosquitto, manual_ack=True)
    subscriber.on_message = lambda _client, _userdata, message: received.append(message.mid)
    subscriber.on_subscribe = on_subscribe
    subscriber.subscribe(f"{unique_topic_prefix}/#", qos=1)
    publisher = mqtt_client(mosquitto)
    try:
        wait_until(lambda: subscribed, "SUBACK")
        for i in range(count):
            publisher.publish(f"{unique_topic_prefix}/{i}", b"x", qos=1)
        # Nothing is acked, so with the default limit delivery stops at 20.
        wait_until(lambda: len(received) == count, f"{count} unacked deliveries")
    finally:
        stop_client(publisher)
        stop_client(subscriber)


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
    monkeypatch.setattr(broker_supervisor, "MOSQUITTO_FALLBACK_PATHS", ("/nonexistent/mosquitto",))
    with pytest.raises(MosquittoNotFound, match="looked at: PATH, /nonexistent/mosquitto"):
        find_mosquitto()


def test_finds_debian_mosquitto_off_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's /usr/sbin/mosquitto is found when /usr/sbin is not on PATH."""
    if not os.access("/usr/sbin/mosquitto", os.X_OK):
        pytest.skip("this machine's mosquitto is not the Debian package")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert find_mosquitto() == "/usr/sbin/mosquitto"


@pytest.mark.parametrize("layout", ["reachable", "private"])
def test_persistence_survives_restart_when_run_as_root(
    layout: str,
    tmp_path: Path,
    reachable_dir: Path,
    mosquitto_factory: Callable[..., MosquittoProcess],
    unique_topic_prefix: str,
) -> None:
    """As root the broker can save its state, in a reachable and in a 0700 data dir."""
    if os.geteuid() != 0:
        pytest.skip("the privilege drop only happens when fieldhub runs as root")
    data_dir = reachable_dir if layout == "reachable" else tmp_path / "data"
    topic = f"{unique_topic_prefix}/retained"

    broker = mosquitto_factory(data_dir=data_dir)
    pid = broker.pid
    assert pid is not None
    if layout == "reachable" and _user_exists("mosquitto"):
        # Unprivileged, and the directory handed over to that user.
        assert broker.run_as == "mosquitto"
        assert psutil.Process(pid).uids().effective == pwd.getpwnam("mosquitto").pw_uid
        assert broker.persistence_dir.stat().st_uid == pwd.getpwnam("mosquitto").pw_uid
    if layout == "private":
        assert broker.run_as == "root"
    publisher = mqtt_client(broker)
    publisher.publish(topic, b"kept", qos=1, retain=True).wait_for_publish(DEADLINE_S)
    stop_client(publisher)
    assert broker.stop() == 0

    assert (broker.persistence_dir / "mosquitto.db").is_file()
    assert "Error saving" not in broker.log_path.read_text()

    restarted = mosquitto_factory(data_dir=data_dir)
    received: list[bytes] = []
    subscriber = mqtt_client(restarted)
    subscriber.on_message = lambda _client, _userdata, message: received.append(
        bytes(message.payload)
    )
    subscriber.subscribe(topic, qos=1)
    try:
        wait_until(lambda: received == [b"kept"], "the retained message after restart")
    finally:
        stop_client(subscriber)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


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


async def test_supervisor_restarts_a_killed_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a SIGKILL the supervisor logs the exit code and brings the broker back."""
    caplog.set_level(logging.INFO, logger="fieldhub.broker")
    supervisor = BrokerSupervisor(
        data_dir=tmp_path,
        port=free_port(),
        restart_backoff_initial_s=0.05,
        restart_backoff_max_s=0.1,
    )
    async with supervisor:
        assert supervisor.is_running
        assert supervisor.url == supervisor.process.url
        first_pid = supervisor.process.pid

        supervisor.process.kill()
        await async_wait_until(lambda: supervisor.restarts == 1, "the restart")

        assert supervisor.is_running
        assert supervisor.process.pid != first_pid
        handshake = await asyncio.to_thread(
            mqtt_handshake, supervisor.process.host, supervisor.process.port
        )
        assert handshake == CONNACK_ACCEPTED
        assert any(
            "exited unexpectedly with code -9" in r.getMessage()
            and "restarting in" in r.getMessage()
            for r in caplog.records
        )
        last_pid = supervisor.process.pid
        assert last_pid is not None
    assert is_gone(last_pid)
    assert supervisor.process.returncode == 0  # stopped by SIGTERM, cleanly
    assert supervisor.restarts == 1


async def test_supervisor_stop_is_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A requested stop is not restarted and not logged as an unexpected exit."""
    supervisor = BrokerSupervisor(data_dir=tmp_path, port=free_port())
    await supervisor.start()
    tasks = {task.get_name() for task in asyncio.all_tasks()}
    assert "broker.supervise" in tasks
    await supervisor.stop()
    assert not supervisor.is_running
    assert supervisor.process.returncode == 0
    assert supervisor.restarts == 0
    assert not any("unexpectedly" in r.getMessage() for r in caplog.records)
    assert "broker.supervise" not in {task.get_name() for task in asyncio.all_tasks()}
