"""Run as root, the broker drops to an unprivileged user and can still save its state."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from broker.probes import DEADLINE_S, mqtt_client, stop_client, wait_until
from fieldhub.broker import MosquittoProcess


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


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
