"""The pure batch plan (store/plan.py): new keys, rows, dead letters, replies and caches, with no
database. Ids are chosen so that key order differs from name order."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldhub.protocol.command_states import CommandState
from fieldhub.protocol.messages import CommandReply, Decoded, Presence
from fieldhub.store.plan import (
    DEAD_LETTER_MAX_BYTES,
    DEFAULT_STALE_AFTER_S,
    BatchRows,
    CacheDelta,
    WriterCaches,
    dead_letter_rows,
    decide_presence,
    in_key_order,
    new_keys,
    plan_rows,
    reply_transition,
)
from fieldhub.store.types import CommandOutcome, DeadLetter, PresenceChange, WriteBatch
from support.store_rows import T0, S, msg

# Device and metric ids as the database gave them: deliberately not in name order.
DEVICE_IDS = {"dev-a": 3, "dev-b": 1, "dev-c": 2}
METRIC_IDS = {"hum": 2, "temp": 1, "vbat": 3}
DEVICES = sorted(DEVICE_IDS)
NAMES = {pk: name for name, pk in DEVICE_IDS.items()}
METRICS = sorted(METRIC_IDS)


def reply(device_id: str, *, ok: bool = True, error: str | None = None) -> CommandReply:
    """A device's ack of command `c-1`."""
    return CommandReply(
        device_id=device_id,
        profile="native",
        command_id="c-1",
        ok=ok,
        result={"position": 30} if ok else None,
        error=error,
        received_us=T0,
    )


def batch(*items: Decoded, replies: Sequence[CommandReply] = ()) -> WriteBatch:
    return WriteBatch(decoded=list(items), command_replies=list(replies))


def spoken(
    device_id: str, received_us: int, *, topic_id: str | None, command_format: str | None = None
) -> Decoded:
    """A message that says how its device is commanded."""
    item = msg(device_id, received_us)
    item.topic_id = topic_id
    item.command_format = command_format
    return item


def plan(
    items: Sequence[Decoded],
    caches: WriterCaches | None = None,
    stored: Mapping[str, str] | None = None,
) -> BatchRows:
    """plan_rows over the fixed ids, then decide_presence; `stored` is the stored presence by
    device name."""
    presence = {DEVICE_IDS[name]: state for name, state in (stored or {}).items()}
    out = plan_rows(batch(*items), DEVICE_IDS, METRIC_IDS, caches or WriterCaches())
    assert out.complete
    decide_presence(out, presence)
    return out


# -- new_keys ---------------------------------------------------------------------------------


def test_new_keys_lists_unknown_devices_in_order_of_first_appearance() -> None:
    """Each unknown device once, with its first message's profile and time and its stale_after."""
    caches = WriterCaches(devices={"dev-known": 7})
    items = [
        msg("dev-b", T0 + 1, profile="readings"),
        msg("dev-known", T0 + 2),
        msg("dev-a", T0 + 3, profile="native"),
        msg("dev-b", T0 + 4, profile="native"),
    ]

    keys = new_keys(batch(*items), caches, {"readings": 90})

    assert list(keys.devices) == ["dev-b", "dev-a"]
    assert keys.devices == {
        "dev-b": ("readings", T0 + 1, 90),
        "dev-a": ("native", T0 + 3, DEFAULT_STALE_AFTER_S),
    }


def test_new_keys_lists_unknown_metrics_sorted_once() -> None:
    """Metrics the cache lacks, each once, sorted by name whatever their order in the batch."""
    caches = WriterCaches(metrics={"temp": 1})
    items = [
        msg("dev-a", T0, [("zeta", T0, 1.0), ("temp", T0, 2.0)]),
        msg("dev-b", T0, [("hum", T0, 3.0), ("zeta", T0 + 1, 4.0), ("alpha", T0, 5.0)]),
    ]

    assert new_keys(batch(*items), caches, {}).metrics == ["alpha", "hum", "zeta"]


def test_new_keys_looks_up_reply_devices_neither_cached_nor_created() -> None:
    """Reply devices that the cache lacks and the batch does not create are looked up, sorted."""
    caches = WriterCaches(devices={"dev-known": 7})
    replies = [reply("other-2"), reply("dev-known"), reply("dev-a"), reply("other-1")]
    replies.append(reply("other-2"))

    keys = new_keys(batch(msg("dev-a", T0), replies=replies), caches, {})

    assert keys.lookup == ["other-1", "other-2"]
    assert list(keys.devices) == ["dev-a"]


