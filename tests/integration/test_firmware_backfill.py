"""The firmware core (as the native simulator runs it) against a real broker and `fieldhub up`:
offline buffering and backfill land exactly once, and commands are acked and echoed."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from pathlib import Path

from conftest import MosquittoFactory
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.mqtt.subscriber import AckToken, MqttSubscriber
from fieldhub.protocol.messages import InboundMessage
from fieldhub.sim.native import NativeDevice
from fieldhub.sim.payloads import epoch_ms
from fieldhub_node.buffer import next_batch
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher, publish_all

# Readings the node takes while its broker is down: more than one backfill batch would need at
# the default 64 entries, so the test also covers batch boundaries.
OFFLINE_READINGS = 90
LIVE_READINGS = 3
# The node's clock moves one second per reading, starting this far in the past, so every device
# time is a plausible date that ingest keeps as the reading time.
START_AGO_MS = 10 * 60 * 1000
DEADLINE_S = 30.0


class StepClock:
    """Epoch ms that move only when the test says so: the test knows every `ts` the node sends."""

    def __init__(self) -> None:
        self.now_ms = epoch_ms() - START_AGO_MS

    def __call__(self) -> int:
        return self.now_ms


def stored(db: Path, device_id: str, metric: str) -> list[tuple[int, float]]:
    """(ts_us, value) of one metric of one device, read-only from fieldhub's database."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT r.ts, r.value FROM readings r JOIN devices d ON d.id = r.device_id "
            "JOIN metrics m ON m.id = r.metric_id WHERE d.uid = ? AND m.name = ? ORDER BY r.ts",
            (device_id, metric),
        ).fetchall()
    except sqlite3.OperationalError:
        return []  # schema not created yet
    finally:
        conn.close()
    return [(int(ts), float(value)) for ts, value in rows]


def test_offline_readings_are_backfilled_once_with_their_device_time(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    """Broker down: the node buffers; broker back: every offline reading is stored exactly once
    at its device time, a resent batch adds nothing, and the node is online again."""
    broker_dir = tmp_path / "broker"
    broker = mosquitto_factory(data_dir=broker_dir)
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url).start()
    device_id = f"fw-{uuid.uuid4().hex[:8]}"
    clock = StepClock()
    device = NativeDevice(endpoint=parse_mqtt_url(broker.url), device_id=device_id, clock_ms=clock)
    device.start()
    try:
        assert device.wait_connected(DEADLINE_S)
        for _ in range(LIVE_READINGS):
            clock.now_ms += 1000
            future = device.publish_telemetry()
            assert future is not None
            future.result(timeout=DEADLINE_S)

        # SIGTERM: Mosquitto saves fieldhub's persistent session, so the ingest subscription
        # survives the restart and nothing published after it is missed.
        broker.stop()
        wait_until(lambda: not device.connected, what="the node to see its broker go")
        offline_ts_ms = []
        for _ in range(OFFLINE_READINGS):
            clock.now_ms += 1000
            assert device.publish_telemetry() is None  # buffered, not published
            offline_ts_ms.append(clock.now_ms)
        assert device.buffered == OFFLINE_READINGS
        first_batch = next_batch(device.node.buffer)
        assert first_batch is not None
        assert 1 < len(json.loads(first_batch[0])) < OFFLINE_READINGS  # more than one batch

        broker = mosquitto_factory(data_dir=broker_dir, port=broker.port)

        def drained() -> bool:
            device.maintain()  # what the fleet's scheduler does on every tick
            return device.connected and device.buffered == 0 and device.unacked == 0

        wait_until(drained, timeout_s=DEADLINE_S, what="the buffer to drain after reconnect")
        expected_seq = {
            ts_ms * 1000: float(LIVE_READINGS + index) for index, ts_ms in enumerate(offline_ts_ms)
        }

        def offline_rows() -> list[tuple[int, float]]:
            return [row for row in stored(fh.db_path, device_id, "seq") if row[0] in expected_seq]

        wait_until(
            lambda: len(offline_rows()) == OFFLINE_READINGS,
            timeout_s=DEADLINE_S,
            what="every offline reading to be stored",
        )
        assert dict(offline_rows()) == expected_seq
        for metric in ("temperature", "humidity", "rssi", "window_position"):
            times = [ts for ts, _ in stored(fh.db_path, device_id, metric) if ts in expected_seq]
            assert sorted(times) == sorted(expected_seq), metric

        # The same batch again (a PUBACK lost on the way back makes the node resend it): the
        # (device, metric, ts) key absorbs it.
        duplicates_before = fh.metric("fieldhub_readings_duplicate_total")
        entries = json.loads(first_batch[0])
        resent_readings = sum(len(entry["values"]) for entry in entries)
        publisher = connected_publisher(broker.url)
        try:
            publish_all(publisher, [(device.telemetry_topic, first_batch[0])])
        finally:
            publisher.stop()
        wait_until(
            lambda: (
                fh.metric("fieldhub_readings_duplicate_total")
                >= duplicates_before + resent_readings
            ),
            timeout_s=DEADLINE_S,
            what="the resent batch to reach the store",
        )
        assert dict(offline_rows()) == expected_seq
        total_seq = stored(fh.db_path, device_id, "seq")
        assert len(total_seq) == LIVE_READINGS + OFFLINE_READINGS
        assert [value for _, value in total_seq] == [
            float(n) for n in range(LIVE_READINGS + OFFLINE_READINGS)
        ]

        wait_until(
            lambda: fh.get(f"/api/v1/devices/{device_id}").json()["presence"] == "online",
            what="presence online after the reconnect",
        )
    finally:
        device.stop()
        fh.stop()


