"""Spawn one Mosquitto child process, wait until it listens, and stop it.

Process hygiene, in order of how much it matters:

* The broker gets its own process group, so a Ctrl-C in the terminal reaches
  only fieldhub, which then stops the broker *after* ingest has committed and
  acked what it holds.
* On Linux the broker gets SIGTERM when fieldhub dies (`parent_death`), so
  `kill -9` of fieldhub does not leave an orphan holding the port.
* Running as root, the broker runs as an unprivileged user that owns its
  persistence directory (`privileges`).
* With access control on, the password and ACL files (`access`) are written
  0600 for the user the broker runs as, and `reload()` rewrites them and waits
  until the broker has applied them.

Keeping it running (restart on crash) is `fieldhub.broker.supervisor`'s job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from fieldhub import clock
from fieldhub.broker.access import (
    BrokerAccess,
    render_acl_file,
    render_legacy_acl_file,
    render_legacy_password_file,
    render_password_file,
)
from fieldhub.broker.child_exit import wait_for_exit
from fieldhub.broker.config import (
    LegacyListener,
    SecurityFiles,
    TlsListener,
    render_mosquitto_conf,
)
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

# How long reload() waits for the broker to apply new access files. Mosquitto reloads on its
# single thread between two network events; measured well under 100 ms for a few hundred
# users (one PBKDF2 per connected client, 0.12 ms each, to re-check its password).
RELOAD_TIMEOUT_S = 10.0

# Mosquitto 2.0.11 logs this at `information` level on SIGHUP, then re-reads its files,
# re-checks every connected client and re-applies the ACLs in the same step of its single-
# threaded loop (src/loop.c): a CONNACK read after the line was written proves it finished.
RELOAD_LOG_LINE = b"Reloading config."

# The MQTT 3.1.1 CONNECT reload() sends to see its CONNACK: empty client id, clean session,
# no credentials (refused with CONNACK 5 on a secured listener, which is answer enough).
_PROBE_CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"


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
        access: BrokerAccess | None = None,
        tls: TlsListener | None = None,
        legacy: LegacyListener | None = None,
    ) -> None:
        if access is None and (tls is not None or legacy is not None):
            raise ValueError("TLS and legacy listeners need access control (access=...)")
        self.data_dir = data_dir
        self.port = port
        self.host = host
        self.tls = tls
        self.legacy = legacy
        self._access = access
        self._run_as: RunAs | None = None
        self._reload_lock = asyncio.Lock()
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
    def access_dir(self) -> Path:
        """The password and ACL files (and TLS copies): 0700, the broker's user only."""
        return self.broker_dir / "access"

    @property
    def security_files(self) -> SecurityFiles:
        """Where the rendered access files are written."""
        access_dir = self.access_dir.absolute()
        return SecurityFiles(
            password_file=access_dir / "passwd",
            acl_file=access_dir / "acl",
            legacy_password_file=access_dir / "legacy-passwd",
            legacy_acl_file=access_dir / "legacy-acl",
        )

    @property
    def access(self) -> BrokerAccess | None:
        """The access the broker applies (None: demo mode, anonymous)."""
        return self._access

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

    async def reload(self, access: BrokerAccess, timeout_s: float = RELOAD_TIMEOUT_S) -> None:
        """Apply `access`: rewrite the files atomically, SIGHUP, return once it is in force.

        Clients whose password no longer checks (a revoked device) are disconnected by the
        broker during the reload, and new connections see the new files. Not running: the
        files are written at the next start. Reloads are serialised: Mosquitto clears its
        reload flag after reloading, so a SIGHUP during a reload could be lost. Raises
        ValueError for unsafe input (nothing written), BrokerError if the broker exits or does
        not confirm within `timeout_s`.
        """
        if self._access is None:
            raise BrokerError("this broker runs without access control; it has nothing to reload")
        texts = _render_access(access)
        async with self._reload_lock:
            self._access = access
            popen = self._popen
            if popen is None or popen.poll() is not None or self._run_as is None:
                return
            self._write_access_files(texts, self._run_as)
            offset = self.log_path.stat().st_size
            popen.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + timeout_s
            while not self._logged_since(offset, RELOAD_LOG_LINE):
                if popen.poll() is not None:
                    raise BrokerError(
                        f"mosquitto exited with code {popen.returncode} while reloading; "
                        f"its log ends with:\n{self.log_tail(lines=5)}"
                    )
                if time.monotonic() >= deadline:
                    raise BrokerError(f"mosquitto did not reload within {timeout_s:g} s")
                await asyncio.sleep(PORT_POLL_INTERVAL_S)
            await self._round_trip(max(deadline - time.monotonic(), PORT_POLL_INTERVAL_S))

    def _logged_since(self, offset: int, needle: bytes) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return needle in log.read()

    async def _round_trip(self, timeout_s: float) -> None:
        """One CONNECT/CONNACK: the broker's loop has passed the step that logged the reload."""
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(_PROBE_CONNECT)
                    await writer.drain()
                    answer = await reader.readexactly(4)
                finally:
                    writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise BrokerError(f"mosquitto did not answer after reloading: {exc!r}") from exc
        if answer[0] != 0x20:
            raise BrokerError(f"mosquitto answered {answer!r} instead of a CONNACK")

    def _write_access_files(self, texts: dict[str, str], run_as: RunAs) -> None:
        """Write the files Mosquitto reads: 0600, owned by its user, each replaced atomically."""
        access_dir = self.access_dir
        access_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        access_dir.chmod(0o700)
        if run_as.user is not None:
            os.chown(access_dir, run_as.user, run_as.group if run_as.group is not None else -1)
        files = self.security_files
        contents: dict[Path, bytes] = {
            files.password_file: texts["password_file"].encode(),
            files.acl_file: texts["acl_file"].encode(),
            files.legacy_password_file: texts["legacy_password_file"].encode(),
            files.legacy_acl_file: texts["legacy_acl_file"].encode(),
        }
        if self.tls is not None:
            # Copies the broker's user can read: the operator's key may be readable by root
            # or fieldhub only, and the broker reads it after dropping privileges.
            tls_copy = self._tls_copy(self.tls)
            contents[tls_copy.certfile] = self.tls.certfile.read_bytes()
            contents[tls_copy.keyfile] = self.tls.keyfile.read_bytes()
        for path, data in contents.items():
            _write_private(path, data, run_as)

    def _tls_copy(self, tls: TlsListener) -> TlsListener:
        access_dir = self.access_dir.absolute()
        return TlsListener(
            port=tls.port, certfile=access_dir / "tls-cert.pem", keyfile=access_dir / "tls-key.pem"
        )

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
        self._run_as = run_as
        security = None
        if self._access is not None:
            self._write_access_files(_render_access(self._access), run_as)
            security = self.security_files
        self.config_path.write_text(
            render_mosquitto_conf(
                host=self.host,
                port=self.port,
                persistence_dir=persistence_dir,
                user=run_as.conf_user,
                security=security,
                tls=None if self.tls is None else self._tls_copy(self.tls),
                legacy=self.legacy,
            ),
            encoding="utf-8",
        )
        # Private like every file in the data dir (it names the password and ACL files), and
        # the broker's own when it runs as another user than fieldhub (fieldhub kept root): it
        # reads the file after that switch.
        if run_as.user is not None:
            os.chown(self.config_path, run_as.user, -1 if run_as.group is None else run_as.group)
        self.config_path.chmod(0o600)

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


def _render_access(access: BrokerAccess) -> dict[str, str]:
    """Every access file's text; raises ValueError before anything is written."""
    return {
        "password_file": render_password_file(access),
        "acl_file": render_acl_file(access),
        "legacy_password_file": render_legacy_password_file(access),
        "legacy_acl_file": render_legacy_acl_file(access),
    }


def _write_private(path: Path, data: bytes, run_as: RunAs) -> None:
    """Replace `path` with `data` atomically: 0600, owned by the broker's user, synced."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        # An older tmp file left by a crash keeps its mode and owner: set both again.
        os.fchmod(fd, 0o600)
        if run_as.user is not None:
            os.fchown(fd, run_as.user, run_as.group if run_as.group is not None else -1)
        file.write(data)
        file.flush()
        os.fsync(fd)
    # Mosquitto opens the file by name at each reload: it sees the old or the new one, whole.
    os.replace(tmp, path)
