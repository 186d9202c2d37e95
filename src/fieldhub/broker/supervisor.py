"""Run Mosquitto as a child process of fieldhub, and keep it running.

`MosquittoProcess` is the synchronous building block (pytest fixtures use it
directly); `BrokerSupervisor` wraps one for the asyncio application and restarts
the broker with backoff when it dies.

Process hygiene, in order of how much it matters:

* The broker gets its own process group, so a Ctrl-C in the terminal reaches
  only fieldhub, which then stops the broker *after* ingest has committed and
  acked what it holds.
* On Linux the broker gets PR_SET_PDEATHSIG=SIGTERM, so `kill -9` of fieldhub
  does not leave an orphan Mosquitto holding the port (and it still saves its
  persistence file, since SIGTERM is a clean stop). The kernel clears that
  setting whenever the child changes its user id, and Mosquitto started as root
  changes it itself; so when we run as root we switch to the unprivileged user
  in the child *before* setting the signal and exec'ing Mosquitto.
* Running as root, the persistence directory is handed to that user, or
  Mosquitto would fail to save it (only at shutdown, only in its log).
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import errno
import logging
import os
import pwd
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from fieldhub.broker.config import render_mosquitto_conf
from fieldhub.net import (
    PORT_POLL_INTERVAL_S,
    async_can_connect,
    bind_error,
    can_connect,
    describe_bind_error,
)

logger = logging.getLogger("fieldhub.broker")

# Where Debian/Ubuntu (/usr/sbin) and source builds (/usr/local/sbin) put the
# broker. Neither is on a normal user's PATH, so PATH alone finds nothing.
MOSQUITTO_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")

INSTALL_HINT = (
    "install it: sudo apt-get install mosquitto (Debian/Ubuntu), "
    "or pass --mqtt-url to use an external broker"
)

# How long start() waits for the listener. An empty broker listens ~20 ms after
# exec; with a persistence file it first loads it: measured 0.4 s for 200k
# queued messages, so ~1 s for a full queue (see MAX_QUEUED_MESSAGES). 15 s
# leaves room for an SD card and a slow CPU before we call the start failed.
READY_TIMEOUT_S = 15.0

# SIGTERM grace before SIGKILL. Mosquitto saves its persistence file on SIGTERM
# (measured 0.24 s per 200k queued messages); killing it earlier loses what it
# queued since the last autosave, so be generous: a healthy broker exits in ms.
STOP_TIMEOUT_S = 10.0

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

# How often the exit watcher polls where pidfd is unavailable (non-Linux, kernel
# < 5.3). Detection latency only adds to the restart delay, and a waitpid(WNOHANG)
# four times a second costs nothing.
EXIT_POLL_INTERVAL_S = 0.25

# Lines of the broker log quoted in a BrokerStartError: enough for Mosquitto's
# few startup lines plus the error, short enough to read in a terminal.
LOG_TAIL_LINES = 20

# The log is appended to across restarts; beyond this size it is moved to
# mosquitto.log.1 (one generation kept) when the broker starts. With connection
# messages off the broker logs a few lines per start, so this is years of normal
# use and only bounds a broker stuck in a warning loop.
MAX_LOG_BYTES = 16 * 1024 * 1024

# Who the broker runs as when fieldhub runs as root: the same choice Mosquitto
# makes itself ("mosquitto", else "nobody").
UNPRIVILEGED_USERS = ("mosquitto", "nobody")

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class BrokerError(Exception):
    """Base class of the embedded broker's errors."""

    code = "broker_error"


class MosquittoNotFound(BrokerError):
    """No Mosquitto executable was found; the message says how to get one."""

    code = "mosquitto_not_found"

    def __init__(self, *, searched: tuple[str, ...]) -> None:
        self.searched = searched
        super().__init__(f"mosquitto not found (looked at: {', '.join(searched)}); {INSTALL_HINT}")


class BrokerStartError(BrokerError):
    """Mosquitto could not be started, exited during startup, or never listened."""

    code = "broker_start_failed"

    def __init__(
        self,
        reason: str,
        *,
        returncode: int | None = None,
        log_path: Path | None = None,
        log_tail: str = "",
    ) -> None:
        self.reason = reason
        self.returncode = returncode
        self.log_path = log_path
        self.log_tail = log_tail
        message = f"mosquitto failed to start: {reason}"
        if returncode is not None:
            message += f" (exit code {returncode})"
        if log_tail:
            message += f"\nlast lines of {log_path}:\n{log_tail}"
        super().__init__(message)


