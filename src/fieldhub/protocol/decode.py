"""The one entry point from (topic, payload, receive time) to a decode result."""

from __future__ import annotations

from collections.abc import Sequence

from fieldhub.protocol.decoders import BARE_VALUE_DECODERS, DECODERS, DecodeContext
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.protocol.messages import Decoded, DecodeResult, Rejected, RejectReason
from fieldhub.protocol.payload import MAX_PAYLOAD_BYTES, PayloadError
from fieldhub.protocol.profiles import Profile
from fieldhub.protocol.timestamps import AbsurdTimestamp
from fieldhub.protocol.topics import Match, RouteTable

# Distinct topics remembered by the route cache: 10 per device for a 10,000-device fleet.
ROUTE_CACHE_TOPICS = 100_000


class MessageDecoder:
    """Routes a topic through the enabled profiles and decodes its payload.

    Never raises for bad input: every failure is a `Rejected` with a reason code and a sentence a
    device author can act on.
    """

    def __init__(self, profiles: Sequence[Profile]) -> None:
        self.table = RouteTable(profiles)
        # Topic -> where it routes (or why it does not). A fleet uses a few topics per device over
        # and over; matching and canonicalising the id once per topic, not per message, saves a
        # few microseconds each. Cleared when full, so random topics cannot grow it without bound.
        self._routes: dict[str, tuple[Match, str] | Rejected] = {}
        for profile in profiles:
            for route in profile.routes:
                if route.decoder not in DECODERS:
                    raise ValueError(
                        f"route {route.pattern!r} names unknown decoder {route.decoder!r}"
                    )
                if route.decoder in BARE_VALUE_DECODERS and route.metric is None:
                    raise ValueError(
                        f"route {route.pattern!r} uses {route.decoder}, which needs `metric`"
                    )

    @property
    def subscriptions(self) -> list[str]:
        """Broker filters to subscribe to."""
        return self.table.subscriptions

    def max_payload_bytes(self, topic: str) -> int:
        """The largest payload the route of `topic` accepts (the default for unrouted topics)."""
        routed = self._route(topic)
        if isinstance(routed, Rejected):
            return MAX_PAYLOAD_BYTES
        return routed[0].route.max_payload_bytes

    def publishes_retained(self, topic: str) -> bool:
        """True when devices publish `topic` with the retain flag (re-deliveries are expected)."""
        routed = self._route(topic)
        return not isinstance(routed, Rejected) and routed[0].route.publishes_retained

    def _route(self, topic: str) -> tuple[Match, str] | Rejected:
        routed = self._routes.get(topic)
        if routed is None:
            routed = self._route_uncached(topic)
            if len(self._routes) >= ROUTE_CACHE_TOPICS:
                self._routes.clear()
            self._routes[topic] = routed
        return routed

    def _route_uncached(self, topic: str) -> tuple[Match, str] | Rejected:
        match = self.table.match(topic)
        if match is None:
            profile = self.table.profile_of(topic)
            where = f" under the {profile.name} profile" if profile else ""
            return Rejected(
                RejectReason.UNKNOWN_TOPIC,
                f"no route for topic {topic!r}{where}",
                profile=profile.name if profile else None,
            )
        try:
            return match, canonical_device_id(match.raw_device_id)
        except InvalidDeviceId as exc:
            return Rejected(RejectReason.BAD_DEVICE_ID, str(exc), profile=match.profile.name)

    def decode(self, topic: str, payload: bytes, received_us: int) -> DecodeResult:
        """Decode one message; see `DecodeResult` for the outcomes."""
        routed = self._route(topic)
        if isinstance(routed, Rejected):
            return routed
        match, device_id = routed
        ctx = DecodeContext(device_id, match.profile, match.route, received_us)
        try:
            result = DECODERS[match.route.decoder](payload, ctx)
            if isinstance(result, Decoded):
                route = match.route
                if match.profile.command_format is not None:
                    result.topic_id = match.raw_device_id
                    result.command_format = route.command_format
                result.from_device = route.from_device
            return result
        except PayloadError as exc:
            return Rejected(exc.reason, exc.detail, device_id, match.profile.name)
        except AbsurdTimestamp as exc:
            return Rejected(RejectReason.ABSURD_TIMESTAMP, str(exc), device_id, match.profile.name)
        except (RecursionError, MemoryError, ValueError, TypeError) as exc:
            # A payload that trips a decoder bug must cost one dead letter, not the ingest process.
            return Rejected(
                RejectReason.INTERNAL_ERROR,
                f"decoder {match.route.decoder} failed: {type(exc).__name__}: {exc}",
                device_id,
                match.profile.name,
            )
