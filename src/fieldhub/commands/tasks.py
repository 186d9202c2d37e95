"""The command service's background tasks: each one named, kept until done, its failure logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("fieldhub.commands")


class Tasks:
    """Spawns named tasks (`commands.publish[dev-1]`...) and cancels what is left at stop.

    Holding each task until it ends keeps it from being garbage-collected mid-flight (the event
    loop keeps only weak references) and lets `cancel_all` wait for every one.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        """How many tasks are still running."""
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run `coro` as a task called `name`; its exception, if any, is logged."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def names(self) -> list[str]:
        """The running tasks' names (what a debugger or a test looks for)."""
        return sorted(task.get_name() for task in self._tasks)

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())
