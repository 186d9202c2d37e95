"""The written mosquitto.conf, and the raised limits it gives a running Mosquitto."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.probes import mqtt_client, stop_client, wait_until
from fieldhub.broker import MosquittoProcess, render_mosquitto_conf
from fieldhub.broker import config as broker_config
from fieldhub.broker.config import LegacyListener, SecurityFiles

# Mosquitto's default max_inflight_messages: the number the raised limit must beat.
MOSQUITTO_DEFAULT_INFLIGHT = 20


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


def test_demo_mode_is_one_anonymous_listener(tmp_path: Path) -> None:
    """Without security files: no per-listener settings, no password, no extra listener."""
    text = render_mosquitto_conf(host="127.0.0.1", port=1884, persistence_dir=tmp_path)
    assert "per_listener_settings" not in text
    assert "password_file" not in text
    assert [line for line in text.splitlines() if line.startswith("listener")] == [
        "listener 1884 127.0.0.1"
    ]
    with pytest.raises(ValueError, match="need security files"):
        render_mosquitto_conf(
            host="127.0.0.1",
            port=1884,
            persistence_dir=tmp_path,
            legacy=LegacyListener("127.0.0.1", 1885),
        )


def test_secured_listeners_need_distinct_ports(tmp_path: Path) -> None:
    files = SecurityFiles(tmp_path / "p", tmp_path / "a", tmp_path / "lp", tmp_path / "la")
    with pytest.raises(ValueError, match="distinct ports"):
        render_mosquitto_conf(
            host="127.0.0.1",
            port=1884,
            persistence_dir=tmp_path,
            security=files,
            legacy=LegacyListener("127.0.0.1", 1884),
        )
