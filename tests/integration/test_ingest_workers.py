"""`fieldhub ingest --workers N`: workers on one shared subscription store a QoS 1 burst once,
and a worker killed with SIGKILL mid-burst loses nothing (it is started again and its session
hands back what it had not stored)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from conftest import start_mosquitto
from fieldhub.broker import MosquittoProcess
from support.fieldhub_process import FIELDHUB, wait_until
from support.mqtt import connected_publisher
from support.postgres import PostgresServer

BURST = 200_000
# The kill test needs a burst long enough to kill a worker in the middle of it, not 200k: the
# mechanism is the same, and the suite stays within its time budget.
KILL_BURST = 50_000
DEVICES = 100
# The publisher keeps this many QoS 1 publishes unacknowledged; the rest queue in its client.
PUBLISH_TIMEOUT_S = 120.0
STORE_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    process = start_mosquitto(tmp_path_factory.mktemp("workers-broker"))
    yield process
    process.stop()


def query(url: str, sql: str) -> int:
    """One number from the database; -1 while the workers have not created the schema yet."""

    async def run() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval(sql))
        except asyncpg.UndefinedTableError:
            return -1
        finally:
            await conn.close()

    return asyncio.run(run())


class Workers:
    """`fieldhub ingest --workers N` as a subprocess."""

    def __init__(self, count: int, db_url: str, mqtt_url: str, log: Path) -> None:
        env = {
            **os.environ,
            "FIELDHUB_MQTT_CLIENT_ID": f"fh-workers-{uuid.uuid4().hex[:8]}",
            "FIELDHUB_LOG_LEVEL": "info",
        }
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [str(FIELDHUB), "ingest", "--workers", str(count), "--db", db_url,
             "--mqtt-url", mqtt_url],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        self.count = count

    def children(self) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.proc.pid).children() if p.is_running()]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        return code


def publish_burst(mqtt_url: str, *, with_time: bool, count: int = BURST) -> None:
    """`count` QoS 1 messages, one reading each; `n` numbers them."""
    publisher = connected_publisher(mqtt_url)
    base_ms = int(time.time() * 1000) - count  # distinct device times, in the past
    futures = []
    for n in range(count):
        body = f'{{"n": {n}, "ts": {base_ms + n}}}' if with_time else f'{{"n": {n}}}'
        futures.append(
            publisher.publish(f"devices/wk-{n % DEVICES:03d}/telemetry", body.encode(), qos=1)
        )
    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    for future in futures:
        future.result(timeout=max(0.1, deadline - time.monotonic()))
    publisher.stop()


def started(workers: Workers, db_url: str, mqtt_url: str) -> None:
    """Wait until every worker runs and probes are stored (a probe published before the
    workers' subscriptions exist is lost, so one goes out per poll)."""
    wait_until(lambda: len(workers.children()) == workers.count, what="the workers to start")
    publisher = connected_publisher(mqtt_url)

    def probe_stored() -> bool:
        publisher.publish("devices/probe/telemetry", b'{"probe": 1}', qos=1).result(10)
        return query(db_url, "SELECT count(*) FROM devices WHERE uid = 'probe'") == 1

    try:
        wait_until(probe_stored, timeout_s=30, interval_s=0.5, what="a probe to be stored")
    finally:
        publisher.stop()


def stored_n(db_url: str) -> tuple[int, int]:
    """(readings of `n`, distinct values of `n`)."""
    sql = "SELECT {} FROM readings r JOIN metrics m ON m.id = r.metric_id WHERE m.name = 'n'"
    return query(db_url, sql.format("count(*)")), query(db_url, sql.format("count(DISTINCT value)"))


@pytest.mark.timeout(600)
def test_two_workers_store_a_burst_exactly_once(
    broker: MosquittoProcess, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Messages without a device time: a message handled twice would be two rows."""
    db_url = postgres_server.new_database()
    workers = Workers(2, db_url, broker.url, tmp_path / "workers.log")
    try:
        started(workers, db_url, broker.url)
        publish_burst(broker.url, with_time=False)
        wait_until(lambda: stored_n(db_url)[0] >= BURST, timeout_s=STORE_TIMEOUT_S, what="burst")
        time.sleep(2)  # anything handled twice would land by now
        assert stored_n(db_url) == (BURST, BURST)
    finally:
        assert workers.stop() == 0
    log = (tmp_path / "workers.log").read_text()
    # Every worker took part: each committed batches of the burst.
    for index in (1, 2):
        assert f"ingest worker {index} stopped after 0 batches" not in log
        assert f"ingest worker {index} stopped after" in log


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_burst_loses_nothing(
    broker: MosquittoProcess, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Two workers; one gets SIGKILL a fifth of the way through."""
    db_url = postgres_server.new_database()
    workers = Workers(2, db_url, broker.url, tmp_path / "workers.log")
    try:
        started(workers, db_url, broker.url)
        victim = workers.children()[1]
        publisher_done = False

        def publish() -> None:
            nonlocal publisher_done
            publish_burst(broker.url, with_time=True, count=KILL_BURST)
            publisher_done = True

        thread = threading.Thread(target=publish)
        thread.start()
        wait_until(
            lambda: stored_n(db_url)[0] > KILL_BURST // 5, timeout_s=STORE_TIMEOUT_S, what="20%"
        )
        victim.send_signal(signal.SIGKILL)
        thread.join(PUBLISH_TIMEOUT_S)
        assert publisher_done
        wait_until(lambda: stored_n(db_url)[0] >= KILL_BURST, timeout_s=STORE_TIMEOUT_S, what="all")
        assert stored_n(db_url) == (KILL_BURST, KILL_BURST)
        # The supervisor started the killed worker again, under the same client id.
        wait_until(lambda: len(workers.children()) == 2, what="the worker to be restarted")
        assert victim.pid not in {p.pid for p in workers.children()}
    finally:
        assert workers.stop() == 0
    assert "starting it again" in (tmp_path / "workers.log").read_text()
