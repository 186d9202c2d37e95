"""`fieldhub ingest --workers N`: workers on one shared subscription store a QoS 1 burst once,
and a worker killed with SIGKILL mid-burst loses nothing (it is started again and its session
hands back what it had not stored)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from conftest import start_mosquitto
from fieldhub.broker import MosquittoProcess
from support.fieldhub_process import wait_until
from support.mqtt import connected_publisher
from support.postgres import PostgresServer
from support.workers import Workers, query

BURST = 200_000
# The kill test needs a burst long enough to kill a worker in the middle of it, not 200k: the
# mechanism is the same, and the suite stays within its time budget.
KILL_BURST = 50_000
DEVICES = 100
SCALE_BURST = 3_000
# The publisher keeps this many QoS 1 publishes unacknowledged; the rest queue in its client.
PUBLISH_TIMEOUT_S = 120.0
STORE_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    process = start_mosquitto(tmp_path_factory.mktemp("workers-broker"))
    yield process
    process.stop()


def publish_burst(mqtt_url: str, *, with_time: bool, count: int = BURST, first: int = 0) -> None:
    """`count` QoS 1 messages, one reading each; `n` numbers them from `first`."""
    publisher = connected_publisher(mqtt_url)
    base_ms = int(time.time() * 1000) - count  # distinct device times, in the past
    futures = []
    for n in range(first, first + count):
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


def missing_n(db_url: str, count: int) -> str:
    """The values of `n` below `count` not stored, as ranges: what a failure needs to show."""

    async def run() -> list[int]:
        conn = await asyncpg.connect(db_url)
        try:
            rows = await conn.fetch(
                "SELECT g.n FROM generate_series(0, $1 - 1) g(n) WHERE NOT EXISTS ("
                " SELECT 1 FROM readings r JOIN metrics m ON m.id = r.metric_id"
                " WHERE m.name = 'n' AND r.value = g.n) ORDER BY g.n",
                count,
            )
            return [int(row["n"]) for row in rows]
        finally:
            await conn.close()

    ranges: list[list[int]] = []
    for n in asyncio.run(run()):
        if ranges and ranges[-1][1] == n - 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges[:20])
    return f"{sum(b - a + 1 for a, b in ranges)} missing in {len(ranges)} ranges: {shown}"


def wait_all_stored(db_url: str, count: int, log: Path) -> None:
    """Wait for `count` readings of `n`; a timeout says which are missing and what the log said."""
    try:
        wait_until(lambda: stored_n(db_url)[0] >= count, timeout_s=STORE_TIMEOUT_S, what="all")
    except AssertionError as error:
        tail = log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{error}; {missing_n(db_url, count)}\nworkers log:\n{tail}") from None


@pytest.mark.timeout(600)
def test_three_workers_store_a_burst_exactly_once(
    broker: MosquittoProcess, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Messages without a device time: a message handled twice would be two rows."""
    db_url = postgres_server.new_database()
    workers = Workers(3, db_url, broker.url, tmp_path / "workers.log")
    try:
        started(workers, db_url, broker.url)
        publish_burst(broker.url, with_time=False)
        wait_all_stored(db_url, BURST, tmp_path / "workers.log")
        time.sleep(2)  # anything handled twice would land by now
        assert stored_n(db_url) == (BURST, BURST)
    finally:
        assert workers.stop() == 0
    log = (tmp_path / "workers.log").read_text()
    # Every worker took part: each committed batches of the burst.
    for index in (1, 2, 3):
        assert f"ingest worker {index} stopped after 0 batches" not in log
        assert f"ingest worker {index} stopped after" in log


@pytest.mark.timeout(600)
@pytest.mark.parametrize("count", [2, 3])
def test_a_worker_killed_mid_burst_loses_nothing(
    broker: MosquittoProcess, postgres_server: PostgresServer, tmp_path: Path, count: int
) -> None:
    """`count` workers; one gets SIGKILL a fifth of the way through."""
    db_url = postgres_server.new_database()
    workers = Workers(count, db_url, broker.url, tmp_path / "workers.log")
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
        wait_all_stored(db_url, KILL_BURST, tmp_path / "workers.log")
        assert stored_n(db_url) == (KILL_BURST, KILL_BURST)
        # The supervisor started the killed worker again, under the same client id.
        wait_until(lambda: len(workers.children()) == count, what="the worker to be restarted")
        assert victim.pid not in {p.pid for p in workers.children()}
    finally:
        assert workers.stop() == 0
    assert "starting it again" in (tmp_path / "workers.log").read_text()


@pytest.mark.timeout(300)
def test_fewer_workers_take_over_what_a_larger_run_left(
    broker: MosquittoProcess, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """3 workers, then 2: the third worker's session, which the broker keeps in the share group
    and queues a third of the messages for, is emptied and ended by the smaller run."""
    db_url = postgres_server.new_database()
    log = tmp_path / "workers.log"
    three = Workers(3, db_url, broker.url, tmp_path / "three.log")
    try:
        started(three, db_url, broker.url)
    finally:
        assert three.stop() == 0
    # Nobody runs: the broker queues each message for one of the three offline sessions.
    publish_burst(broker.url, with_time=True, count=SCALE_BURST)
    two = Workers(2, db_url, broker.url, log, client_id=three.client_id)
    try:
        wait_all_stored(db_url, SCALE_BURST, log)
        assert "worker 3 of an earlier run with more workers" in log.read_text()
        started(two, db_url, broker.url)
        # After the hand-over the share group has two members: everything reaches them.
        publish_burst(broker.url, with_time=True, count=SCALE_BURST, first=SCALE_BURST)
        wait_all_stored(db_url, 2 * SCALE_BURST, log)
        time.sleep(1)
        assert stored_n(db_url) == (2 * SCALE_BURST, 2 * SCALE_BURST)
    finally:
        assert two.stop() == 0
