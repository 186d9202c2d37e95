"""Ingest as separate processes: N stateless workers on one MQTT shared subscription.

`fieldhub ingest --workers N` runs N copies of the ingest pipeline (decode, batch, commit, ack
after commit) without the HTTP API, each subscribed to `$share/<group>/<filter>` so the broker
hands every message to exactly one of them, all writing to one PostgreSQL database. The parent
process starts them and starts again any that dies: a worker's persistent session keeps the
messages the broker had sent it but it had not acknowledged, and its broker hands them over
only to the same client id, so a worker killed mid-batch loses nothing once it is back.

The group is the installation's client id (`<client id>-<n>` are its workers), so two
installations on one broker each get every message. A broker keeps handing a share of the
messages to a member whose session outlives it (Mosquitto queues them for the offline session;
MQTT 3.1.1 sessions never expire), so when fewer workers start than last time, the supervisor
first empties and ends the sessions of the workers that are gone (`retire_sessions`): without
that, scaling 3 workers down to 2 would leave a third of all messages queued for nobody.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from fieldhub import interpreter
from fieldhub.config import Settings
from fieldhub.ingest.metrics import IngestMetrics
from fieldhub.ingest.pipeline import Ingest
from fieldhub.logs import LogFormat, say
from fieldhub.mqtt.paho_client import end_session
from fieldhub.mqtt.subscriber import AckToken, MqttSubscriber
from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.messages import InboundMessage
from fieldhub.protocol.profiles import select_profiles
from fieldhub.store.open import open_store

log = logging.getLogger("fieldhub.ingest")

# A worker that dies is started again after this pause (doubling up to the maximum while it
# keeps dying within a minute of starting: a bad config must not spin the CPU).
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0
STOP_GRACE_S = 30.0
# Retiring a session: how long to wait for the broker to accept us, and the quiet time after
# which the session holds nothing more (the broker sends queued messages as fast as we ack).
RETIRE_CONNECT_TIMEOUT_S = 15.0
RETIRE_QUIET_S = 2.0


def shared_filters(filters: list[str], group: str) -> list[str]:
    """The profiles' filters as one shared subscription group."""
    return [f"$share/{group}/{topic_filter}" for topic_filter in filters]


def worker_client_id(settings: Settings, index: int) -> str:
    return f"{settings.mqtt_client_id}-{index}"


def _pipeline(settings: Settings) -> tuple[Ingest, list[str]]:
    """A worker's ingest pipeline and its shared subscription filters."""
    profiles = select_profiles(settings.profiles)
    decoder = MessageDecoder(profiles)
    store = open_store(settings.db_url, stale_after_s={p.name: p.stale_after_s for p in profiles})
    store.input_limits = settings.input_limits
    ingest = Ingest(store=store, decoder=decoder, metrics=IngestMetrics(CollectorRegistry()))
    return ingest, shared_filters(decoder.subscriptions, settings.mqtt_client_id)


async def run_worker(settings: Settings, index: int, count: int, stop: asyncio.Event) -> None:
    """Worker `index` of `count` until `stop` is set: drains what it received, disconnects."""
    if settings.external_broker is None:
        raise ValueError("ingest workers need --mqtt-url (the broker they share)")
    ingest, filters = _pipeline(settings)
    store = ingest.store
    subscriber = MqttSubscriber(
        endpoint=settings.external_broker,
        client_id=worker_client_id(settings, index),
        filters=filters,
        on_message=ingest.on_message,
        protocol=settings.protocol_version,
        clock_slot=((index - 1) % count, count),
    )
    ingest.acker = subscriber.ack
    await store.open()
    await ingest.load_state()
    writer = asyncio.create_task(ingest.run(), name="ingest.writer")
    interpreter.freeze_startup_heap()
    subscriber.start()
    log.info("ingest worker %d: %s on %s", index, subscriber.client_id, store.__class__.__name__)
    try:
        await stop.wait()
    finally:
        await ingest.drain()
        await asyncio.to_thread(subscriber.stop)
        await ingest.drain()
        writer.cancel()
        await asyncio.wait([writer])
        await store.close()
        log.info("ingest worker %d stopped after %d batches", index, ingest.batches_committed)


