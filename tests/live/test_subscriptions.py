"""The `subscribe` frame: defaults, validation and the hashable key equal subscriptions share."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fieldhub.live.subscriptions import (
    DEFAULT_EVENTS,
    DEFAULT_MIN_INTERVAL_MS,
    MAX_LISTED,
    LiveFilter,
    Subscribe,
)


def parse(**fields: Any) -> Subscribe:
    return Subscribe.model_validate({"op": "subscribe", **fields})


def refused(body: dict[str, Any]) -> list[str]:
    """The locations pydantic names when it refuses `body`."""
    with pytest.raises(ValidationError) as caught:
        Subscribe.model_validate(body)
    return [".".join(str(p) for p in e["loc"]) for e in caught.value.errors()]


def test_defaults_are_every_device_every_metric_default_events_and_window() -> None:
    sub = parse()
    assert sub.devices is None
    assert sub.metrics is None
    assert sub.events == ["readings", "presence", "devices"] == list(DEFAULT_EVENTS)
    assert sub.min_interval_ms == DEFAULT_MIN_INTERVAL_MS == 250
    assert sub.key().describe() == {
        "devices": None,
        "metrics": None,
        "events": ["devices", "presence", "readings"],
        "min_interval_ms": 250,
    }


def test_null_devices_and_metrics_mean_everything() -> None:
    assert parse(devices=None, metrics=None).key() == parse().key()


@pytest.mark.parametrize(
    "spelling",
    ["a4cf12b3c4d5", "A4:CF:12:B3:C4:D5", "a4-cf-12-b3-c4-d5", "a4cf.12b3.c4d5", "A4CF12B3C4D5"],
)
def test_device_macs_are_canonicalised(spelling: str) -> None:
    assert parse(devices=[spelling]).devices == ["A4:CF:12:B3:C4:D5"]


def test_devices_are_deduplicated_and_sorted_other_ids_kept_as_written() -> None:
    sub = parse(devices=["node-b", "a4cf12b3c4d5", "Node-A", "A4:CF:12:B3:C4:D5", "node-b"])
    assert sub.devices == ["A4:CF:12:B3:C4:D5", "Node-A", "node-b"]


@pytest.mark.parametrize("bad", ["has space", "a/b", "plus+", "", "x" * 129])
def test_invalid_device_ids_are_refused(bad: str) -> None:
    assert refused({"op": "subscribe", "devices": [bad]})[0].startswith("devices")


def test_unknown_event_kind_is_refused() -> None:
    assert refused({"op": "subscribe", "events": ["readings", "everything"]}) == ["events.1"]


def test_every_event_kind_is_accepted() -> None:
    kinds = ["readings", "presence", "devices", "dead_letters", "stats"]
    assert parse(events=kinds).key().events == frozenset(kinds)


@pytest.mark.parametrize("ms", [100, 250, 9_999, 10_000])
def test_min_interval_bounds_accepted(ms: int) -> None:
    assert parse(min_interval_ms=ms).min_interval_ms == ms


@pytest.mark.parametrize("ms", [99, 0, -250, 10_001, 1_000_000])
def test_min_interval_out_of_bounds_refused(ms: int) -> None:
    assert refused({"op": "subscribe", "min_interval_ms": ms}) == ["min_interval_ms"]


@pytest.mark.parametrize("value", [True, False, 250.0, "250", None, [250]])
def test_min_interval_must_be_a_strict_int(value: object) -> None:
    """No coercion: booleans (ints in Python), floats and strings are refused."""
    assert refused({"op": "subscribe", "min_interval_ms": value}) == ["min_interval_ms"]


@pytest.mark.parametrize("op", ["unsubscribe", "Subscribe", "", None])
def test_wrong_or_missing_op_is_refused(op: object) -> None:
    assert refused({"op": op}) == ["op"]
    assert refused({}) == ["op"]


def test_extra_fields_are_refused() -> None:
    assert refused({"op": "subscribe", "device": ["a"]}) == ["device"]
    assert refused({"op": "subscribe", "min_interval": 250}) == ["min_interval"]


def test_at_most_max_listed_ids() -> None:
    ids = [f"node-{n}" for n in range(MAX_LISTED)]
    assert parse(devices=ids, metrics=ids).devices == sorted(ids)
    too_many = [*ids, "one-more"]
    assert refused({"op": "subscribe", "devices": too_many}) == ["devices"]
    assert refused({"op": "subscribe", "metrics": too_many}) == ["metrics"]


def test_metric_names_have_bounded_length() -> None:
    assert refused({"op": "subscribe", "metrics": [""]}) == ["metrics.0"]
    assert refused({"op": "subscribe", "metrics": ["m" * 129]}) == ["metrics.0"]
    assert parse(metrics=["m" * 128]).metrics == ["m" * 128]


def test_wrong_types_are_refused() -> None:
    assert refused({"op": "subscribe", "devices": "a4cf12b3c4d5"}) == ["devices"]
    assert refused({"op": "subscribe", "events": "readings"}) == ["events"]


def test_equal_subscriptions_give_equal_hashable_keys() -> None:
    """Device spelling and order, metric order, event order and duplicates do not matter."""
    a = parse(
        devices=["a4cf12b3c4d5", "node-1"],
        metrics=["temperature", "humidity"],
        events=["readings", "presence"],
        min_interval_ms=500,
    )
    b = parse(
        devices=["node-1", "A4-CF-12-B3-C4-D5", "node-1"],
        metrics=["humidity", "temperature", "humidity"],
        events=["presence", "readings", "presence"],
        min_interval_ms=500,
    )
    assert a.key() == b.key()
    assert hash(a.key()) == hash(b.key())
    assert len({a.key(), b.key()}) == 1
    assert a.key().describe() == {
        "devices": ["A4:CF:12:B3:C4:D5", "node-1"],
        "metrics": ["humidity", "temperature"],
        "events": ["presence", "readings"],
        "min_interval_ms": 500,
    }


@pytest.mark.parametrize(
    "other",
    [
        {"min_interval_ms": 1000},
        {"devices": ["node-1"]},
        {"metrics": ["temperature"]},
        {"events": ["readings"]},
        {"devices": []},
        {"metrics": []},
    ],
)
def test_different_subscriptions_give_different_keys(other: dict[str, Any]) -> None:
    assert parse(**other).key() != parse().key()


def test_empty_lists_are_distinct_from_everything() -> None:
    """`devices: []` follows no device (a stats-only page); null follows every device."""
    key = parse(devices=[], events=["stats"]).key()
    assert key.devices == frozenset()
    assert key.describe()["devices"] == []
    assert isinstance(key, LiveFilter)


def test_subscriptions_are_immutable() -> None:
    sub = parse()
    with pytest.raises(ValidationError):
        sub.min_interval_ms = 100
