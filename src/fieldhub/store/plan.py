"""What a write batch stores, decided without a database: pure functions of the batch and the
writer's caches, tested on their own (tests/store/test_plan.py) and run by every engine.

`plan_rows` turns a batch into the rows and changes to write: readings in key order, series first
seen, last-seen times, attribute patches, the messages that say a presence, and command formats.
It runs optimistically on the ids the writer knows; when the batch names a device or metric it
does not know (rare once a fleet is running), it says so (`BatchRows.complete` is False), and the
writer creates what `new_keys` lists (or finds it, when another ingest worker created it first)
and plans again, so a steady batch is walked once. `decide_presence` then compares the presence
messages with the stored presence, read in the same transaction. The caches follow only what
committed (`CacheDelta`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import CommandReply, Presence
from fieldhub.store.types import CommandOutcome, DeadLetter, PresenceChange, WriteBatch

# Dead letters keep at most this much of a payload: enough to see what was wrong, bounded so an
# attacker cannot fill the disk with oversize messages. The true size is kept beside it.
DEAD_LETTER_MAX_BYTES = 64 * 1024
# ... and of its topic (MQTT allows 65,535 bytes; a 60,000-character topic was seen in a probe)
# and of the detail (a driver's error text can quote the payload). A cut one ends in TRUNCATED.
DEAD_LETTER_TOPIC_MAX_CHARS = 512
DEAD_LETTER_DETAIL_MAX_CHARS = 1024
TRUNCATED = "…"
# A device's silence before it shows `stale`, for profiles the store was given no value for.
DEFAULT_STALE_AFTER_S = 120

# (device_id, metric_id, ts, value, received_at): a readings row; its key is the first three.
ReadingKeyRow = tuple[int, int, int, float, int]
READING_KEY = itemgetter(0, 1, 2)
# (command_format, topic_id) of a device: how it is commanded and its id as its topics spell it.
Format = tuple[str | None, str | None]


@dataclass(slots=True)
class CacheDelta:
    """What one committed batch taught the writer."""

    devices: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    presence: dict[int, str] = field(default_factory=dict)
    series: set[tuple[int, int]] = field(default_factory=set)
    formats: dict[int, Format] = field(default_factory=dict)
    attribute_keys: dict[int, frozenset[str]] = field(default_factory=dict)


@dataclass(slots=True)
class WriterCaches:
    """Ids and state the writer would otherwise look up for every message. They may lag behind
    the database (another process writes it, or a batch committed but is not applied yet):
    every write that relies on them is an upsert or re-reads what matters, so a stale cache
    costs a redundant statement, never a wrong row."""

    devices: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    presence: dict[int, str] = field(default_factory=dict)
    series: set[tuple[int, int]] = field(default_factory=set)
    formats: dict[int, Format] = field(default_factory=dict)
    # Series per device (admission.py bounds it), and the attribute keys of the devices that
    # sent attributes since the writer started (loaded on first need).
    series_count: dict[int, int] = field(default_factory=dict)
    attribute_keys: dict[int, frozenset[str]] = field(default_factory=dict)

    def apply(self, delta: CacheDelta) -> None:
        """Learn what a committed batch wrote."""
        self.devices.update(delta.devices)
        self.metrics.update(delta.metrics)
        self.presence.update(delta.presence)
        counts = self.series_count
        for device_pk, _metric_pk in delta.series - self.series:
            counts[device_pk] = counts.get(device_pk, 0) + 1
        self.series |= delta.series
        self.formats.update(delta.formats)
        self.attribute_keys.update(delta.attribute_keys)


@dataclass(frozen=True, slots=True)
class NewKeys:
    """What must exist before the batch's rows can be written."""

    # uid -> (profile, first seen, stale_after_s), in order of first appearance.
    devices: dict[str, tuple[str, int, int]]
    metrics: list[str]
    # Devices of command replies that the cache does not know: another process (ingest workers
    # beside an API process) may have created them; looked up rather than counted late.
    lookup: list[str]


def new_keys(batch: WriteBatch, caches: WriterCaches, stale_after_s: Mapping[str, int]) -> NewKeys:
    """The devices and metrics `batch` names that `caches` does not hold."""
    devices: dict[str, tuple[str, int, int]] = {}
    known = caches.devices
    for item in batch.decoded:
        if item.device_id not in known and item.device_id not in devices:
            stale = stale_after_s.get(item.profile, DEFAULT_STALE_AFTER_S)
            devices[item.device_id] = (item.profile, item.received_us, stale)
    metrics = sorted(
        {r.metric for item in batch.decoded for r in item.readings} - caches.metrics.keys()
    )
    lookup = sorted({r.device_id for r in batch.command_replies} - known.keys() - devices.keys())
    return NewKeys(devices, metrics, lookup)


