"""MQTT topic matching and the route table built from the enabled profiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fieldhub.protocol.profiles import Profile, Route


def filter_matches(topic_filter: str, topic: str) -> bool:
    """True when `topic` matches the MQTT subscription filter (`+` one level, `#` the rest).

    As in MQTT, a filter starting with a wildcard does not match `$` topics (`$SYS/...`).
    """
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


@dataclass(frozen=True, slots=True)
class Match:
    """A topic matched to its route: the raw id segment is not yet canonical."""

    profile: Profile
    route: Route
    raw_device_id: str


class RouteTable:
    """All routes of the enabled profiles, indexed for a few dict lookups per message.

    The key of a route is its level count and its levels with the id level replaced by `+`; a topic
    is looked up once per distinct id position among routes of its length (one or two positions in
    practice), not tested against every pattern.
    """

    def __init__(self, profiles: Sequence[Profile]) -> None:
        self.profiles = tuple(profiles)
        self._routes: dict[tuple[str, ...], tuple[Profile, Route]] = {}
        self._id_levels: dict[int, list[int]] = {}
        for profile in self.profiles:
            for route in profile.routes:
                key = tuple(route.pattern.split("/"))
                if key in self._routes:
                    other = self._routes[key][0].name
                    raise ValueError(
                        f"route {route.pattern!r} is claimed by {other} and {profile.name}"
                    )
                self._routes[key] = (profile, route)
                positions = self._id_levels.setdefault(len(key), [])
                if route.id_level not in positions:
                    positions.append(route.id_level)

    @property
    def subscriptions(self) -> list[str]:
        """Broker filters covering every enabled profile, without repeats."""
        seen: dict[str, None] = {}
        for profile in self.profiles:
            for sub in profile.subscriptions:
                seen.setdefault(sub, None)
        return list(seen)

    def match(self, topic: str) -> Match | None:
        """The route for `topic`, or None when no enabled route has its shape."""
        levels = topic.split("/")
        for position in self._id_levels.get(len(levels), ()):
            key = (*levels[:position], "+", *levels[position + 1 :])
            found = self._routes.get(key)
            if found is not None:
                return Match(found[0], found[1], levels[position])
        return None

    def profile_of(self, topic: str) -> Profile | None:
        """The profile whose subscription prefix covers `topic` (for naming an unknown topic)."""
        for profile in self.profiles:
            if any(filter_matches(sub, topic) for sub in profile.subscriptions):
                return profile
        return None

    def route_for(self, profile_name: str, channel: str) -> Route | None:
        """The first route of a profile on a channel (HTTP ingest and simulators use it)."""
        for profile in self.profiles:
            if profile.name == profile_name:
                for route in profile.routes:
                    if route.channel == channel:
                        return route
        return None
