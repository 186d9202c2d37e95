"""Simulated devices and fleets against a real Mosquitto, observed through fieldhub.mqtt."""

from __future__ import annotations

import functools
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import orjson
import psutil
import pytest

from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import MqttEndpoint, parse_mqtt_url
from fieldhub.mqtt.publisher import MqttPublisher
from fieldhub.mqtt.subscriber import AckToken, MqttSubscriber
from fieldhub.net import free_port
from fieldhub.protocol.messages import InboundMessage
from fieldhub.sim import (
    NativeDevice,
    ReadingsGateway,
    SensorModel,
    SimStats,
    fleet,
    mac_for_index,
    readings_gateway_payload,
    readings_temperature_payload,
    rssi_percent,
    run_sim,
    start_sim_in_background,
)
from support.waiting import wait_until

# Loopback MQTT round trips take about a millisecond; these only bound how long a broken test
# hangs before it fails with a message.
DEADLINE_S = 10.0
# The firmware's logged uptime (docs/protocol.md); a frozen clock makes the gateway's bytes
# predictable.
FIRMWARE_UPTIME_MS = 1_835_587
FROZEN_CLOCK_MS = 50_000_000
GATEWAY_LAYOUT = re.compile(rb'^\{"macAddress":"[0-9A-F:]{17}", "timestamp":\d+, "rssi":\d+\}$')


def unique_suffix() -> str:
    """A short id no other test or test run uses (the session broker keeps retained messages)."""
    return uuid.uuid4().hex[:10]


def unique_mac() -> str:
    """A simulator MAC unlikely to be used by any other test on the shared broker."""
    return mac_for_index(random.randrange(0x100000, 0xFFFFFF))


class Observer:
    """A subscriber that records every message it receives and acknowledges it at once."""

    def __init__(self, *, endpoint: MqttEndpoint, filters: Sequence[str]) -> None:
        self.ready_topic = f"fieldhub-test/{unique_suffix()}/ready"
        self._lock = threading.Lock()
        self._messages: list[InboundMessage] = []
        self._endpoint = endpoint
        self._subscriber = MqttSubscriber(
            endpoint=endpoint,
            client_id=f"sim-test-observer-{unique_suffix()}",
            filters=[*filters, self.ready_topic],
            on_message=self._on_message,
            protocol=5,
        )

    def start(self) -> None:
        """Subscribe and return once the subscription is active on the broker.

        MqttSubscriber says when it is connected, not when the broker has granted the
        subscription; a retained marker on our own topic arrives only once it has, and all
        filters go out in one SUBSCRIBE, so they are all active then.
        """
        self._subscriber.start()
        marker = MqttPublisher(
            endpoint=self._endpoint, client_id=f"sim-test-mark-{unique_suffix()}"
        )
        marker.start()
        try:
            marker.publish(self.ready_topic, b"ready", qos=1, retain=True).result(DEADLINE_S)
            wait_until(lambda: self.on(self.ready_topic), what="the observer's subscription")
            # An empty retained payload deletes the marker, so the session broker keeps nothing.
            marker.publish(self.ready_topic, b"", qos=1, retain=True).result(DEADLINE_S)
        finally:
            marker.stop()

    def stop(self) -> None:
        """Disconnect the subscriber."""
        self._subscriber.stop()

    def on(self, topic: str) -> list[InboundMessage]:
        """Messages received so far on `topic`, in arrival order."""
        with self._lock:
            return [message for message in self._messages if message.topic == topic]

    def wait_for(self, topic: str, count: int) -> list[InboundMessage]:
        """Wait until `count` messages arrived on `topic`; return them."""
        return wait_until(
            lambda: self.on(topic) if len(self.on(topic)) >= count else [],
            what=f"{count} message(s) on {topic}",
        )

    def count(self) -> int:
        """Messages received so far, not counting the readiness marker."""
        with self._lock:
            return sum(1 for message in self._messages if message.topic != self.ready_topic)

    def _on_message(self, message: InboundMessage, token: AckToken | None) -> None:
        with self._lock:
            self._messages.append(message)
        if token is not None:
            self._subscriber.ack([token])


ObserverFactory = Callable[[MqttEndpoint, Sequence[str]], Observer]