def test_new_keys_of_a_known_batch_is_empty() -> None:
    """Nothing to create or look up when the cache knows every device and metric."""
    caches = WriterCaches(devices={"dev-a": 3}, metrics={"temp": 1})
    items = [msg("dev-a", T0, [("temp", T0, 1.0)], presence="online")]

    keys = new_keys(batch(*items, replies=[reply("dev-a")]), caches, {"native": 5})

    assert (keys.devices, keys.metrics, keys.lookup) == ({}, [], [])


# -- plan_rows: readings and series ------------------------------------------------------------


def test_readings_rows_carry_ids_and_the_receive_time_and_sort_by_key() -> None:
    """Rows are (device id, metric id, ts, value, received) in batch order; `in_key_order`
    sorts them by key, not by name."""
    items = [
        msg("dev-a", T0 + 10, [("temp", T0 + 1, 21.5), ("hum", T0, 40.0)]),
        msg("dev-b", T0 + 20, [("vbat", T0, 3.7), ("temp", T0 + 2, 19.0), ("temp", T0, 18.0)]),
    ]

    rows = plan(items).readings
    assert rows == [
        (3, 1, T0 + 1, 21.5, T0 + 10),
        (3, 2, T0, 40.0, T0 + 10),
        (1, 3, T0, 3.7, T0 + 20),
        (1, 1, T0 + 2, 19.0, T0 + 20),
        (1, 1, T0, 18.0, T0 + 20),
    ]
    assert in_key_order(rows) == [
        (1, 1, T0, 18.0, T0 + 20),
        (1, 1, T0 + 2, 19.0, T0 + 20),
        (1, 3, T0, 3.7, T0 + 20),
        (3, 1, T0 + 1, 21.5, T0 + 10),
        (3, 2, T0, 40.0, T0 + 10),
    ]


def test_new_series_only_for_pairs_the_cache_lacks() -> None:
    """A (device, metric) pair is new once, and never when the cache holds it."""
    caches = WriterCaches(series={(3, 1), (1, 2)})
    items = [
        msg("dev-a", T0, [("temp", T0, 1.0), ("hum", T0, 2.0), ("hum", T0 + 1, 3.0)]),
        msg("dev-b", T0, [("hum", T0, 4.0), ("temp", T0, 5.0)]),
    ]

    assert plan(items, caches).new_series == {(3, 2), (1, 1)}


def test_messages_without_readings_write_no_rows() -> None:
    """A batch of status messages plans no readings and no series."""
    out = plan([msg("dev-a", T0, presence="online"), msg("dev-b", T0, attributes={"fw": "1"})])

    assert (out.readings, out.new_series) == ([], set())


def test_same_key_readings_keep_batch_order() -> None:
    """Two messages of one batch with the same (device, metric, ts): the first one's row leads,
    so the database (ON CONFLICT DO NOTHING) keeps the first value."""
    items = [msg("dev-a", T0, [("temp", T0, 2.0)]), msg("dev-a", T0 + 1, [("temp", T0, 1.0)])]

    assert in_key_order(plan(items).readings) == [(3, 1, T0, 2.0, T0), (3, 1, T0, 1.0, T0 + 1)]


def test_an_unknown_device_or_metric_leaves_the_plan_incomplete() -> None:
    """A device or metric without an id makes the plan incomplete (the writer creates the keys
    new_keys lists and plans again); a batch of known keys is complete."""
    known = [msg("dev-a", T0, [("temp", T0, 1.0)])]
    assert plan_rows(batch(*known), DEVICE_IDS, METRIC_IDS, WriterCaches()).complete
    new_device = [*known, msg("dev-new", T0, [("temp", T0, 1.0)])]
    assert not plan_rows(batch(*new_device), DEVICE_IDS, METRIC_IDS, WriterCaches()).complete
    new_metric = [*known, msg("dev-b", T0, [("pressure", T0, 1.0)])]
    assert not plan_rows(batch(*new_metric), DEVICE_IDS, METRIC_IDS, WriterCaches()).complete
    with_ids = plan_rows(
        batch(*new_device, *new_metric),
        {**DEVICE_IDS, "dev-new": 9},
        {**METRIC_IDS, "pressure": 8},
        WriterCaches(),
    )
    assert with_ids.complete
    assert len(with_ids.readings) == 4


# -- plan_rows: last seen, attributes ----------------------------------------------------------


