"""Counting a simulated fleet's publishes across threads."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SimStats:
    """What a simulated fleet did: every publish (telemetry and status) counts once.

    `sent` publishes were handed to the MQTT client; each ends `acked` (PUBACK received) or
    `failed` (the connection was dropped first, or the client refused it). `skipped` counts
    messages that came due while their device could not send (offline, or too many unacked),
    which a real device without a buffer would not have sent either.
    """

    sent: int = 0
    acked: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def in_flight(self) -> int:
        """Publishes still waiting for their PUBACK."""
        return self.sent - self.acked - self.failed


class PublishCounter:
    """Thread-safe publish counts.

    Publish futures complete in the MQTT clients' network threads (one per device), while the
    scheduler thread counts what it sends, so every update takes the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = 0
        self._acked = 0
        self._failed = 0
        self._skipped = 0

    def track(self, future: Future[None]) -> None:
        """Count `future` as sent now, and as acked or failed when it completes."""
        with self._lock:
            self._sent += 1
        future.add_done_callback(self._finished)

    def skip(self, count: int = 1) -> None:
        """Count messages that came due but were not sent."""
        with self._lock:
            self._skipped += count

    def snapshot(self) -> SimStats:
        """The counts so far, consistent with each other."""
        with self._lock:
            return SimStats(self._sent, self._acked, self._failed, self._skipped)

    def _finished(self, future: Future[None]) -> None:
        ok = not future.cancelled() and future.exception() is None
        with self._lock:
            if ok:
                self._acked += 1
            else:
                self._failed += 1