@pytest.fixture
def observe() -> Iterator[ObserverFactory]:
    """Start observers (`observe(endpoint, filters)`); all are stopped at teardown."""
    started: list[Observer] = []

    def make(endpoint: MqttEndpoint, filters: Sequence[str]) -> Observer:
        observer = Observer(endpoint=endpoint, filters=filters)
        observer.start()
        started.append(observer)
        return observer

    yield make
    for observer in started:
        observer.stop()


@pytest.fixture
def broker(mosquitto: MosquittoProcess) -> MqttEndpoint:
    """The session broker as an endpoint."""
    return parse_mqtt_url(mosquitto.url)


@pytest.fixture
def private_broker(mosquitto_factory: Callable[..., MosquittoProcess]) -> MqttEndpoint:
    """A broker of this test's own, for fleets whose device ids are fixed (`sim-0001`, ...)."""
    return parse_mqtt_url(mosquitto_factory().url)


def connections_to(port: int) -> int:
    """Established TCP connections from this process to `port`."""
    return sum(
        1
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    )


def test_gateway_message_arrives_exactly_and_stays_retained(
    broker: MqttEndpoint, observe: ObserverFactory
) -> None:
    """A gateway publishes the firmware's exact bytes on /readings/gateway/{MAC}, retained."""
    mac = unique_mac()
    topic = f"/readings/gateway/{mac}"
    gateway = ReadingsGateway(
        endpoint=broker,
        mac=mac,
        seed=11,
        uptime_offset_ms=FIRMWARE_UPTIME_MS,
        clock_ms=lambda: FROZEN_CLOCK_MS,
    )
    expected_rssi = rssi_percent(SensorModel(11).sample().rssi_dbm)
    expected = readings_gateway_payload(mac, FIRMWARE_UPTIME_MS, expected_rssi)
    assert expected.startswith(f'{{"macAddress":"{mac}", "timestamp":1835587, "rssi":'.encode())
    live = observe(broker, [topic])

    assert gateway.publish_once()

    [message] = wait_until(lambda: live.on(topic), what="the gateway message")
    assert message.payload == expected
    assert message.qos == 1
    late = observe(broker, [topic])
    [retained] = wait_until(lambda: late.on(topic), what="the retained gateway message")
    assert retained.retain
    assert retained.payload == expected


def test_gateway_drops_its_connection_after_each_message(broker: MqttEndpoint) -> None:
    """Every cycle opens a fresh connection and leaves none open behind it."""
    gateway = ReadingsGateway(endpoint=broker, mac=unique_mac())
    baseline = connections_to(broker.port)
    for _ in range(3):
        assert gateway.publish_once()
        assert not gateway.busy
        wait_until(
            lambda: connections_to(broker.port) == baseline,
            what="the gateway's connection to close",
        )
    assert (gateway.cycles_ok, gateway.cycles_failed) == (3, 0)
    assert gateway.counter.snapshot().acked == 3


def test_gateway_timestamp_is_uptime_not_a_date(
    broker: MqttEndpoint, observe: ObserverFactory
) -> None:
    """`timestamp` is milliseconds since the simulated boot and advances with the clock."""
    mac = unique_mac()
    topic = f"/readings/gateway/{mac}"
    now_ms = [FROZEN_CLOCK_MS]
    gateway = ReadingsGateway(endpoint=broker, mac=mac, clock_ms=lambda: now_ms[0])
    watcher = observe(broker, [topic])
    for _ in range(2):
        assert gateway.publish_once()
        now_ms[0] += 30_000
    messages = watcher.wait_for(topic, 2)
    assert all(GATEWAY_LAYOUT.match(message.payload) for message in messages)
    assert [orjson.loads(message.payload)["timestamp"] for message in messages] == [0, 30_000]


