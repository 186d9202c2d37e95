"""Per-series coalescing: at most one update per (device, metric) per window.

Pure logic with the clock passed in, so it is tested without sleeping.
"""

from __future__ import annotations

# One live update as sent on the wire: [device, metric, ts_us, value].
Update = list[str | int | float]
SeriesKey = tuple[str, str]

# Forget series not sent for this many windows: the map then holds only active series.
PRUNE_AFTER_WINDOWS = 8


class SeriesCoalescer:
    """Decides, per reading, whether it goes out now or waits for its series' window to end.

    The first reading of a series in a window is sent at once (no delay for series slower than
    the window); later ones in the same window are held, and only the newest (by device time) is
    sent when the window ends.
    """

    def __init__(self, window_us: int) -> None:
        self.window_us = window_us
        self._last_sent: dict[SeriesKey, int] = {}
        self._held: dict[SeriesKey, Update] = {}
        self._last_prune = 0

    @property
    def held(self) -> int:
        """Series with an update waiting for its window to end."""
        return len(self._held)

    def offer(self, device: str, metric: str, ts_us: int, value: float, now_us: int) -> bool:
        """True: send [device, metric, ts_us, value] now. False: it is held (or superseded)."""
        key = (device, metric)
        last = self._last_sent.get(key)
        if (last is None or now_us - last >= self.window_us) and key not in self._held:
            self._last_sent[key] = now_us
            return True
        held = self._held.get(key)
        if held is None or ts_us >= held[2]:  # type: ignore[operator]
            self._held[key] = [device, metric, ts_us, value]
        return False

    def due(self, now_us: int) -> list[Update]:
        """Held updates whose window has ended; they count as sent now."""
        out: list[Update] = []
        if self._held:
            window = self.window_us
            last_sent = self._last_sent
            for key, update in list(self._held.items()):
                if now_us - last_sent.get(key, 0) >= window:
                    out.append(update)
                    last_sent[key] = now_us
                    del self._held[key]
        if now_us - self._last_prune >= PRUNE_AFTER_WINDOWS * self.window_us:
            self._prune(now_us)
        return out

    def _prune(self, now_us: int) -> None:
        horizon = now_us - PRUNE_AFTER_WINDOWS * self.window_us
        self._last_sent = {
            k: t for k, t in self._last_sent.items() if t >= horizon or k in self._held
        }
        self._last_prune = now_us