async def retire_session(settings: Settings, index: int) -> int | None:
    """Store what worker `index`'s session still holds, then end the session.

    Returns how many messages it held, or None when the broker had no session of that id.
    """
    if settings.external_broker is None:
        raise ValueError("ingest workers need --mqtt-url (the broker they share)")
    ingest, filters = _pipeline(settings)
    store = ingest.store
    client_id = worker_client_id(settings, index)
    received = 0
    last_at = time.monotonic()

    def on_message(message: InboundMessage, token: AckToken | None) -> None:
        nonlocal received, last_at
        received += 1
        last_at = time.monotonic()
        ingest.on_message(message, token)

    subscriber = MqttSubscriber(
        endpoint=settings.external_broker,
        client_id=client_id,
        filters=filters,
        on_message=on_message,
        protocol=settings.protocol_version,
        subscribe_new=False,
    )
    ingest.acker = subscriber.ack
    await store.open()
    await ingest.load_state()
    # No writer task: drain() here is the only flusher, so once it returns with the session
    # quiet, every message the session held is committed (a cancelled writer could be mid-batch,
    # and that batch would be lost with the session).
    try:
        subscriber.start()
        deadline = time.monotonic() + RETIRE_CONNECT_TIMEOUT_S
        while not subscriber.connected:
            if time.monotonic() > deadline:
                raise ConnectionError(f"broker {settings.external_broker.url} did not accept us")
            await asyncio.sleep(0.05)
        present = bool(subscriber.session_present)
        if present:
            # Leave the share group first: from here on only what was queued for us arrives.
            await asyncio.to_thread(subscriber.unsubscribe)
            last_at = time.monotonic()
            while time.monotonic() - last_at < RETIRE_QUIET_S:
                await ingest.drain()
                await asyncio.sleep(0.1)
        await ingest.drain()
        await asyncio.to_thread(subscriber.stop)
        await asyncio.to_thread(
            end_session, settings.external_broker, client_id, subscriber.protocol
        )
    finally:
        await store.close()
    return received if present else None


def retire_sessions(settings: Settings, count: int) -> list[tuple[int, int]]:
    """End the sessions of workers `count+1, count+2, ...` left by an earlier, larger run.

    Stops at the first index the broker has no session for: workers are numbered from 1 and a
    run of N leaves sessions 1..N. Returns (index, messages stored from it) per retired session.
    """
    retired: list[tuple[int, int]] = []
    index = count + 1
    while (held := asyncio.run(retire_session(settings, index))) is not None:
        log.warning(
            "ingest worker %d's session was left by an earlier run with more workers: stored "
            "the %d messages it held and ended it",
            index,
            held,
        )
        retired.append((index, held))
        index += 1
    return retired


def worker_main(settings: Settings, index: int, count: int) -> None:
    """A worker process: run until SIGTERM/SIGINT."""

    interpreter.tune_for_service()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, index, count, stop)

    asyncio.run(main())


class WorkerSupervisor:
    """Starts `count` worker processes (`fieldhub ingest --worker-index i`) and restarts any
    that exits until told to stop."""

    def __init__(
        self, count: int, *, executable: Path | None = None, log_format: LogFormat = "text"
    ) -> None:
        self.count = count
        self.log_format = log_format
        self.executable = executable or Path(sys.executable).with_name("fieldhub")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started_at: dict[int, float] = {}
        self.delays: dict[int, float] = {}
        self.restarts = 0
        self._stopping = False

    def _spawn(self, index: int) -> None:
        # The worker inherits FIELDHUB_* variables and flags passed on as variables by the CLI.
        self.procs[index] = subprocess.Popen(
            [
                str(self.executable),
                "ingest",
                "--workers",
                str(self.count),
                "--worker-index",
                str(index),
            ],
            env=os.environ.copy(),
        )
        self.started_at[index] = time.monotonic()

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; returns an exit status."""

        def stop(signum: int, frame: object) -> None:
            self._stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for index in range(1, self.count + 1):
            self._spawn(index)
        say(f"fieldhub ingest: {self.count} workers started", self.log_format)
        pending: dict[int, float] = {}
        while not self._stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for index, proc in list(self.procs.items()):
                if index in pending or proc.poll() is None:
                    continue
                lived = now - self.started_at[index]
                delay = self.delays.get(index, RESTART_MIN_S)
                delay = RESTART_MIN_S if lived > STABLE_AFTER_S else min(delay * 2, RESTART_MAX_S)
                self.delays[index] = delay
                log.warning(
                    "ingest worker %d exited (%s) after %.1f s; starting it again in %.1f s",
                    index,
                    proc.returncode,
                    lived,
                    delay,
                )
                pending[index] = now + delay
            for index, at in list(pending.items()):
                if now >= at:
                    del pending[index]
                    self.restarts += 1
                    self._spawn(index)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        status = 0
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                status = 1
        return status