def test_last_seen_is_the_latest_receive_time_of_the_devices_own_messages() -> None:
    """Out-of-order messages give the maximum; messages published about a device do not count."""
    order = msg("dev-b", T0 + 99 * S)
    order.from_device = False
    later_order = msg("dev-a", T0 + 99 * S, [("window_position", T0, 30.0)])
    later_order.from_device = False
    items = [msg("dev-a", T0 + 5 * S), msg("dev-a", T0 + 9 * S), msg("dev-a", T0 + 7 * S)]
    items += [order, later_order]

    out = plan_rows(batch(*items), DEVICE_IDS, {"window_position": 9}, WriterCaches())

    assert out.last_seen == {3: T0 + 9 * S}
    assert out.readings == [(3, 9, T0, 30.0, T0 + 99 * S)]


def test_attribute_patches_merge_in_message_order() -> None:
    """One patch per device, later keys winning; a null stays in the patch so the merge removes."""
    items = [
        msg("dev-a", T0, attributes={"a": 1, "b": "x"}),
        msg("dev-b", T0, attributes={"fw": "2.0"}),
        msg("dev-a", T0 + 1, attributes={"a": None, "c": False}),
        msg("dev-a", T0 + 2, attributes={"c": True}),
        msg("dev-c", T0 + 3),
    ]

    assert plan(items).attributes == {
        3: {"a": None, "b": "x", "c": True},
        1: {"fw": "2.0"},
    }


# -- plan_rows: presence -----------------------------------------------------------------------


def test_presence_flips_within_a_batch_are_each_an_event() -> None:
    """online, offline, online against a stored `unknown` are three events and three changes."""
    items = [
        msg("dev-a", T0, presence="online"),
        msg("dev-a", T0 + 1, presence="offline"),
        msg("dev-a", T0 + 2),
        msg("dev-a", T0 + 3, presence="online"),
    ]

    out = plan(items, stored={"dev-a": "unknown"})

    assert out.presence_events == [(3, T0, "online"), (3, T0 + 1, "offline"), (3, T0 + 3, "online")]
    assert out.presence_changes == [
        PresenceChange("dev-a", "online", T0),
        PresenceChange("dev-a", "offline", T0 + 1),
        PresenceChange("dev-a", "online", T0 + 3),
    ]
    assert out.presence == {3: "online"}


def test_presence_repeating_the_stored_state_is_no_event() -> None:
    """A state equal to the stored one, or repeated in the batch, changes nothing."""
    items = [
        msg("dev-a", T0, presence="offline"),
        msg("dev-b", T0, presence="online"),
        msg("dev-b", T0 + 1, presence="online"),
        msg("dev-a", T0 + 2, presence="offline"),
    ]

    out = plan(items, stored={"dev-a": "offline", "dev-b": "stale"})

    assert out.presence_events == [(1, T0, "online")]
    assert out.presence_changes == [PresenceChange("dev-b", "online", T0)]
    assert out.presence == {1: "online"}


def test_presence_is_compared_with_the_stored_state_not_the_cache() -> None:
    """The writer's cached presence may lag: the stored presence passed in decides."""
    caches = WriterCaches(presence={3: "online", 1: "offline"})
    items = [msg("dev-a", T0, presence="online"), msg("dev-b", T0, presence="offline")]

    out = plan(items, caches, {"dev-a": "offline", "dev-b": "offline"})

    assert out.presence_events == [(3, T0, "online")]


# -- plan_rows: command formats ----------------------------------------------------------------


def test_command_format_recorded_only_when_it_changes() -> None:
    """(format, topic id) is written when it differs from the cache or an earlier message;
    a message without a format keeps the known one."""
    caches = WriterCaches(formats={3: ("native", "Dev-A"), 1: ("flask", "dev-b")})
    items = [
        spoken("dev-a", T0, topic_id="Dev-A"),  # as cached
        spoken("dev-b", T0, topic_id="dev-b", command_format="flask"),  # as cached
        spoken("dev-c", T0, topic_id="DEV-C"),  # unknown before: no format yet
        spoken("dev-a", T0 + 1, topic_id="DEV-A"),  # a new spelling keeps the format
    ]

    assert plan(items, caches).formats == {2: (None, "DEV-C"), 3: ("native", "DEV-A")}


