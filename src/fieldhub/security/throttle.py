"""Login throttling: after a few failures for one username or from one address, refuse for a
while, doubling each time it happens again.

After `max_failures` failures of one key within `window_s` of each other, the key is locked for
`base_lock_s`; each further failure after a lock ends locks it again for twice as long, up to
`max_lock_s`. Attempts during a lock are refused without checking the password (so a locked
account cannot be guessed at) and do not extend it. A key forgets everything `window_s` after
its last failure or the end of its last lock, whichever is later. State is an LRU of at most
`max_keys` keys, so a flood of addresses or made-up usernames costs bounded memory (the oldest
keys are forgotten first).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

MAX_FAILURES = 5
WINDOW_S = 15 * 60.0
BASE_LOCK_S = 15.0
MAX_LOCK_S = 15 * 60.0
MAX_KEYS = 10_000


@dataclass(slots=True)
class _KeyState:
    failures: int = 0
    last_failure_s: float = 0.0
    locks: int = 0
    locked_until_s: float = 0.0


class LoginThrottle:
    """Failures per key ("user:<name>", "addr:<ip>"), on a monotonic clock in seconds."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window_s: float = WINDOW_S,
        base_lock_s: float = BASE_LOCK_S,
        max_lock_s: float = MAX_LOCK_S,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.base_lock_s = base_lock_s
        self.max_lock_s = max_lock_s
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _KeyState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    @staticmethod
    def keys_for(username: str, address: str | None) -> list[str]:
        """The keys an attempt counts against: its username (case-folded) and its address."""
        keys = [f"user:{username.strip().casefold()}"]
        if address:
            keys.append(f"addr:{address}")
        return keys

    def _state(self, key: str, now_s: float) -> _KeyState | None:
        state = self._keys.get(key)
        if state is None:
            return None
        # Forgotten a window after the last failure or the end of the last lock, whichever is
        # later: a lock of the full window must not end with a clean slate.
        if now_s - max(state.last_failure_s, state.locked_until_s) >= self.window_s:
            del self._keys[key]
            return None
        return state

    def retry_after_s(self, keys: list[str], now_s: float) -> int | None:
        """Whole seconds until an attempt on `keys` is allowed again; None when it is now."""
        wait = 0.0
        for key in keys:
            state = self._state(key, now_s)
            if state is not None:
                wait = max(wait, state.locked_until_s - now_s)
        return math.ceil(wait) if wait > 0 else None

    def failed(self, keys: list[str], now_s: float) -> None:
        """Count a failed attempt against each key, locking those that reached the limit."""
        for key in keys:
            state = self._state(key, now_s)
            if state is None:
                state = _KeyState()
                self._keys[key] = state
            self._keys.move_to_end(key)
            state.failures += 1
            state.last_failure_s = now_s
            if state.failures >= self.max_failures:
                lock = min(self.base_lock_s * 2**state.locks, self.max_lock_s)
                state.locks += 1
                state.locked_until_s = now_s + lock
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def succeeded(self, username: str) -> None:
        """A correct password clears its username's failures. Not its address's: one account
        the attacker owns must not reset the count of guesses at the others."""
        self._keys.pop(self.keys_for(username, None)[0], None)
