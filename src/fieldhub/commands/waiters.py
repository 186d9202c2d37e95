"""Callers waiting for a command to end (`POST ...?wait_s=`), woken by the transition ending it."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Waiters(Generic[K, V]):
    """Futures per key: `wait` parks one until `resolve` or its timeout, whichever is first."""

    def __init__(self) -> None:
        self._futures: dict[K, list[asyncio.Future[V | None]]] = {}

    def __len__(self) -> int:
        """How many keys have someone waiting."""
        return len(self._futures)

    async def wait(self, key: K, timeout_s: float) -> V | None:
        """What `resolve(key, ...)` hands over, or None after `timeout_s`."""
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(key, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None
        finally:
            waiting = self._futures.get(key)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._futures[key]

    def resolve(self, key: K, value: V | None) -> int:
        """Wake everyone waiting on `key` with `value`; returns how many were woken."""
        woken = 0
        for future in self._futures.pop(key, ()):
            if not future.done():
                future.set_result(value)
                woken += 1
        return woken