def find_mosquitto(explicit: str | None = None) -> str:
    """Return the path of the Mosquitto executable to run.

    `explicit` (a path, or a name looked up on PATH) wins and is the only place
    looked at when given: silently running another binary than the one asked
    for would be worse than failing. Otherwise PATH, then the Debian and
    source-install locations, which are not on a normal user's PATH.
    """
    if explicit is not None:
        found = shutil.which(explicit)
        if found is None:
            raise MosquittoNotFound(searched=(explicit,))
        return found
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    for candidate in MOSQUITTO_FALLBACK_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoNotFound(searched=("PATH", *MOSQUITTO_FALLBACK_PATHS))


def _load_prctl() -> Callable[..., int] | None:
    """Return libc's prctl on Linux, else None (the death signal is Linux-only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Loaded once in the parent: the pre-exec hook runs between fork and exec, where
# loading a library (locks, allocations) is unsafe.
_PRCTL = _load_prctl()


def _parent_death_hook() -> Callable[[], None] | None:
    """Build the pre-exec hook that ties the child's life to this process."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent_pid = os.getpid()

    def set_parent_death_signal() -> None:
        # Runs in the child after fork, after any user switch (which would clear
        # the setting), before exec; the setting survives exec of a normal binary.
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:
            # The parent died between fork and prctl: the signal will never come.
            os.kill(os.getpid(), signal.SIGTERM)

    return set_parent_death_signal


@dataclass(frozen=True)
class _RunAs:
    """Credentials the broker is started with (None: inherit ours)."""

    user: int | None
    group: int | None
    extra_groups: list[int] | None
    conf_user: str | None  # the `user` line of mosquitto.conf, if any
    name: str
    why_root: str | None = None  # set when running as root although we are root


