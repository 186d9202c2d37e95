"""`fieldhub up --no-ingest` beside `fieldhub ingest --workers 2`: the API shows what the
workers store without storing it a second time, and still tracks commands to their end (acks
written by whichever process is first, state echoes decided by the API)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from conftest import start_mosquitto
from fieldhub.broker import MosquittoProcess
from fieldhub.mqtt.endpoint import parse_mqtt_url
from fieldhub.sim.native import NativeDevice
from support.commands import post_command, wait_device
from support.fieldhub_process import FieldhubProcess, wait_until
from support.mqtt import connected_publisher
from support.postgres import PostgresServer
from support.workers import Workers, query

COMMANDS = 20
WAIT_S = 10.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    process = start_mosquitto(tmp_path_factory.mktemp("api-workers-broker"))
    yield process
    process.stop()


@pytest.mark.timeout(300)
def test_api_serves_and_commands_what_workers_store(
    broker: MosquittoProcess, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    db_url = postgres_server.new_database()
    workers = Workers(2, db_url, broker.url, tmp_path / "workers.log")
    api = FieldhubProcess(
        data_dir=tmp_path / "api",
        mqtt_url=broker.url,
        env={"FIELDHUB_MQTT_CLIENT_ID": workers.client_id},
        extra_args=["--no-ingest", "--db", db_url],
    )
    with ExitStack() as closing:
        closing.callback(workers.stop)
        api.start()
        closing.callback(api.stop)
        device = NativeDevice(endpoint=parse_mqtt_url(broker.url), device_id="beside-1")
        device.start()
        closing.callback(device.stop)
        assert device.wait_connected(10)
        # The device list comes from the workers' rows: the API process stores nothing itself.
        wait_device(api, "beside-1", presence="online", command_format="native")

        states = []
        answered_s = []
        for position in range(COMMANDS):
            started = time.monotonic()
            response = post_command(
                api,
                "beside-1",
                {"name": "set_window", "params": {"position": position}},
                wait_s=WAIT_S,
            )
            answered_s.append(time.monotonic() - started)
            assert response.status_code in (200, 201), response.text
            states.append(response.json()["state"])
        # Each ack was stored by the API or by a worker, and the API answered either way, when
        # the command ended rather than at the end of wait_s (it once missed every ack a worker
        # stored first: a device created by a worker was unknown to the API's store).
        assert states == ["succeeded"] * COMMANDS
        assert max(answered_s) < WAIT_S / 2, answered_s

        for _ in range(5):
            future = device.publish_telemetry()
            assert future is not None
            future.result(10)
        temperature_sql = (
            "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device_id "
            "JOIN metrics m ON m.id = r.metric_id "
            "WHERE d.uid = 'beside-1' AND m.name = 'temperature'"
        )
        wait_until(lambda: query(db_url, temperature_sql) >= 5, what="the readings")
        body = api.get("/api/v1/devices/beside-1/readings", metric="temperature").json()
        assert len(body["data"]) == query(db_url, temperature_sql)

        # A dead letter has no key to deduplicate on: a second writer would make it two.
        publisher = connected_publisher(broker.url)
        closing.callback(publisher.stop)
        publisher.publish("devices/beside-1/telemetry", b"{not json", qos=1).result(10)
        dead_sql = "SELECT count(*) FROM dead_letters WHERE device_uid = 'beside-1'"
        wait_until(lambda: query(db_url, dead_sql) >= 1, what="the dead letter")
        time.sleep(1)  # a copy written by the API process would have landed by now
        assert query(db_url, dead_sql) == 1
