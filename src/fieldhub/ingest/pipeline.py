"""The ingest pipeline: decode in the transport thread, batch and commit in one writer task.

Flow: the MQTT network thread calls `on_message`, which decodes (pure, ~20 us) and appends the
result to a queue; the writer task takes everything queued (after a short linger), writes it in
one transaction, then acknowledges the messages to the broker. A crash before the commit loses
nothing: the broker still holds the unacknowledged messages for our persistent session and sends
them again; the (device, metric, ts) key absorbs those that carried their own time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fieldhub import clock
from fieldhub.ingest.metrics import IngestMetrics
from fieldhub.logs import about
from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.messages import (
    CommandReply,
    Decoded,
    DecodeResult,
    Ignored,
    InboundMessage,
    InferenceRequest,
    Rejected,
    RejectReason,
)
from fieldhub.store.base import Store
from fieldhub.store.types import (
    DeadLetter,
    StoreError,
    StoreUnavailable,
    WriteBatch,
    WriteResult,
)

log = logging.getLogger("fieldhub.ingest")

AckToken = tuple[int, int]
Acker = Callable[[Sequence[AckToken]], None]
# Called after each commit and ack with the batch, what it did and the commit time (epoch us).
CommitListener = Callable[[WriteBatch, WriteResult, int], None]
# Given a batch's inference requests after it committed (and before they are acknowledged),
# and when it committed.
RequestListener = Callable[[list[InferenceRequest], int], None]


class BatchWriter(Protocol):
    async def write_batch(self, batch: WriteBatch) -> WriteResult: ...


# Largest batch in messages. SQLite inserts get 3-4x cheaper per row from batches of 1,000 to
# 10,000 (measured 67-87k vs 249-281k rows/s: docs/field-notes.md); beyond that a commit takes
# long enough to delay acks noticeably.
BATCH_MAX_MESSAGES = 10_000
# How long the writer waits after the first message for more to join the batch, by load. A
# writer busy committing takes whatever arrived meanwhile without waiting (group commit), so the
# linger only decides how soon an idle writer starts. Fewer, larger commits cost less CPU per
# message, which is what counts near the writer's limit: at 20,000 msg/s a 100 ms linger kept up
# where 5 ms fell 2 % behind. Below that, latency counts: at 10,000 msg/s, 5 ms instead of 100
# took publish -> commit from p50 66 / p99 202 ms to 15 / 144 ms (bench/README.md). So: a short
# linger while the measured rate is under LINGER_RATE_THRESHOLD, the long one above it.
FLUSH_LINGER_MS = 100
FLUSH_LINGER_LOW_RATE_MS = 5
LINGER_RATE_THRESHOLD = 15_000  # messages per second
RATE_WINDOW_S = 1.0
# Bound on decoded messages waiting for the writer. Over MQTT 5 the broker's window
# (INGEST_RECEIVE_MAXIMUM) already bounds it; with 3.1.1 brokers the network thread blocks here
# instead, which pushes back through TCP to the broker's own queue: slower, never lossy.
QUEUE_MAX_MESSAGES = 50_000
# Retry delays for a failing write (disk full, database locked by an outside tool). The batch
# is held, unacknowledged, so the broker keeps the messages until the write succeeds.
WRITE_RETRY_MIN_S = 0.5
# The limit a refusal of store/admission.py counts against (fieldhub_limit_hits_total{limit}).
LIMIT_OF_REASON = {"device_limit": "new_devices_per_hour", "metric_limit": "metrics_per_device"}
# A full disk or a restarted database is retried at least this often: recovery follows the
# cause within seconds, and a retry of a failing write costs next to nothing.
WRITE_RETRY_MAX_S = 10.0
# Failed attempts before the batch is written message by message to find one the database
# refuses (see Ingest._write_with_retry). Low, because the isolating pass costs little.
ISOLATE_AFTER_FAILURES = 2
DIGEST_BYTES = 16


@dataclass(slots=True)
class _Work:
    result: DecodeResult
    message: InboundMessage
    token: AckToken | None
    digest: bytes | None = None
    future: asyncio.Future[IngestOutcome] | None = None


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What happened to one message submitted over HTTP."""

    result: DecodeResult
    readings_written: int
    readings_duplicate: int