def _can_search(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    """POSIX search (x) permission on a directory for `uid`/`gids` (ACLs ignored)."""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _first_unreachable_ancestor(path: Path, uid: int, gids: set[int]) -> Path | None:
    """Return the first directory above `path` that `uid` cannot enter, if any."""
    for ancestor in reversed(path.parents):
        if not _can_search(ancestor.stat(), uid, gids):
            return ancestor
    return None


def _prepare_run_as(persistence_dir: Path) -> _RunAs:
    """Decide who the broker runs as and make `persistence_dir` writable for it.

    Not root: the broker runs as we do and the directory is already ours.
    Root: the broker runs as `mosquitto` (else `nobody`), the user Mosquitto
    would pick itself. We switch users in the child instead of letting Mosquitto
    do it, because the switch clears the parent-death signal. The persistence
    directory (and what is in it, e.g. a file written by an older run as root)
    is handed to that user. If the user cannot even reach the directory, e.g.
    under a 0700 home directory or pytest's 0700 temp root, the broker runs as
    root instead, with a warning: otherwise it would start fine and then fail
    to save its state at every autosave and at shutdown.
    """
    persistence_dir.mkdir(parents=True, exist_ok=True)
    euid = os.geteuid()
    if euid != 0:
        try:
            name = pwd.getpwuid(euid).pw_name
        except KeyError:  # containers often run with a uid that has no passwd entry
            name = f"uid {euid}"
        return _RunAs(None, None, None, None, name=name)

    for name in UNPRIVILEGED_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        break
    else:
        # An explicit `user root` stops Mosquitto from looking for one itself.
        why = f"none of the users {', '.join(UNPRIVILEGED_USERS)} exists"
        return _RunAs(None, None, None, "root", name="root", why_root=why)

    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    blocked = _first_unreachable_ancestor(persistence_dir, entry.pw_uid, set(groups))
    if blocked is not None:
        why = (
            f"user {entry.pw_name} cannot enter {blocked} "
            f"({stat.filemode(blocked.stat().st_mode)}), so it could not save "
            f"{persistence_dir}; use a data dir it can reach to run unprivileged"
        )
        return _RunAs(None, None, None, "root", name="root", why_root=why)

    for item in (persistence_dir, *persistence_dir.iterdir()):
        os.chown(item, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    # Queued messages are device data: readable by the broker only.
    persistence_dir.chmod(0o700)
    return _RunAs(entry.pw_uid, entry.pw_gid, groups, None, name=entry.pw_name)


def _rotate_log(log_path: Path) -> None:
    """Move an oversized log aside, keeping one previous generation."""
    try:
        size = log_path.stat().st_size
    except FileNotFoundError:
        return
    if size > MAX_LOG_BYTES:
        os.replace(log_path, log_path.with_name(log_path.name + ".1"))


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


class MosquittoProcess:
    """One Mosquitto child process with a generated config (synchronous API).

    Files live under `<data_dir>/mosquitto/`: `mosquitto.conf` (rewritten at
    every start), `mosquitto.log` (the broker's stdout and stderr, appended),
    and `persistence/` (sessions, queued and retained messages).

    The parent-death signal is tied to the *thread* that starts the process:
    call `start()` from a thread that lives as long as the broker should (the
    main thread, a pytest fixture, the event loop thread), not from a
    short-lived worker thread, or the broker gets SIGTERM when that thread ends.
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

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Spawn Mosquitto and block until its port accepts TCP connections.

        Raises MosquittoNotFound, or BrokerStartError (with the last lines of
        the log) if the port cannot be bound, the broker exits during startup,
        or it does not listen within `timeout_s`; no process is left behind.
        """
        popen = self._spawn()
        deadline = time.monotonic() + timeout_s
        while True:
            returncode = popen.poll()
            if returncode is not None:
                raise self._start_error("it exited during startup", returncode)
            if can_connect(self.host, self.port) and popen.poll() is None:
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise self._start_error(
                    f"it did not accept connections on {self.host}:{self.port} "
                    f"within {timeout_s:g} s"
                )
            time.sleep(PORT_POLL_INTERVAL_S)

    async def start_async(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """`start()` for the event loop: waits for the port without blocking it.

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
                await self.stop_async()
                raise self._start_error(
                    f"it did not accept connections on {self.host}:{self.port} "
                    f"within {timeout_s:g} s"
                )
            await asyncio.sleep(PORT_POLL_INTERVAL_S)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
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
                popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "mosquitto (pid %d) ignored SIGTERM for %g s; sending SIGKILL",
                    popen.pid,
                    timeout_s,
                )
                popen.kill()
                popen.wait()
        return popen.returncode

    async def stop_async(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """`stop()` for the event loop."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.terminate()
            try:
                async with asyncio.timeout(timeout_s):
                    await self.wait_exit()
            except TimeoutError:
                logger.warning(
                    "mosquitto (pid %d) ignored SIGTERM for %g s; sending SIGKILL",
                    popen.pid,
                    timeout_s,
                )
                popen.kill()
                await self.wait_exit()
        return popen.returncode

    def kill(self) -> None:
        """SIGKILL the broker and reap it: no state saved, like a crash (for tests)."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()

    async def wait_exit(self) -> int:
        """Wait until the current broker process exits; return its exit code.

        Uses a pidfd on Linux (woken by the kernel, no polling); elsewhere, or
        if the process is already gone, polls every EXIT_POLL_INTERVAL_S.
        """
        popen = self._popen
        if popen is None:
            raise BrokerError("mosquitto was never started")
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

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last `lines` lines the current process wrote to its log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                data = log.read()
        except FileNotFoundError:
            return ""
        text = data.decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

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
        run_as = _prepare_run_as(persistence_dir)
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

        _rotate_log(self.log_path)
        with self.log_path.open("ab") as log:
            now = dt.datetime.now().isoformat(timespec="seconds")
            log.write(
                f"--- {now} fieldhub: starting {executable} -c {self.config_path} "
                f"as {run_as.name}\n".encode()
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
        self, executable: str, log: IO[bytes], run_as: _RunAs
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
                preexec_fn=_parent_death_hook(),
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


class BrokerSupervisor:
    """Keep an embedded Mosquitto running for the lifetime of the application.

    `start()` returns once the broker listens. A background task named
    `broker.supervise` then waits for the process to exit; an exit we did not
    ask for is logged with its exit code and followed by a restart after a
    full-jitter exponential backoff (`restarts` counts them). `stop()` ends
    supervision and stops the broker cleanly. Also an async context manager.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        executable: str | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        restart_backoff_initial_s: float = RESTART_BACKOFF_INITIAL_S,
        restart_backoff_max_s: float = RESTART_BACKOFF_MAX_S,
        restart_backoff_reset_after_s: float = RESTART_BACKOFF_RESET_AFTER_S,
    ) -> None:
        self.process = MosquittoProcess(
            data_dir=data_dir, port=port, host=host, executable=executable
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
        await self.process.start_async(self._ready_timeout_s)
        self._task = asyncio.create_task(self._supervise(), name="broker.supervise")
        self._task.add_done_callback(_log_unexpected_end)

    async def stop(self) -> None:
        """Stop supervising, then stop the broker (SIGTERM, SIGKILL on timeout)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait neither raises the task's CancelledError nor swallows
            # a cancellation of stop() itself, unlike suppress(CancelledError).
            await asyncio.wait([task])
        await self.process.stop_async(self._stop_timeout_s)

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
                    await self.process.start_async(self._ready_timeout_s)
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
