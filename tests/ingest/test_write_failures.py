"""How long ingest's writes have been failing (/healthz's `store_writes_failing_s`) is measured
on the monotonic clock: a wall clock stepped back or forward during an outage changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from fieldhub import clock
from fieldhub.ingest import pipeline
from fieldhub.ingest.metrics import IngestMetrics
from fieldhub.ingest.pipeline import Ingest
from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.messages import InboundMessage
from fieldhub.protocol.profiles import select_profiles
from fieldhub.store import Store, open_store
from fieldhub.store.types import StoreUnavailable, WriteBatch, WriteResult

HOUR_US = 3_600 * 1_000_000


class OutageWriter:
    """The store's writes fail (StoreUnavailable) until `end()`; then they reach the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failed = asyncio.Event()
        self.down = True

    async def write_batch(self, batch: WriteBatch) -> WriteResult:
        if self.down:
            self.failed.set()
            raise StoreUnavailable("disk I/O error")
        return await self.store.write_batch(batch)

    def end(self) -> None:
        self.down = False


@pytest_asyncio.fixture(loop_scope="function")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/fieldhub.db", stale_after_s={"native": 120})
    await opened.open()
    yield opened
    await opened.close()


async def test_failing_time_ignores_wall_clock_steps(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage seen for a moment is a moment whichever way the wall clock is stepped."""
    monkeypatch.setattr(pipeline, "WRITE_RETRY_MIN_S", 0.01)
    writer = OutageWriter(store)
    ingest = Ingest(
        store=store,
        decoder=MessageDecoder(select_profiles(["native"])),
        metrics=IngestMetrics(CollectorRegistry()),
        writer=writer,
    )
    await ingest.load_state()
    payload = orjson.dumps({"ts": 1_700_000_000_000, "temperature": 21.5})
    ingest.on_message(InboundMessage("devices/wf-1/telemetry", payload, clock.now_us()), None)
    draining = asyncio.create_task(ingest.drain())
    await asyncio.wait_for(writer.failed.wait(), 10)
    assert 0 < ingest.writes_failing_s() < 10

    real_now_us = clock.now_us
    for step_us in (-HOUR_US, HOUR_US):
        monkeypatch.setattr(clock, "now_us", lambda step=step_us: real_now_us() + step)
        # Back: not "0 s" (health `ok` while nothing is written); forward: not an hour (503).
        assert 0 < ingest.writes_failing_s() < 10, step_us

    writer.end()
    await asyncio.wait_for(draining, 10)
    assert ingest.writes_failing_s() == 0.0
    assert ingest.write_failure is None
