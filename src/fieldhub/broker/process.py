"""Spawn one Mosquitto child process, wait until it listens, and stop it.

Process hygiene, in order of how much it matters:

* The broker gets its own process group, so a Ctrl-C in the terminal reaches
  only fieldhub, which then stops the broker *after* ingest has committed and
  acked what it holds.
* On Linux the broker gets SIGTERM when fieldhub dies (`parent_death`), so
  `kill -9` of fieldhub does not leave an orphan holding the port.
* Running as root, the broker runs as an unprivileged user that owns its
  persistence directory (`privileges`).

Keeping it running (restart on crash) is `fieldhub.broker.supervisor`'s job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import subprocess
import time
from pathlib import Path
from typing import IO

from fieldhub import clock
from fieldhub.broker.child_exit import wait_for_exit
from fieldhub.broker.config import render_mosquitto_conf
from fieldhub.broker.errors import BrokerError, BrokerStartError
from fieldhub.broker.executable import find_mosquitto
from fieldhub.broker.log import LOG_TAIL_LINES, read_log_tail, rotate_log
from fieldhub.broker.parent_death import parent_death_hook
from fieldhub.broker.privileges import RunAs, prepare_run_as
from fieldhub.net import PORT_POLL_INTERVAL_S, async_can_connect, bind_error, describe_bind_error

logger = logging.getLogger("fieldhub.broker")

# How long start() waits for the listener. An empty broker listens ~20 ms after
# exec; with a persistence file it first loads it: measured 0.4 s for 200k
# queued messages, so ~1 s for a full queue (config.MAX_QUEUED_MESSAGES). 15 s
# leaves room for an SD card and a slow CPU before we call the start failed.
READY_TIMEOUT_S = 15.0

# SIGTERM grace before SIGKILL. Mosquitto saves its persistence file on SIGTERM
# (measured 0.24 s per 200k queued messages); killing it earlier loses what it
# queued since the last autosave, so be generous: a healthy broker exits in ms.
STOP_TIMEOUT_S = 10.0


class BrokerProcess:
    """One Mosquitto child process with a generated config.

    Files live under `<data_dir>/mosquitto/`: `mosquitto.conf` (rewritten at
    every start), `mosquitto.log` (the broker's stdout and stderr, appended),
    and `persistence/` (sessions, queued and retained messages).

    `start()` and `stop()` are coroutines; synchronous code (pytest fixtures,
    benchmarks) drives them through `fieldhub.broker.blocking.MosquittoProcess`.
    The parent-death signal is tied to the *thread* that starts the process:
    run the loop that calls `start()` on a thread that lives as long as the
    broker should (the main thread, a pytest fixture's thread), and never
    spawn through `asyncio.to_thread`, or the broker gets SIGTERM when that
    worker thread ends.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        executable: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.host = host
        self._executable = executable
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._started_at = 0.0
        self._why_root: str | None = None
        self.run_as = ""  # user name the broker runs as; set by start()

    @property
    def broker_dir(self) -> Path:
        """Directory holding the broker's config, log and persistence."""
        return self.data_dir / "mosquitto"

    @property
    def config_path(self) -> Path:
        """The generated mosquitto.conf."""
        return self.broker_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """The broker's stdout and stderr, appended across restarts."""
        return self.broker_dir / "mosquitto.log"

    @property
    def persistence_dir(self) -> Path:
        """Where Mosquitto keeps mosquitto.db."""
        return self.broker_dir / "persistence"

    @property
    def url(self) -> str:
        """`mqtt://host:port` of the listener (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the current or last broker process, None before start."""
        return None if self._popen is None else self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit code of the last process (negative: killed by that signal)."""
        return None if self._popen is None else self._popen.poll()

    @property
    def is_running(self) -> bool:
        """True while the broker process is alive (it may not listen yet)."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def uptime_s(self) -> float:
        """Seconds since the current process was spawned (0 before start)."""
        return 0.0 if self._popen is None else time.monotonic() - self._started_at

    async def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Spawn Mosquitto and wait, without blocking the loop, until its port accepts TCP.

        Raises MosquittoNotFound, or BrokerStartError (with the last lines of
        the log) if the port cannot be bound, the broker exits during startup,
        or it does not listen within `timeout_s`; no process is left behind.

        The spawn itself (fork and exec, about a millisecond) runs on the loop
        thread on purpose: see the class docstring about the parent-death signal.
        """
        popen = self._spawn()
        deadline = time.monotonic() + timeout_s
        while True:
            returncode = popen.poll()
            if returncode is not None:
                raise self._start_error("it exited during startup", returncode)
            if await async_can_connect(self.host, self.port) and popen.poll() is None:
                return
            if time.monotonic() >= deadline:
                await self.stop()
                raise self._start_error(
                    f"it did not accept connections on {self.host}:{self.port} "
                    f"within {timeout_s:g} s"
                )
            await asyncio.sleep(PORT_POLL_INTERVAL_S)

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Stop the broker: SIGTERM (it saves its state), SIGKILL after `timeout_s`.

        Returns the exit code, or None if it was never started. Safe to call
        again, or after the process died by itself.
        """
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.terminate()
            try:
                async with asyncio.timeout(timeout_s):
                    await wait_for_exit(popen)
            except TimeoutError:
                logger.warning(
                    "mosquitto (pid %d) ignored SIGTERM for %g s; sending SIGKILL",
                    popen.pid,
                    timeout_s,
                )
                popen.kill()
                await wait_for_exit(popen)
        return popen.returncode

    def kill(self) -> None:
        """SIGKILL the broker and reap it: no state saved, like a crash (for tests)."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()

    async def wait_exit(self) -> int:
        """Wait until the current broker process exits; return its exit code."""
        if self._popen is None:
            raise BrokerError("mosquitto was never started")
        return await wait_for_exit(self._popen)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last `lines` lines the current process wrote to its log."""
        return read_log_tail(self.log_path, self._log_offset, lines)

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Write the config, prepare directories and the log, start the process."""
        if self.is_running:
            raise BrokerError(f"mosquitto is already running (pid {self.pid})")
        executable = find_mosquitto(self._executable)

        # Check the port ourselves first: if another broker already listens
        # there (e.g. the system's Mosquitto on 1883), our readiness probe would
        # connect to *that* one and report success before ours failed.
        error = bind_error(self.host, self.port)
        if error is not None:
            raise BrokerStartError(
                describe_bind_error(self.host, self.port, error)
                + "; choose another port, or stop the process that holds it"
            )

        self.broker_dir.mkdir(parents=True, exist_ok=True)
        persistence_dir = self.persistence_dir.absolute()
        run_as = prepare_run_as(persistence_dir)
        if run_as.why_root is not None and run_as.why_root != self._why_root:
            # Once per cause, not at every supervised restart.
            logger.warning("running mosquitto as root: %s", run_as.why_root)
        self._why_root = run_as.why_root
        self.config_path.write_text(
            render_mosquitto_conf(
                host=self.host,
                port=self.port,
                persistence_dir=persistence_dir,
                user=run_as.conf_user,
            ),
            encoding="utf-8",
        )
        # The broker may run unprivileged; the config is not secret.
        self.config_path.chmod(0o644)

        rotate_log(self.log_path)
        with self.log_path.open("ab") as log:
            # Local time, like the broker's own log_timestamp_format lines below it.
            now = dt.datetime.fromtimestamp(clock.now_us() / clock.US_PER_S)
            log.write(
                f"--- {now.isoformat(timespec='seconds')} fieldhub: starting {executable} "
                f"-c {self.config_path} as {run_as.name}\n".encode()
            )
            log.flush()
            self._log_offset = log.tell()
            self._popen = self._popen_broker(executable, log, run_as)
        self._started_at = time.monotonic()
        self.run_as = run_as.name
        logger.info(
            "mosquitto started (pid %d, %s, as %s, log %s)",
            self._popen.pid,
            self.url,
            run_as.name,
            self.log_path,
        )
        return self._popen

    def _popen_broker(
        self, executable: str, log: IO[bytes], run_as: RunAs
    ) -> subprocess.Popen[bytes]:
        """Fork and exec Mosquitto with its own process group and death signal."""
        try:
            return subprocess.Popen(
                [executable, "-c", str(self.config_path.absolute())],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                # Own process group: a terminal's Ctrl-C goes to fieldhub only,
                # which stops the broker last, after ingest has flushed.
                process_group=0,
                # The user switch happens in the child before the hook runs.
                user=run_as.user,
                group=run_as.group,
                extra_groups=run_as.extra_groups,
                preexec_fn=parent_death_hook(),
            )
        except OSError as exc:
            # ENOENT/EACCES on exec: found a moment ago, but not runnable.
            if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC):
                raise BrokerStartError(f"cannot execute {executable}: {exc.strerror}") from exc
            raise

    def _start_error(self, reason: str, returncode: int | None = None) -> BrokerStartError:
        """Build a BrokerStartError quoting what the broker logged this run."""
        return BrokerStartError(
            reason,
            returncode=returncode,
            log_path=self.log_path,
            log_tail=self.log_tail(),
        )
