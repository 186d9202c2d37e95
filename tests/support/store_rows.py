"""Building store input in tests: one decoded-message helper and the time constants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fieldhub.protocol.messages import AttributeValue, Decoded, Presence, Reading

T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z in epoch microseconds
S = 1_000_000


def msg(
    device_id: str = "dev-1",
    received_us: int = T0,
    readings: Sequence[tuple[str, int, float]] = (),
    *,
    profile: str = "native",
    attributes: Mapping[str, AttributeValue] | None = None,
    presence: Presence | None = None,
) -> Decoded:
    """A decoded message; readings are (metric, ts_us, value)."""
    return Decoded(
        device_id=device_id,
        profile=profile,
        channel="telemetry",
        received_us=received_us,
        readings=[Reading(m, ts, v) for m, ts, v in readings],
        attributes=dict(attributes or {}),
        presence=presence,
    )