def _batch_of(works: Sequence[_Work]) -> WriteBatch:
    """The store batch holding `works`: data, dead letters and retained-topic digests."""
    batch = WriteBatch()
    for work in works:
        result = work.result
        if isinstance(result, Decoded):
            batch.decoded.append(result)
        elif isinstance(result, CommandReply):
            batch.command_replies.append(result)
        elif isinstance(result, Rejected):
            batch.dead_letters.append(
                DeadLetter(
                    topic=work.message.topic,
                    payload=work.message.payload,
                    reason=result.reason.value,
                    detail=result.detail,
                    received_us=work.message.received_us,
                    device_id=result.device_id,
                    profile=result.profile,
                )
            )
        if work.digest is not None:
            batch.retained_digests[work.message.topic] = work.digest
    return batch


class Ingest:
    """Decode, batch, store, acknowledge. One instance per process; `run` is its writer task."""

    def __init__(
        self,
        *,
        store: Store,
        decoder: MessageDecoder,
        metrics: IngestMetrics,
        batch_max: int = BATCH_MAX_MESSAGES,
        linger_ms: float = FLUSH_LINGER_MS,
        low_rate_linger_ms: float = FLUSH_LINGER_LOW_RATE_MS,
        writer: BatchWriter | None = None,
    ) -> None:
        self.store = store
        # What commits a batch: the store, or in an API-only process the follower
        # (ingest/follower.py), which leaves readings to the ingest workers.
        self.writer: BatchWriter = writer or store
        # The bounds on what devices may create (store/admission.py) are judged where ingest
        # writes readings itself; the follower leaves them to the ingest workers.
        self._admits = writer is None
        # New devices' budget: a token bucket of new_devices_per_hour, refilled continuously.
        self._device_tokens = store.input_limits.new_devices_per_hour
        self._tokens_at = time.monotonic()
        self.decoder = decoder
        self.metrics = metrics
        self.batch_max = batch_max
        self.linger_s = linger_ms / 1000
        self.low_rate_linger_s = min(low_rate_linger_ms, linger_ms) / 1000
        self.rate = 0.0  # messages per second taken by the writer over the last window
        self._rate_count = 0
        self._rate_since = time.monotonic()
        self.acker: Acker | None = None
        self.listeners: list[CommitListener] = []
        self.request_listeners: list[RequestListener] = []
        # Since when (time.monotonic) and why the database has refused writes for a reason of
        # its own (StoreUnavailable or any unexplained failure); None while writes succeed.
        # /healthz reports it (degraded, then 503 past the settings' store_unwritable_503_s).
        # Monotonic, not the wall clock: a clock stepped back an hour made "failing for 0 s",
        # health `ok` while nothing was written; stepped forward, 503 at once.
        self.write_failing_since_s: float | None = None
        self.write_failure: str | None = None
        metrics.writes_failing.set_function(self.writes_failing_s)
        self._queue: deque[_Work] = deque()
        self._space = threading.Event()
        self._space.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._wake_scheduled = False
        self._idle = False
        self._digests: dict[str, bytes] = {}
        self._high_water = 0
        # Set (on the loop) when a command reply is queued: someone waits for it (an API call
        # with wait_s), so the batch goes now instead of lingering. A linger already running is
        # cut short too: fieldhub's own command, which ingest also receives, started one ~1 ms
        # before the device's ack, which then waited out the rest (measured: 4 of 12 ms).
        self._urgent = asyncio.Event()
        self._stopping = False
        self.batches_committed = 0

    @property
    def queue_depth(self) -> int:
        """Messages decoded and waiting for the writer."""
        return len(self._queue)

    async def load_state(self) -> None:
        """Load retained-topic digests so re-deliveries after a restart are recognised."""
        self._loop = asyncio.get_running_loop()
        self._digests = await self.store.retained_digests()

    # -- producers -----------------------------------------------------------------------------

    def on_message(self, message: InboundMessage, token: AckToken | None) -> None:
        """Transport callback (network thread): decode and queue. Never raises for bad input."""
        result = self.decoder.decode(message.topic, message.payload, message.received_us)
        work = _Work(result, message, token)
        if isinstance(result, CommandReply) and self._loop is not None:
            self._loop.call_soon_threadsafe(self._urgent.set)
        if (
            message.retain
            or (isinstance(result, Decoded) and self.decoder.publishes_retained(message.topic))
            or message.topic in self._digests
        ):
            digest = hashlib.blake2b(message.payload, digest_size=DIGEST_BYTES).digest()
            if message.retain and self._digests.get(message.topic) == digest:
                # The broker handing over its retained copy of a message we already stored.
                work.result = Ignored("retained_redelivery")
            else:
                self._digests[message.topic] = digest
                work.digest = digest
        self._enqueue(work, blocking=True)

    async def submit(self, topic: str, payload: bytes) -> IngestOutcome:
        """HTTP ingest: decode and store one message; returns after its batch committed."""
        loop = asyncio.get_running_loop()
        message = InboundMessage(topic, payload, clock.now_us())
        result = self.decoder.decode(topic, payload, message.received_us)
        future: asyncio.Future[IngestOutcome] = loop.create_future()
        self._enqueue(_Work(result, message, None, future=future), blocking=False)
        return await future

    def _enqueue(self, work: _Work, *, blocking: bool) -> None:
        if blocking and len(self._queue) >= QUEUE_MAX_MESSAGES:
            self.metrics.backpressure_waits.inc()
            self._space.clear()
            while len(self._queue) >= QUEUE_MAX_MESSAGES and not self._stopping:
                self._space.wait(0.5)
        self._queue.append(work)
        depth = len(self._queue)
        if depth > self._high_water:
            self._high_water = depth
        # Wake the writer only when it sleeps for lack of work: a busy writer looks at the queue
        # again when it is done, and a wake-up per message (a syscall and a GIL hand-off to the
        # event loop each) costs more than decoding the message. `_idle` is set before the writer
        # looks at the queue, so an append it did not see always finds `_idle` true.
        if self._idle and not self._wake_scheduled and self._loop is not None:
            self._wake_scheduled = True
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        self._wakeup.set()

    # -- the writer ----------------------------------------------------------------------------

    async def run(self) -> None:
        """The writer task: runs until cancelled, then flushes what is queued."""
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                self._idle = True
                if not self._queue:
                    await self._wakeup.wait()
                self._wakeup.clear()
                self._idle = False
                linger = self.current_linger_s()
                if len(self._queue) < self.batch_max and linger > 0 and not self._urgent.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), linger)
                self._urgent.clear()
                while self._queue:
                    await self._flush_once()
        finally:
            self._stopping = True
            self._space.set()

    def current_linger_s(self) -> float:
        """The linger for the next batch: long only while the ingest rate is high."""
        now = time.monotonic()
        if now - self._rate_since > 3 * RATE_WINDOW_S:
            self.rate = 0.0  # idle for a while: the old rate says nothing
        return self.linger_s if self.rate >= LINGER_RATE_THRESHOLD else self.low_rate_linger_s

    def _count_rate(self, messages: int) -> None:
        self._rate_count += messages
        now = time.monotonic()
        elapsed = now - self._rate_since
        if elapsed >= RATE_WINDOW_S:
            self.rate = self._rate_count / elapsed
            self._rate_count = 0
            self._rate_since = now

    async def drain(self) -> None:
        """Write everything queued now (shutdown, tests)."""
        while self._queue:
            await self._flush_once()

    async def _flush_once(self) -> None:
        works: list[_Work] = []
        queue = self._queue
        while queue and len(works) < self.batch_max:
            works.append(queue.popleft())
        self._count_rate(len(works))
        if len(queue) < QUEUE_MAX_MESSAGES:
            self._space.set()
        self.metrics.queue_depth.set(len(queue))
        self.metrics.queue_high_water.set(self._high_water)
        if self._admits:
            self._admit(works)
        batch = _batch_of(works)
        started = time.perf_counter()
        written, batch = await self._write_with_retry(works, batch)
        if written.attributes_dropped:
            self.metrics.limit_hits.labels("attributes_per_device").inc(written.attributes_dropped)
        committed_us = clock.now_us()
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self._account(works, written, committed_us)
        requests = [work.result for work in works if isinstance(work.result, InferenceRequest)]
        if requests:
            for request_listener in self.request_listeners:
                try:
                    request_listener(requests, committed_us)
                except Exception:
                    log.exception("request listener %r failed; ingest goes on", request_listener)
        tokens = [work.token for work in works if work.token is not None]
        if tokens and self.acker is not None:
            self.acker(tokens)
        for work in works:
            if work.future is not None and not work.future.done():
                work.future.set_result(
                    IngestOutcome(work.result, written.readings_written, written.readings_duplicate)
                )
        self.batches_committed += 1
        for listener in self.listeners:
            try:
                listener(batch, written, committed_us)
            except Exception:  # a consumer's bug must not stop ingest: the batch is stored
                log.exception("commit listener %r failed; ingest goes on", listener)

    async def _write_with_retry(
        self, works: list[_Work], batch: WriteBatch
    ) -> tuple[WriteResult, WriteBatch]:
        """Write the batch; on repeated failure find out whether one message is to blame.

        A failing write keeps its messages unacknowledged, so the broker still holds them. A
        failure of the database's own (StoreUnavailable: a full disk, an I/O error, read-only,
        locked, unreachable) is retried whole with backoff for as long as it lasts. Any other
        failure, ISOLATE_AFTER_FAILURES times, has the messages written one by one: one the
        database refuses on its own becomes a dead letter instead of stalling ingest forever.
        """
        delay = WRITE_RETRY_MIN_S
        failures = 0
        while True:
            try:
                written = await self.writer.write_batch(batch), batch
            except Exception as exc:  # StoreError, OSError, driver errors: hold, never drop
                error: Exception = exc
            else:
                self._writes_succeed()
                return written
            failures += 1
            self.metrics.write_errors.inc()
            # The database's own trouble (a full disk, an I/O error, a lost connection) is no
            # message's fault: never look for one to dead-letter, wait for the database.
            if failures >= ISOLATE_AFTER_FAILURES and not isinstance(error, StoreUnavailable):
                isolated = await self._write_one_by_one(works)
                self._writes_succeed()
                return isolated
            self._writes_fail(error)
            log.error(
                "%s; retrying in %.1f s, messages stay unacknowledged on the broker",
                error
                if isinstance(error, StoreError)  # it names the batch already (store/core.py)
                else f"writing a batch of {len(batch)} messages failed: {error!r}",
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, WRITE_RETRY_MAX_S)

    async def _write_one_by_one(self, works: list[_Work]) -> tuple[WriteResult, WriteBatch]:
        """Write each message in its own transaction: one the database refuses for itself (a
        constraint, a value) becomes a `store_rejected` dead letter; while the database cannot
        write at all (StoreUnavailable), the message waits and is tried again. Never gives up
        half way: the messages before it are committed, and a batch retried whole would store
        those without their own time twice."""
        total = WriteResult()
        merged = WriteBatch()
        for index, work in enumerate(works):
            single = _batch_of([work])
            delay = WRITE_RETRY_MIN_S
            while True:
                try:
                    written = await self.writer.write_batch(single)
                    break
                except Exception as exc:
                    refused = not isinstance(exc, StoreUnavailable) and isinstance(
                        work.result, Decoded | CommandReply
                    )
                    if refused and single.decoded + single.command_replies:
                        assert isinstance(work.result, Decoded | CommandReply)
                        reply = work.result if isinstance(work.result, CommandReply) else None
                        log.error(
                            "message on %s refused by the database: %s",
                            work.message.topic,
                            exc,
                            extra=about(
                                device_id=work.result.device_id,
                                command_id=reply.command_id if reply is not None else None,
                            ),
                        )
                        rejected = Rejected(
                            RejectReason.STORE_REJECTED,
                            f"the database refused this message: {exc}",
                            work.result.device_id,
                            work.result.profile,
                        )
                        work = works[index] = _Work(
                            rejected, work.message, work.token, work.digest, work.future
                        )
                        single = _batch_of([work])
                        continue
                    # The database's trouble (or a dead letter it will not take): wait for it.
                    self.metrics.write_errors.inc()
                    self._writes_fail(exc)
                    log.error("writing one message failed (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, WRITE_RETRY_MAX_S)
            total.readings_written += written.readings_written
            total.readings_duplicate += written.readings_duplicate
            total.dead_letters += written.dead_letters
            total.new_devices += written.new_devices
            total.presence_changes += written.presence_changes
            total.command_transitions += written.command_transitions
            total.late_replies += written.late_replies
            merged.decoded += single.decoded
            merged.command_replies += single.command_replies
            merged.dead_letters += single.dead_letters
            merged.retained_digests.update(single.retained_digests)
        return total, merged

    def _admit(self, works: list[_Work]) -> None:
        """Refuse (as dead letters) the messages past the bounds on what devices may create;
        count each bound that bites (store/admission.py)."""
        indexed = [(i, w.result) for i, w in enumerate(works) if isinstance(w.result, Decoded)]
        if not indexed:
            return
        limits = self.store.input_limits
        now = time.monotonic()
        per_s = limits.new_devices_per_hour / 3600.0
        self._device_tokens = min(
            limits.new_devices_per_hour, self._device_tokens + (now - self._tokens_at) * per_s
        )
        self._tokens_at = now
        verdict = self.store.admit([decoded for _, decoded in indexed], self._device_tokens)
        self._device_tokens -= verdict.new_devices
        hits = self.metrics.limit_hits
        if verdict.attributes_cut:
            hits.labels("attribute_chars").inc(verdict.attributes_cut)
        for position, (reason, detail) in verdict.refused.items():
            index, decoded = indexed[position]
            work = works[index]
            hits.labels(LIMIT_OF_REASON[reason]).inc()
            rejected = Rejected(RejectReason(reason), detail, decoded.device_id, decoded.profile)
            works[index] = _Work(rejected, work.message, work.token, work.digest, work.future)

    def _writes_fail(self, error: Exception) -> None:
        if self.write_failing_since_s is None:
            self.write_failing_since_s = time.monotonic()
        self.write_failure = str(error)[:500]

    def _writes_succeed(self) -> None:
        if self.write_failing_since_s is not None:
            failed_s = time.monotonic() - self.write_failing_since_s
            log.warning("database writes succeed again after %.1f s of failures", failed_s)
        self.write_failing_since_s = None
        self.write_failure = None

    def writes_failing_s(self) -> float:
        """How long writes have been failing (0.0 while they succeed)."""
        since = self.write_failing_since_s
        return 0.0 if since is None else time.monotonic() - since

    def _account(self, works: list[_Work], written: WriteResult, committed_us: int) -> None:
        m = self.metrics
        m.batch_size.observe(len(works))
        m.readings_written.inc(written.readings_written)
        m.readings_duplicate.inc(written.readings_duplicate)
        stored = dead = ignored = redelivered = replies = requests = 0
        lags: list[float] = []
        # The oldest message of the batch waited longest: one observation per batch.
        oldest_us = min(work.message.received_us for work in works)
        m.commit_delay.observe((committed_us - oldest_us) / 1e6)
        for work in works:
            result = work.result
            if isinstance(result, Decoded):
                stored += 1
                if result.device_time and result.readings and work.token is not None:
                    lag = (committed_us - result.readings[-1].ts_us) / 1e6
                    # Backfilled buffers are hours old by design: not latency.
                    if 0 <= lag < 60:
                        lags.append(lag)
            elif isinstance(result, CommandReply):
                replies += 1
            elif isinstance(result, Rejected):
                dead += 1
                m.dead_letters.labels(result.reason.value).inc()
            elif isinstance(result, InferenceRequest):
                requests += 1
            elif result.channel == "retained_redelivery":
                redelivered += 1
            else:
                ignored += 1
        m.lag.observe_many(lags)
        for outcome, count in (
            ("stored", stored),
            ("dead_letter", dead),
            ("ignored", ignored),
            ("retained_redelivery", redelivered),
            ("command_reply", replies),
            ("inference_request", requests),
        ):
            if count:
                m.messages.labels(outcome).inc(count)