def test_a_command_is_acked_once_and_the_window_echoed_in_telemetry(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    """set_window over MQTT: one ack on commands/ack (also for a redelivery), the new position
    in the node's next telemetry as fieldhub stores it."""
    broker = mosquitto_factory()
    fh = FieldhubProcess(data_dir=tmp_path / "fh", mqtt_url=broker.url).start()
    device_id = f"fw-{uuid.uuid4().hex[:8]}"
    device = NativeDevice(endpoint=parse_mqtt_url(broker.url), device_id=device_id)
    acks: list[InboundMessage] = []
    lock = threading.Lock()

    def on_ack(message: InboundMessage, token: AckToken | None) -> None:
        with lock:
            acks.append(message)
        if token is not None:
            watcher.ack([token])

    watcher = MqttSubscriber(
        endpoint=parse_mqtt_url(broker.url),
        client_id=f"ack-watch-{uuid.uuid4().hex[:8]}",
        filters=[f"devices/{device_id}/commands/ack"],
        on_message=on_ack,
    )
    watcher.start()
    device.start()
    publisher = connected_publisher(broker.url)
    try:
        wait_until(lambda: watcher.connected, what="the ack watcher to subscribe")
        assert device.wait_connected(DEADLINE_S)
        command_id = str(uuid.uuid4())
        body = {"id": command_id, "name": "set_window", "params": {"position": 65}}
        command = json.dumps(body).encode()
        topic = f"devices/{device_id}/commands"
        publish_all(publisher, [(topic, command), (topic, command)])  # sent twice: runs once

        def received() -> list[dict[str, object]]:
            with lock:
                return [json.loads(message.payload) for message in acks]

        wait_until(lambda: len(received()) == 2, what="an ack for each delivery")
        first, second = received()
        assert first == second
        assert first == {
            "id": command_id, "status": "ok", "result": {"position": 65, "pulse_us": 1650},
        }  # fmt: skip
        assert device.node.commands_executed == 1
        assert device.window_pulse_us == 1650

        future = device.publish_telemetry()
        assert future is not None
        future.result(timeout=DEADLINE_S)
        wait_until(
            lambda: (
                [value for _, value in stored(fh.db_path, device_id, "window_position")][-1:]
                == [65.0]
            ),
            what="the window position echo to be stored",
        )

        bad = {"id": str(uuid.uuid4()), "name": "set_window", "params": {"position": 140}}
        publish_all(publisher, [(topic, json.dumps(bad).encode())])
        wait_until(lambda: len(received()) == 3, what="the error ack")
        error = received()[2]
        assert error["status"] == "error"
        assert "0-100" in str(error["error"])
        assert device.window_position == 65
    finally:
        publisher.stop()
        device.stop()
        watcher.stop()
        fh.stop()