@dataclass(slots=True)
class BatchRows:
    """The rows and changes of one batch, ids resolved."""

    # In batch order: `in_key_order` sorts them where the engine wants them sorted.
    readings: list[ReadingKeyRow] = field(default_factory=list)
    new_series: set[tuple[int, int]] = field(default_factory=set)
    last_seen: dict[int, int] = field(default_factory=dict)
    attributes: dict[int, dict[str, Any]] = field(default_factory=dict)
    # False when the batch names a device or metric without an id: the rest is not filled in.
    complete: bool = True
    # (device_id, received, state, device uid) of each message that says a presence, in order.
    presence_said: list[tuple[int, int, Presence, str]] = field(default_factory=list)
    # Set by decide_presence: (device_id, ts, state) in order.
    presence_events: list[tuple[int, int, str]] = field(default_factory=list)
    presence_changes: list[PresenceChange] = field(default_factory=list)
    presence: dict[int, str] = field(default_factory=dict)
    formats: dict[int, Format] = field(default_factory=dict)


def plan_rows(
    batch: WriteBatch,
    device_ids: Mapping[str, int],
    metric_ids: Mapping[str, int],
    caches: WriterCaches,
) -> BatchRows:
    """The batch's rows with the ids in `device_ids`/`metric_ids`; incomplete (and abandoned at
    the first miss) when one is missing."""
    out = BatchRows()
    rows = out.readings
    new_series = out.new_series
    last_seen = out.last_seen
    series = caches.series
    for item in batch.decoded:
        device_pk = device_ids.get(item.device_id)
        if device_pk is None:
            out.complete = False
            return out
        received = item.received_us
        if item.from_device and last_seen.get(device_pk, 0) < received:
            last_seen[device_pk] = received
        for metric, ts_us, value in item.readings:
            metric_pk = metric_ids.get(metric)
            if metric_pk is None:
                out.complete = False
                return out
            rows.append((device_pk, metric_pk, ts_us, value, received))
            if (device_pk, metric_pk) not in series:
                new_series.add((device_pk, metric_pk))
        if item.attributes:
            out.attributes.setdefault(device_pk, {}).update(item.attributes)
        if item.topic_id is not None:
            known = out.formats.get(device_pk) or caches.formats.get(device_pk, (None, None))
            spoken = (item.command_format or known[0], item.topic_id)
            if spoken != known:
                out.formats[device_pk] = spoken
        if item.presence is not None:
            out.presence_said.append((device_pk, received, item.presence, item.device_id))
    return out


def in_key_order(rows: list[ReadingKeyRow]) -> list[ReadingKeyRow]:
    """`rows` (in batch order) sorted by key, for an engine that inserts them as given: key
    order walks the readings B-tree once instead of jumping between leaves for each row. By
    the key only, and stable: of two readings with one key in a batch, the first message's
    stays first and is the one ON CONFLICT DO NOTHING keeps (a whole-row sort put the smaller
    value first). SQLite's writer needs none: its staging table is a B-tree on that key."""
    return sorted(rows, key=READING_KEY)


def decide_presence(out: BatchRows, stored: Mapping[int, str]) -> None:
    """Fill `out`'s presence events, changes and final presence from its presence messages and
    `stored`, the stored presence of their devices: a message is an event when it changes the
    device's presence as it stands at that point of the batch."""
    now = out.presence
    for device_pk, received, state, uid in out.presence_said:
        if now.get(device_pk, stored.get(device_pk)) != state:
            now[device_pk] = state
            out.presence_events.append((device_pk, received, state))
            out.presence_changes.append(PresenceChange(uid, state, received))


def dead_letter_rows(
    letters: Iterable[DeadLetter],
) -> list[tuple[int, str, str, str, bytes, int, str | None, str | None]]:
    """dead_letters rows: (received_at, topic, reason, detail, payload, size, device, profile),
    the payload cut to DEAD_LETTER_MAX_BYTES and its true size kept; the topic and the detail
    cut too (`cut`)."""
    return [
        (
            d.received_us,
            cut(d.topic, DEAD_LETTER_TOPIC_MAX_CHARS),
            d.reason,
            cut(d.detail, DEAD_LETTER_DETAIL_MAX_CHARS),
            d.payload[:DEAD_LETTER_MAX_BYTES],
            len(d.payload),
            None if d.device_id is None else cut(d.device_id, DEAD_LETTER_TOPIC_MAX_CHARS),
            d.profile,
        )
        for d in letters
    ]


def cut(text: str, max_chars: int) -> str:
    """`text`, or its first `max_chars - 1` characters and TRUNCATED when it is longer."""
    return text if len(text) <= max_chars else text[: max_chars - 1] + TRUNCATED


def reply_transition(reply: CommandReply) -> tuple[CommandState, CommandOutcome]:
    """The end state a device's ack asks for, and what it stores with it."""
    if reply.ok:
        return CommandState.SUCCEEDED, CommandOutcome(
            "the device acknowledged it: ok", "ack", reply.result, reply.error
        )
    return CommandState.FAILED, CommandOutcome(
        f"the device answered error: {reply.error}", "ack", reply.result, reply.error
    )
