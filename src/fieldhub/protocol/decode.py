"""The one entry point from (topic, payload, receive time) to a decode result."""

from __future__ import annotations

from collections.abc import Sequence

from fieldhub.protocol.decoders import DECODERS, DecodeContext
from fieldhub.protocol.ids import InvalidDeviceId, canonical_device_id
from fieldhub.protocol.messages import DecodeResult, Rejected, RejectReason
from fieldhub.protocol.payload import PayloadError
from fieldhub.protocol.profiles import Profile
from fieldhub.protocol.timestamps import AbsurdTimestamp
from fieldhub.protocol.topics import RouteTable


class MessageDecoder:
    """Routes a topic through the enabled profiles and decodes its payload.

    Never raises for bad input: every failure is a `Rejected` with a reason code and a sentence a
    device author can act on.
    """

    def __init__(self, profiles: Sequence[Profile]) -> None:
        self.table = RouteTable(profiles)
        for profile in profiles:
            for route in profile.routes:
                if route.decoder not in DECODERS:
                    raise ValueError(
                        f"route {route.pattern!r} names unknown decoder {route.decoder!r}"
                    )

    @property
    def subscriptions(self) -> list[str]:
        """Broker filters to subscribe to."""
        return self.table.subscriptions

    def publishes_retained(self, topic: str) -> bool:
        """True when devices publish `topic` with the retain flag (re-deliveries are expected)."""
        match = self.table.match(topic)
        return match is not None and match.route.publishes_retained

    def decode(self, topic: str, payload: bytes, received_us: int) -> DecodeResult:
        """Decode one message; see `DecodeResult` for the outcomes."""
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
            device_id = canonical_device_id(match.raw_device_id)
        except InvalidDeviceId as exc:
            return Rejected(RejectReason.BAD_DEVICE_ID, str(exc), profile=match.profile.name)
        ctx = DecodeContext(device_id, match.profile, match.route, received_us)
        try:
            return DECODERS[match.route.decoder](payload, ctx)
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
