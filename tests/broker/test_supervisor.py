"""The supervisor against the real Mosquitto: restart after a crash, a clean requested stop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from broker.clients import connect
from broker.probes import CONNACK_ACCEPTED, async_wait_until, is_gone, mqtt_handshake
from fieldhub.broker import BrokerAccess, BrokerSupervisor, DeviceCredential, hash_password
from fieldhub.net import free_port


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


async def test_restart_after_a_crash_applies_the_last_reloaded_access(
    reachable_dir: Path,
) -> None:
    """A device added by reload() can still log in after the broker crashed and came back."""
    first = DeviceCredential("dev-a", hash_password("secret a"))
    added = DeviceCredential("dev-b", hash_password("secret b"))
    supervisor = BrokerSupervisor(
        data_dir=reachable_dir,
        port=free_port(),
        access=BrokerAccess(devices=(first,)),
        restart_backoff_initial_s=0.05,
        restart_backoff_max_s=0.1,
    )
    async with supervisor:
        await supervisor.reload(BrokerAccess(devices=(first, added)))
        supervisor.process.kill()
        await async_wait_until(lambda: supervisor.restarts == 1, "the restart")
        client = await asyncio.to_thread(
            connect,
            supervisor.process.host,
            supervisor.process.port,
            username="dev-b",
            password="secret b",
        )
        await asyncio.to_thread(client.stop)
