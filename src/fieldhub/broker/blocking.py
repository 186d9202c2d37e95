"""Drive one broker process from synchronous code: pytest fixtures, benchmarks, scripts.

Start and stop have one implementation, the coroutines of `BrokerProcess`;
`MosquittoProcess` runs each call to completion on a private event loop in the
calling thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from fieldhub.broker.access import BrokerAccess
from fieldhub.broker.config import LegacyListener, TlsListener
from fieldhub.broker.process import (
    READY_TIMEOUT_S,
    RELOAD_TIMEOUT_S,
    STOP_TIMEOUT_S,
    BrokerProcess,
)

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to completion on a new event loop in this thread."""
    # The calling thread runs the loop, so the broker's parent-death signal is
    # tied to that thread, as with a direct spawn. A loop_factory, unlike
    # asyncio.run(), leaves the thread's current event loop alone: asyncio.run()
    # replaces it and leaves none set afterwards, and in a pytest fixture the
    # current loop may be pytest-asyncio's.
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(coroutine)


class MosquittoProcess:
    """One Mosquitto child process for synchronous code (see `BrokerProcess`).

    `start()` blocks until the broker listens, `stop()` until it has exited.
    Neither may be called from a thread that is running an event loop: code
    there awaits the `BrokerProcess` in `process` instead.
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

    @property
    def data_dir(self) -> Path:
        """The directory `mosquitto/` (config, log, persistence) lives in."""
        return self.process.data_dir

    @property
    def host(self) -> str:
        """Address the listener binds."""
        return self.process.host

    @property
    def port(self) -> int:
        """Port the listener binds."""
        return self.process.port

    @property
    def url(self) -> str:
        """`mqtt://host:port` of the listener (IPv6 hosts in brackets)."""
        return self.process.url

    @property
    def broker_dir(self) -> Path:
        """Directory holding the broker's config, log and persistence."""
        return self.process.broker_dir

    @property
    def config_path(self) -> Path:
        """The generated mosquitto.conf."""
        return self.process.config_path

    @property
    def log_path(self) -> Path:
        """The broker's stdout and stderr, appended across restarts."""
        return self.process.log_path

    @property
    def persistence_dir(self) -> Path:
        """Where Mosquitto keeps mosquitto.db."""
        return self.process.persistence_dir

    @property
    def pid(self) -> int | None:
        """Process id of the current or last broker process, None before start."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """Exit code of the last process (negative: killed by that signal)."""
        return self.process.returncode

    @property
    def is_running(self) -> bool:
        """True while the broker process is alive."""
        return self.process.is_running

    @property
    def run_as(self) -> str:
        """User name the broker runs as ("" before start)."""
        return self.process.run_as

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Spawn Mosquitto and block until its port accepts TCP connections.

        Raises what `BrokerProcess.start` raises; no process is left behind.
        """
        _run(self.process.start(timeout_s))

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Stop the broker (SIGTERM, SIGKILL after `timeout_s`) and return its exit code.

        None if it was never started. Safe to call again, or after the process
        died by itself.
        """
        return _run(self.process.stop(timeout_s))

    def reload(self, access: BrokerAccess, timeout_s: float = RELOAD_TIMEOUT_S) -> None:
        """Apply new access and block until the broker has (see `BrokerProcess.reload`)."""
        _run(self.process.reload(access, timeout_s))

    def kill(self) -> None:
        """SIGKILL the broker and reap it: no state saved, like a crash."""
        self.process.kill()