def test_gateway_can_publish_temperature_the_same_way(
    broker: MqttEndpoint, observe: ObserverFactory
) -> None:
    """With the flag, /readings/temperature/{MAC} gets a retained one-decimal reading too."""
    mac = unique_mac()
    gateway = ReadingsGateway(
        endpoint=broker,
        mac=mac,
        seed=4,
        publish_temperature=True,
        uptime_offset_ms=93_387,
        clock_ms=lambda: FROZEN_CLOCK_MS,
    )
    sample = SensorModel(4).sample()

    assert gateway.publish_once()

    watcher = observe(broker, [gateway.gateway_topic, gateway.temperature_topic])
    [temperature] = wait_until(lambda: watcher.on(f"/readings/temperature/{mac}"), what="temp")
    [gateway_message] = wait_until(lambda: watcher.on(gateway.gateway_topic), what="gateway")
    assert temperature.retain
    assert gateway_message.retain
    assert temperature.payload == readings_temperature_payload(mac, 93_387, sample.temperature)
    assert gateway_message.payload == readings_gateway_payload(
        mac, 93_387, rssi_percent(sample.rssi_dbm)
    )


def test_native_device_reports_online_telemetry_and_its_will(
    broker: MqttEndpoint, observe: ObserverFactory
) -> None:
    """Retained `online`, telemetry with increasing seq and ts, and `offline` from the will."""
    device = NativeDevice(endpoint=broker, device_id=f"sim-test-{unique_suffix()}", seed=5)
    status_topic = f"devices/{device.device_id}/status"
    telemetry_topic = f"devices/{device.device_id}/telemetry"
    device.start()
    try:
        assert device.wait_connected(DEADLINE_S)
        wait_until(lambda: device.counter.snapshot().acked >= 1, what="`online` to be acked")
        watcher = observe(broker, [status_topic, telemetry_topic])
        [status] = wait_until(lambda: watcher.on(status_topic), what="the retained status")
        assert (status.payload, status.retain) == (b"online", True)

        for _ in range(5):
            assert device.publish_telemetry() is not None
        messages = watcher.wait_for(telemetry_topic, 5)
        decoded = [orjson.loads(message.payload) for message in messages]
        assert [payload["seq"] for payload in decoded] == [0, 1, 2, 3, 4]
        stamps = [payload["ts"] for payload in decoded]
        assert stamps == sorted(set(stamps))
        assert abs(stamps[-1] - time.time() * 1000) < 60_000  # epoch ms, not uptime
        assert all(message.qos == 1 and not message.retain for message in messages)

        device.crash()

        wait_until(
            lambda: [m for m in watcher.on(status_topic) if m.payload == b"offline"],
            what="the broker to publish the `offline` will",
        )
        late = observe(broker, [status_topic])
        [retained] = wait_until(lambda: late.on(status_topic), what="the retained will")
        assert (retained.payload, retained.retain) == (b"offline", True)
    finally:
        device.close()


def test_native_device_stop_leaves_offline_retained(
    broker: MqttEndpoint, observe: ObserverFactory
) -> None:
    """A graceful stop publishes retained `offline` before disconnecting."""
    device = NativeDevice(endpoint=broker, device_id=f"sim-test-{unique_suffix()}")
    device.start()
    assert device.wait_connected(DEADLINE_S)
    wait_until(lambda: device.counter.snapshot().acked >= 1, what="`online` to be acked")

    assert device.stop()

    watcher = observe(broker, [device.status_topic])
    [status] = wait_until(lambda: watcher.on(device.status_topic), what="the retained status")
    assert (status.payload, status.retain) == (b"offline", True)
    assert device.counter.snapshot() == SimStats(sent=2, acked=2)


def test_native_device_announces_online_again_after_a_reconnect(
    broker: MqttEndpoint, observe: ObserverFactory
) -> None:
    """After the broker dropped it (will `offline`), the device says `online` again."""
    device = NativeDevice(endpoint=broker, device_id=f"sim-test-{unique_suffix()}")
    device.start()
    try:
        assert device.wait_connected(DEADLINE_S)
        watcher = observe(broker, [device.status_topic])
        wait_until(lambda: watcher.on(device.status_topic), what="the first `online`")
        # A second client with the device's id takes the session over: the broker drops the
        # device (publishing its will), and the device reconnects by itself a second later.
        impostor = MqttPublisher(endpoint=broker, client_id=device.device_id)
        impostor.start()
        assert impostor.wait_connected(DEADLINE_S)
        impostor.stop()

        def statuses() -> list[bytes]:
            device.maintain()  # what the fleet's scheduler does on every tick
            return [message.payload for message in watcher.on(device.status_topic)]

        wait_until(lambda: statuses()[-2:] == [b"offline", b"online"], what="online again")
        assert statuses()[0] == b"online"
    finally:
        device.close()


