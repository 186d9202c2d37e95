"""Topic filters, routes and the route table built from profiles."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldhub.protocol.decode import MessageDecoder
from fieldhub.protocol.profiles import (
    BUILTIN_PROFILES,
    DEFAULT_PROFILES,
    IOT_NODE,
    NATIVE,
    READINGS,
    SENSOR,
    Profile,
    Route,
    select_profiles,
)
from fieldhub.protocol.topics import RouteTable, filter_matches


def _profile(name: str, subscriptions: tuple[str, ...], *patterns: str) -> Profile:
    routes = tuple(Route(pattern, f"ch{i}", "ignore") for i, pattern in enumerate(patterns))
    return Profile(name=name, subscriptions=subscriptions, routes=routes, stale_after_s=60)


def _reference_match(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7 written as a regular expression, independently of filter_matches."""
    levels = topic_filter.split("/")
    if topic.startswith("$") and levels[0] in ("+", "#"):
        return False
    parts = ["[^/]*" if level == "+" else re.escape(level) for level in levels]
    if levels[-1] == "#":
        prefix = "/".join(parts[:-1])
        pattern = ".*" if len(levels) == 1 else prefix + "(/.*)?"
    else:
        pattern = "/".join(parts)
    return re.fullmatch(pattern, topic, flags=re.DOTALL) is not None


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("devices/+/telemetry", "devices/n1/telemetry", True),
        ("devices/+/telemetry", "devices//telemetry", True),
        ("devices/+/telemetry", "devices/n1/status", False),
        ("devices/+/telemetry", "devices/n1/telemetry/x", False),
        ("devices/+/telemetry", "devices/n1", False),
        ("devices/#", "devices", True),
        ("devices/#", "devices/", True),
        ("devices/#", "devices/a/b/c", True),
        ("devices/#", "device", False),
        ("devices/#", "other/devices", False),
        ("/readings/#", "/readings/gateway/x", True),
        ("/readings/#", "readings/gateway/x", False),
        ("#", "anything/at/all", True),
        ("#", "$SYS/broker/uptime", False),
        ("+/broker/uptime", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/b", "a/b/", False),
        ("+", "", True),
        ("+", "a/b", False),
    ],
)
def test_filter_matches_examples(topic_filter: str, topic: str, expected: bool) -> None:
    """`+` is one level (possibly empty), `#` the parent and everything below, `$` is special."""
    assert filter_matches(topic_filter, topic) is expected


_levels = st.sampled_from(["a", "b", "devices", "", "$SYS", "x+y", "readings"])
_topics = st.lists(_levels, min_size=1, max_size=5).map("/".join)
_filters = st.tuples(
    st.lists(st.one_of(_levels, st.just("+")), min_size=0, max_size=4), st.booleans()
).map(lambda t: "/".join([*t[0], "#"]) if t[1] or not t[0] else "/".join(t[0]))


@given(_filters, _topics)
def test_filter_matches_agrees_with_a_reference(topic_filter: str, topic: str) -> None:
    """For generated filters and topics, filter_matches agrees with a regex reference."""
    assert filter_matches(topic_filter, topic) == _reference_match(topic_filter, topic)


@given(_topics)
def test_a_topic_matches_itself_and_hash(topic: str) -> None:
    """A wildcard-free topic matches itself as a filter, and `#` unless it is a `$` topic."""
    assert filter_matches(topic, topic)
    assert filter_matches("#", topic) is not topic.startswith("$")


def test_route_pattern_needs_exactly_one_plus_and_no_hash() -> None:
    """A route without an id level, with two, or with `#` is refused at definition."""
    for pattern in ("devices/x/telemetry", "devices/+/+", "devices/+/#", "#"):
        with pytest.raises(ValueError, match="exactly one"):
            Route(pattern, "c", "ignore")
    assert Route("/readings/gateway/+", "c", "ignore").id_level == 3
    assert Route("devices/+/telemetry", "c", "ignore").id_level == 1


def test_subscriptions_are_deduplicated_in_order() -> None:
    """Shared prefixes appear once, in the order the profiles list them."""
    first = _profile("first", ("devices/#", "shared/#"), "devices/+/a")
    second = _profile("second", ("shared/#", "other/#", "devices/#"), "other/+/b")
    assert RouteTable([first, second]).subscriptions == ["devices/#", "shared/#", "other/#"]


