"""Wait for a child process to exit without blocking the event loop."""

from __future__ import annotations

import asyncio
import os
import subprocess

# How often the exit watcher polls where pidfd is unavailable (non-Linux, kernel
# < 5.3). Detection latency only adds to the restart delay, and a waitpid(WNOHANG)
# four times a second costs nothing.
EXIT_POLL_INTERVAL_S = 0.25


async def _readable(fd: int) -> None:
    """Wait until `fd` is readable (a pidfd is readable once its process exited)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def wait_for_exit(popen: subprocess.Popen[bytes]) -> int:
    """Wait until `popen` exits, reap it and return its exit code.

    Uses a pidfd on Linux (woken by the kernel, no polling); elsewhere, or if
    the process is already gone, polls every EXIT_POLL_INTERVAL_S.
    """
    returncode = popen.poll()
    if returncode is not None:
        return returncode
    pidfd_open = getattr(os, "pidfd_open", None)
    pidfd: int | None = None
    if pidfd_open is not None:
        try:
            pidfd = pidfd_open(popen.pid)
        except OSError:
            pidfd = None  # kernel < 5.3, or already reaped: poll below
    if pidfd is not None:
        try:
            await _readable(pidfd)
        finally:
            os.close(pidfd)
    # After the pidfd fired this reaps at once; without one it is the poll.
    while True:
        returncode = popen.poll()
        if returncode is not None:
            return returncode
        await asyncio.sleep(EXIT_POLL_INTERVAL_S)