def test_mixed_fleet_publishes_both_profiles(
    private_broker: MqttEndpoint, observe: ObserverFactory
) -> None:
    """A mixed fleet sends native telemetry and firmware gateway messages, all acknowledged."""
    # Every topic of every kind, so the count of messages seen matches the count acked.
    watcher = observe(
        private_broker,
        ["devices/#", "/readings/gateway/+", "iot/node/+/+", "sensor/+/+"],
    )
    lines: list[str] = []

    stats = run_sim(
        endpoint=private_broker,
        profile="mixed",
        # mixed cycles native, readings, fastapi, iot-node, sensor: two natives and two gateways.
        devices=7,
        rate_hz=5.0,
        duration_s=2.0,
        stop=threading.Event(),
        seed=1,
        log=lines.append,
    )

    assert stats.sent > 0
    assert (stats.acked, stats.failed) == (stats.sent, 0)
    wait_until(lambda: watcher.count() == stats.acked, what="every acked message to arrive")
    for device_id in ("sim-0001", "sim-0002"):
        telemetry = watcher.on(f"devices/{device_id}/telemetry")
        seqs = [orjson.loads(message.payload)["seq"] for message in telemetry]
        # How many fit in 2 s depends on the machine's load (the gateway firmware opens a new
        # connection per message); two are enough to check order and layout.
        assert len(seqs) >= 2
        assert seqs == list(range(len(seqs)))
        statuses = [message.payload for message in watcher.on(f"devices/{device_id}/status")]
        assert statuses == [b"online", b"offline"]
    for mac in ("3C:E9:0E:00:00:01", "3C:E9:0E:00:00:02"):
        messages = watcher.on(f"/readings/gateway/{mac}")
        assert len(messages) >= 2
        assert all(GATEWAY_LAYOUT.match(message.payload) for message in messages)
        stamps = [orjson.loads(message.payload)["timestamp"] for message in messages]
        assert stamps == sorted(stamps)
    assert "sent" in lines[-1]
    # Every device's network thread is gone: nothing of the fleet outlives run_sim.
    wait_until(
        lambda: (
            not [t.name for t in threading.enumerate() if "sim-000" in t.name or "3C:E9" in t.name]
        ),
        what="the fleet's client threads to end",
    )


def test_background_fleet_stops_gracefully_on_its_event(
    private_broker: MqttEndpoint, observe: ObserverFactory
) -> None:
    """`start_sim_in_background` runs until its event is set, then devices go `offline`."""
    watcher = observe(private_broker, ["devices/+/telemetry"])
    thread, stop = start_sim_in_background(
        endpoint=private_broker, profile="native", devices=2, rate_hz=20.0, log=lambda line: None
    )
    try:
        watcher.wait_for("devices/sim-0001/telemetry", 1)
        watcher.wait_for("devices/sim-0002/telemetry", 1)
    finally:
        stop.set()
        thread.join(DEADLINE_S)
    assert not thread.is_alive()
    late = observe(private_broker, ["devices/+/status"])
    for topic in ("devices/sim-0001/status", "devices/sim-0002/status"):
        [status] = wait_until(functools.partial(late.on, topic), what=topic)
        assert (status.payload, status.retain) == (b"offline", True)


def test_fleet_without_a_broker_ends_on_time_and_counts_skips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With nothing listening, the fleet ends about on time; nothing is acked, missed slots skip."""
    monkeypatch.setattr(fleet, "CONNECT_WAIT_S", 0.1)
    nowhere = MqttEndpoint(host="127.0.0.1", port=free_port())
    lines: list[str] = []
    started = time.monotonic()

    stats = run_sim(
        endpoint=nowhere,
        profile="mixed",
        devices=2,
        rate_hz=5.0,
        duration_s=1.0,
        stop=threading.Event(),
        log=lines.append,
    )

    assert time.monotonic() - started < 5.0
    assert stats.acked == 0
    assert stats.failed == stats.sent
    assert stats.skipped > 0
    assert any("only 0 of 1 native devices connected" in line for line in lines)