def test_duplicate_route_across_profiles_raises_naming_both() -> None:
    """Two profiles claiming the same pattern is a configuration error naming both."""
    first = _profile("first", ("devices/#",), "devices/+/a")
    second = _profile("second", ("devices/#",), "devices/+/a")
    with pytest.raises(ValueError, match=r"'devices/\+/a' is claimed by first and second"):
        RouteTable([first, second])


def test_enabling_a_builtin_profile_twice_raises() -> None:
    """Listing a profile twice claims every route twice."""
    with pytest.raises(ValueError, match="claimed by native and native"):
        RouteTable(select_profiles(["native", "native"]))


def test_match_finds_route_and_raw_id_at_any_position() -> None:
    """Routes with the id at different levels coexist; the raw id is not yet canonical."""
    table = RouteTable([NATIVE, READINGS])
    match = table.match("/readings/gateway/3c-e9-0e-72-12-4c")
    assert match is not None
    assert match.profile is READINGS
    assert match.route.channel == "gateway"
    assert match.raw_device_id == "3c-e9-0e-72-12-4c"
    ack = table.match("devices/n1/commands/ack")
    assert ack is not None
    assert (ack.route.channel, ack.raw_device_id) == ("command_ack", "n1")
    data = table.match("devices/n1/data")
    assert data is not None
    assert data.route.channel == "telemetry"
    assert table.match("devices/n1/nope") is None
    assert table.match("devices/n1") is None
    assert table.match("") is None


def test_profile_of_and_route_for() -> None:
    """profile_of names the profile owning a prefix; route_for finds a profile's channel route."""
    table = RouteTable([NATIVE, READINGS])
    assert table.profile_of("devices/x/zzz") is NATIVE
    assert table.profile_of("/readings/what/ever") is READINGS
    assert table.profile_of("sensor/x/temperature") is None
    route = table.route_for("readings", "temperature")
    assert route is not None
    assert route.pattern == "/readings/temperature/+"
    native_route = table.route_for("native", "telemetry")
    assert native_route is not None
    assert native_route.pattern == "devices/+/telemetry"
    assert table.route_for("native", "nope") is None
    assert table.route_for("nope", "telemetry") is None


def test_select_profiles() -> None:
    """Known names come back in order; an unknown one names the choices."""
    assert select_profiles(DEFAULT_PROFILES) == [NATIVE, READINGS, IOT_NODE, SENSOR]
    assert select_profiles(["readings"]) == [READINGS]
    with pytest.raises(
        ValueError,
        match="unknown profile 'thermostat'; known profiles: iot-node, native, readings, sensor",
    ):
        select_profiles(["native", "thermostat"])


def test_every_builtin_route_names_a_decoder_and_sits_under_a_subscription() -> None:
    """Built-in routes are decodable and reachable through their profile's subscriptions."""
    MessageDecoder(list(BUILTIN_PROFILES.values()))
    for profile in BUILTIN_PROFILES.values():
        for route in profile.routes:
            example = route.pattern.replace("+", "dev")
            assert any(filter_matches(sub, example) for sub in profile.subscriptions), route


def test_unknown_decoder_name_is_refused() -> None:
    """A route naming a decoder that does not exist fails when the decoder is built."""
    bad = Profile("bad", ("x/#",), (Route("x/+/y", "c", "nope"),), stale_after_s=1)
    with pytest.raises(ValueError, match="unknown decoder 'nope'"):
        MessageDecoder([bad])


_route_levels = st.sampled_from(
    [
        "devices",
        "n1",
        "telemetry",
        "data",
        "status",
        "commands",
        "ack",
        "ota",
        "",
        "readings",
        "gateway",
        "temperature",
        "+",
        "x",
    ]
)
_route_topics = st.lists(_route_levels, min_size=1, max_size=5).map("/".join)

_TABLE = RouteTable([NATIVE, READINGS])
_ALL_ROUTES = [route for profile in (NATIVE, READINGS) for route in profile.routes]


@given(_route_topics)
def test_route_table_agrees_with_filter_matches(topic: str) -> None:
    """The indexed lookup finds a route exactly when some route pattern matches as a filter."""
    matching = [route for route in _ALL_ROUTES if filter_matches(route.pattern, topic)]
    match = _TABLE.match(topic)
    if not matching:
        assert match is None
        return
    assert match is not None
    assert len(matching) == 1
    assert match.route is matching[0]
    assert match.raw_device_id == topic.split("/")[match.route.id_level]
