"""Per-device token buckets: how many commands a device may be sent, on average and at once."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

# Buckets not touched for this long are full again and are forgotten, so a fleet that was once
# commanded does not keep one bucket per device for ever.
IDLE_FORGET_S = 3600.0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class RateLimiter:
    """`rate_per_s` commands a second per key, in bursts of at most `burst`."""

    rate_per_s: float
    burst: int
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _last_sweep: float = field(default_factory=time.monotonic)

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token for `key`: 0.0 when granted, else the seconds until one is free."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate_per_s)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            self._sweep(now)
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def retry_after_s(self, wait_s: float) -> int:
        """A Retry-After header value (whole seconds, at least 1)."""
        return max(1, math.ceil(wait_s))

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < IDLE_FORGET_S:
            return
        self._last_sweep = now
        for key in [k for k, b in self._buckets.items() if now - b.at > IDLE_FORGET_S]:
            del self._buckets[key]