def test_command_format_follows_the_last_change_in_the_batch() -> None:
    """A later message compares with what the batch already changed, not the stale cache:
    a change back to the cached value is written, and a new spelling keeps the new format."""
    caches = WriterCaches(formats={3: ("native", "Dev-A"), 1: ("native", "dev-b")})
    items = [
        spoken("dev-a", T0, topic_id="Dev-A", command_format="flask"),
        spoken("dev-a", T0 + 1, topic_id="Dev-A", command_format="native"),
        spoken("dev-b", T0, topic_id="dev-b", command_format="flask"),
        spoken("dev-b", T0 + 1, topic_id="DEV-B"),
        spoken("dev-c", T0, topic_id=None, command_format="flask"),  # no topic id: nothing said
    ]

    assert plan(items, caches).formats == {3: ("native", "Dev-A"), 1: ("flask", "DEV-B")}


# -- properties --------------------------------------------------------------------------------

readings_st = st.lists(
    st.tuples(
        st.sampled_from(METRICS),
        st.integers(T0, T0 + 5),
        st.integers(-3, 3).map(float),
    ),
    max_size=4,
)


@st.composite
def messages(draw: st.DrawFn) -> Decoded:
    item = msg(
        draw(st.sampled_from(DEVICES)),
        draw(st.integers(T0, T0 + 10 * S)),
        draw(readings_st),
        presence=draw(st.sampled_from([None, "online", "offline"])),
    )
    item.from_device = draw(st.booleans())
    return item


pairs_st = st.sets(
    st.tuples(st.sampled_from(sorted(DEVICE_IDS.values())), st.sampled_from([1, 2, 3]))
)


@given(st.lists(messages(), max_size=8), pairs_st)
def test_readings_rows_cover_every_reading_and_sort_in_key_order(
    items: list[Decoded], cached: set[tuple[int, int]]
) -> None:
    """One row per reading, with its message's ids and receive time, in batch order and by
    `in_key_order` in key order; every pair of the rows is cached or new, and no new pair was
    cached."""
    out = plan(items, WriterCaches(series=set(cached)))

    assert len(out.readings) == sum(len(item.readings) for item in items)
    assert [row[4] for row in out.readings] == [
        item.received_us for item in items for _ in item.readings
    ]
    keys = [row[:3] for row in in_key_order(out.readings)]
    assert keys == sorted(keys)
    assert Counter(out.readings) == Counter(
        (DEVICE_IDS[item.device_id], METRIC_IDS[m], ts, value, item.received_us)
        for item in items
        for m, ts, value in item.readings
    )
    pairs = {(row[0], row[1]) for row in out.readings}
    assert pairs <= cached | out.new_series
    assert out.new_series <= pairs
    assert not out.new_series & cached


@given(st.lists(messages(), max_size=8))
def test_last_seen_is_the_maximum_receive_time_from_the_device(items: list[Decoded]) -> None:
    """last_seen: each device with messages of its own, at the latest of their receive times."""
    expected: dict[int, int] = {}
    for item in items:
        if item.from_device:
            pk = DEVICE_IDS[item.device_id]
            expected[pk] = max(expected.get(pk, 0), item.received_us)

    assert plan(items).last_seen == expected


@given(
    st.lists(
        st.tuples(st.sampled_from(DEVICES), st.sampled_from([None, "online", "offline"])),
        max_size=10,
    ),
    st.dictionaries(
        st.sampled_from(DEVICES), st.sampled_from(["online", "offline", "stale", "unknown"])
    ),
)
def test_presence_events_are_the_runs_of_each_devices_states(
    said: list[tuple[str, Presence | None]], stored: dict[str, str]
) -> None:
    """Each device's events are its stated presences with repeats collapsed, minus a leading
    state equal to the stored one, each at the receive time of the run's first message."""
    items = [msg(device, T0 + i, presence=state) for i, (device, state) in enumerate(said)]
    expected: list[tuple[int, int, str]] = []
    for device in DEVICES:
        stated = [(T0 + i, s) for i, (d, s) in enumerate(said) if d == device and s is not None]
        previous = stored.get(device)
        for state, run in itertools.groupby(stated, key=lambda pair: pair[1]):
            if state != previous:
                expected.append((DEVICE_IDS[device], next(run)[0], state))
            previous = state

    out = plan(items, stored=stored)

    assert out.presence_events == sorted(expected, key=lambda event: event[1])
    assert [(c.device_id, c.state, c.at_us) for c in out.presence_changes] == [
        (NAMES[pk], state, ts) for pk, ts, state in out.presence_events
    ]
    last = {pk: state for pk, _, state in out.presence_events}
    assert out.presence == last


