"""A client that connects with ingest's client id takes over its session and acknowledges what
was queued for it. fieldhub cannot stop that on a broker that lets the client in, but it must not
stay silent: the subscriber reports the takeover, so health says `degraded` and the log says why."""

from __future__ import annotations

import time
import uuid

import paho.mqtt.client as paho
import pytest

from conftest import MosquittoFactory
from fieldhub.broker.blocking import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.mqtt.subscriber import MqttSubscriber
from support.waiting import wait_until


def _subscriber(url: str, client_id: str, protocol: int) -> MqttSubscriber:
    return MqttSubscriber(
        endpoint=parse_mqtt_url(url),
        client_id=client_id,
        filters=[f"takeover/{client_id}/#"],
        on_message=lambda message, token: None,
        protocol=protocol,
    )


def _intruder(port: int, client_id: str, protocol: int) -> paho.Client:
    """Connects once with the victim's client id and a persistent session, as the probe did."""
    version = paho.MQTTv5 if protocol == 5 else paho.MQTTv311
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=version,
        **({} if protocol == 5 else {"clean_session": False}),
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_mqtt5_takeover_is_reported_at_once(mosquitto: MosquittoProcess) -> None:
    client_id = f"victim-{uuid.uuid4().hex[:8]}"
    subscriber = _subscriber(mosquitto.url, client_id, 5)
    subscriber.start()
    intruder = None
    try:
        wait_until(lambda: subscriber.connected, timeout_s=10)
        assert subscriber.problem is None
        intruder = _intruder(mosquitto.port, client_id, 5)
        wait_until(lambda: subscriber.problem is not None, timeout_s=10)
        assert "session takeover" in (subscriber.problem or "")
        assert client_id in (subscriber.problem or "")
    finally:
        if intruder is not None:
            intruder.loop_stop()
            intruder.disconnect()
        subscriber.stop()


@pytest.mark.timeout(60)
def test_mqtt311_clients_fighting_over_one_id_are_reported(mosquitto: MosquittoProcess) -> None:
    client_id = f"victim-{uuid.uuid4().hex[:8]}"
    subscriber = _subscriber(mosquitto.url, client_id, 4)
    subscriber.start()
    intruders: list[paho.Client] = []
    try:
        wait_until(lambda: subscriber.connected, timeout_s=10)
        # Each intruder connect kicks the subscriber, which reconnects (and kicks the intruder).
        for _ in range(3):
            wait_until(lambda: subscriber.connected, timeout_s=10)
            intruders.append(_intruder(mosquitto.port, client_id, 4))
            wait_until(lambda: not subscriber.connected, timeout_s=10)
            intruders[-1].loop_stop()  # no auto-reconnect: the next round is a fresh intruder
        wait_until(lambda: subscriber.problem is not None, timeout_s=10)
        assert "session takeover" in (subscriber.problem or "")
    finally:
        for intruder in intruders:
            intruder.disconnect()
        subscriber.stop()


def test_one_lost_connection_is_not_a_takeover(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory()
    subscriber = _subscriber(broker.url, f"alone-{uuid.uuid4().hex[:8]}", 4)
    subscriber.start()
    try:
        wait_until(lambda: subscriber.connected, timeout_s=10)
        broker.stop()
        wait_until(lambda: not subscriber.connected, timeout_s=10)
        time.sleep(0.2)
        assert subscriber.problem is None
    finally:
        subscriber.stop()
