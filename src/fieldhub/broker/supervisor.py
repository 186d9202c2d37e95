"""Keep the embedded Mosquitto running for the lifetime of the application.

`BrokerSupervisor` starts one `BrokerProcess`, watches it from a background
task and restarts it with backoff when it dies without being asked to.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from types import TracebackType
from typing import Self

from fieldhub.broker.access import BrokerAccess
from fieldhub.broker.config import LegacyListener, TlsListener
from fieldhub.broker.errors import BrokerError
from fieldhub.broker.process import (
    READY_TIMEOUT_S,
    RELOAD_TIMEOUT_S,
    STOP_TIMEOUT_S,
    BrokerProcess,
)

logger = logging.getLogger("fieldhub.broker")

# Restart backoff after an unexpected exit: the first delay is drawn from
# [0, RESTART_BACKOFF_INITIAL_S], each further failure doubles the ceiling up to
# RESTART_BACKOFF_MAX_S ("full jitter"). Short at first because devices and
# ingest are all waiting on the broker; capped because a broker that dies at
# once (corrupt persistence file, port stolen) would otherwise spin a CPU and
# flood the log. 30 s is also about what reconnecting device stacks wait.
RESTART_BACKOFF_INITIAL_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0

# A broker that stayed up this long before dying is treated as healthy again:
# the next restart starts from the initial delay instead of the last one.
RESTART_BACKOFF_RESET_AFTER_S = 60.0


class BrokerSupervisor:
    """Keep an embedded Mosquitto running for the lifetime of the application.

    `start()` returns once the broker listens. A background task named
    `broker.supervise` then waits for the process to exit; an exit we did not
    ask for is logged with its exit code and followed by a restart after a
    full-jitter exponential backoff (`restarts` counts them); the restarted
    broker gets the access last given to the constructor or `reload()`. `stop()` ends
    supervision and stops the broker cleanly. Also an async context manager.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        executable: str | None = None,
        access: BrokerAccess | None = None,
        tls: TlsListener | None = None,
        legacy: LegacyListener | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        restart_backoff_initial_s: float = RESTART_BACKOFF_INITIAL_S,
        restart_backoff_max_s: float = RESTART_BACKOFF_MAX_S,
        restart_backoff_reset_after_s: float = RESTART_BACKOFF_RESET_AFTER_S,
    ) -> None:
        self.process = BrokerProcess(
            data_dir=data_dir,
            port=port,
            host=host,
            executable=executable,
            access=access,
            tls=tls,
            legacy=legacy,
        )
        self.restarts = 0
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._backoff_initial_s = restart_backoff_initial_s
        self._backoff_max_s = restart_backoff_max_s
        self._backoff_reset_after_s = restart_backoff_reset_after_s
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """`mqtt://host:port` clients connect to."""
        return self.process.url

    @property
    def is_running(self) -> bool:
        """True while the broker process is alive (False during a restart delay)."""
        return self.process.is_running

    async def start(self) -> None:
        """Start the broker, wait until it listens, then start supervising it."""
        if self._task is not None:
            raise BrokerError("broker supervisor already started")
        await self.process.start(self._ready_timeout_s)
        self._task = asyncio.create_task(self._supervise(), name="broker.supervise")
        self._task.add_done_callback(_log_unexpected_end)

    async def reload(self, access: BrokerAccess, timeout_s: float = RELOAD_TIMEOUT_S) -> None:
        """Apply new access (see BrokerProcess.reload); a restart after a crash also uses it."""
        await self.process.reload(access, timeout_s)

    async def stop(self) -> None:
        """Stop supervising, then stop the broker (SIGTERM, SIGKILL on timeout)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait neither raises the task's CancelledError nor swallows
            # a cancellation of stop() itself, unlike suppress(CancelledError).
            await asyncio.wait([task])
        await self.process.stop(self._stop_timeout_s)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _next_delay_s(self, attempt: int) -> float:
        """Full-jitter backoff: uniform in [0, min(max, initial * 2**attempt)]."""
        ceiling = min(self._backoff_max_s, self._backoff_initial_s * 2.0**attempt)
        return random.uniform(0.0, ceiling)

    async def _supervise(self) -> None:
        """Wait for unexpected exits and restart the broker until cancelled."""
        attempt = 0
        while True:
            returncode = await self.process.wait_exit()
            if self.process.uptime_s >= self._backoff_reset_after_s:
                attempt = 0
            delay_s = self._next_delay_s(attempt)
            attempt += 1
            tail = self.process.log_tail(lines=3)
            logger.warning(
                "mosquitto exited unexpectedly with code %s; restarting in %.2f s%s",
                returncode,
                delay_s,
                f"; its log ends with:\n{tail}" if tail else "",
            )
            while True:
                await asyncio.sleep(delay_s)
                try:
                    await self.process.start(self._ready_timeout_s)
                except (BrokerError, OSError) as exc:
                    # Keep trying with longer delays: the cause (a stolen port,
                    # a full disk, an upgrade in progress) may go away, and
                    # fieldhub is useless without its broker. Each failure is
                    # logged with the broker's own words.
                    delay_s = self._next_delay_s(attempt)
                    attempt += 1
                    logger.warning("%s; retrying in %.2f s", exc, delay_s)
                    continue
                break
            self.restarts += 1
            logger.info(
                "mosquitto restarted (restart #%d, pid %s)", self.restarts, self.process.pid
            )


def _log_unexpected_end(task: asyncio.Task[None]) -> None:
    """Done-callback: a supervise task must only ever end by cancellation."""
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "%s crashed: the broker is no longer supervised",
            task.get_name(),
            exc_info=task.exception(),
        )