@given(st.lists(messages(), max_size=8), pairs_st)
def test_a_batch_planned_again_after_its_delta_has_no_new_series(
    items: list[Decoded], cached: set[tuple[int, int]]
) -> None:
    """Once the caches learn a batch's series, the same batch creates none."""
    caches = WriterCaches(series=set(cached))
    caches.apply(CacheDelta(series=plan(items, caches).new_series))

    assert plan(items, caches).new_series == set()


# -- dead letters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, DEAD_LETTER_MAX_BYTES - 1, DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_BYTES + 1]
)
def test_dead_letter_payload_is_cut_at_the_limit_with_its_true_size(size: int) -> None:
    """The stored payload is the first DEAD_LETTER_MAX_BYTES bytes; size is the whole length."""
    payload = bytes(i % 251 for i in range(size))
    letter = DeadLetter(
        "devices/x/telemetry", payload, "malformed_json", "line 1", T0, "x", "native"
    )

    ((received, topic, reason, detail, kept, true_size, device, profile),) = dead_letter_rows(
        [letter]
    )

    assert kept == payload[:DEAD_LETTER_MAX_BYTES]
    assert len(kept) == min(size, DEAD_LETTER_MAX_BYTES)
    assert true_size == size
    assert (received, topic, reason, detail, device, profile) == (
        T0,
        "devices/x/telemetry",
        "malformed_json",
        "line 1",
        "x",
        "native",
    )


def test_dead_letter_rows_keep_order_and_missing_device() -> None:
    """One row per letter, in order; a letter of no known device keeps None for both."""
    big = DeadLetter("a/b", b"x" * (3 * DEAD_LETTER_MAX_BYTES), "oversize_payload", "big", T0 + 1)
    small = DeadLetter("c", b"{}", "no_readings", "empty", T0, "dev-1", "readings")

    assert dead_letter_rows([big, small]) == [
        (T0 + 1, "a/b", "oversize_payload", "big", b"x" * DEAD_LETTER_MAX_BYTES,
         3 * DEAD_LETTER_MAX_BYTES, None, None),
        (T0, "c", "no_readings", "empty", b"{}", 2, "dev-1", "readings"),
    ]  # fmt: skip


# -- replies -----------------------------------------------------------------------------------


def test_ok_reply_succeeds_with_its_result() -> None:
    """An ok ack ends the command SUCCEEDED, decided by the ack, keeping the result."""
    assert reply_transition(reply("dev-1")) == (
        CommandState.SUCCEEDED,
        CommandOutcome("the device acknowledged it: ok", "ack", {"position": 30}, None),
    )


def test_error_reply_fails_with_the_devices_error() -> None:
    """An error ack ends the command FAILED, with the device's error in detail and error."""
    assert reply_transition(reply("dev-1", ok=False, error="motor jammed")) == (
        CommandState.FAILED,
        CommandOutcome("the device answered error: motor jammed", "ack", None, "motor jammed"),
    )


# -- caches ------------------------------------------------------------------------------------


def test_caches_apply_merges_a_delta() -> None:
    """New keys are added, changed ones take the delta's value, the rest stay; series are united
    and counted per device (a series already known is not counted twice)."""
    caches = WriterCaches(
        devices={"dev-a": 3},
        metrics={"temp": 1},
        presence={3: "online"},
        series={(3, 1)},
        formats={3: (None, "dev-a")},
        series_count={3: 1},
        attribute_keys={3: frozenset({"fw"})},
    )
    caches.apply(
        CacheDelta(
            devices={"dev-b": 1},
            metrics={"hum": 2},
            presence={3: "offline", 1: "unknown"},
            series={(1, 2), (3, 1), (3, 2)},
            formats={3: ("flask", "Dev-A"), 1: (None, "dev-b")},
            attribute_keys={1: frozenset({"ip"})},
        )
    )

    assert caches == WriterCaches(
        devices={"dev-a": 3, "dev-b": 1},
        metrics={"temp": 1, "hum": 2},
        presence={3: "offline", 1: "unknown"},
        series={(3, 1), (1, 2), (3, 2)},
        formats={3: ("flask", "Dev-A"), 1: (None, "dev-b")},
        series_count={3: 2, 1: 1},
        attribute_keys={3: frozenset({"fw"}), 1: frozenset({"ip"})},
    )


def test_caches_apply_an_empty_delta_changes_nothing() -> None:
    """A batch that taught nothing leaves the caches as they were."""
    caches = WriterCaches(devices={"dev-a": 3}, metrics={"temp": 1}, series={(3, 1)})
    caches.apply(CacheDelta())

    assert caches == WriterCaches(devices={"dev-a": 3}, metrics={"temp": 1}, series={(3, 1)})
