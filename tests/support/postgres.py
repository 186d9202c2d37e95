"""A private PostgreSQL cluster, created and started by the tests themselves.

Never the machine's own server (Debian runs one on 5432): `initdb` makes a new cluster in a
temporary directory, `pg_ctl` starts it on a free loopback port with its unix socket inside its
data directory, and at the end it is stopped and the directory removed. Tests get a fresh
database each from `new_database()`, so they never see each other's rows or a previous run's.

initdb and postgres refuse to run as root. Run as root (CI is), the cluster belongs to the
`postgres` system user that Debian's package creates: its directory is made under /tmp (not
pytest's /tmp/pytest-of-root, which is 0700 and so closed to that user), handed to `postgres`,
and initdb/pg_ctl run through `runuser -u postgres --`. Clients (psql, asyncpg) connect over
TCP with trust authentication, so they may run as anyone.

`pg_ctl start` detaches the server, so a test run killed with SIGKILL leaves it running (and its
/tmp/fieldhub-pg-* directory behind); `pg_ctl -D <dir>/data stop -m immediate` ends it. Every
normal end of the session, failures and Ctrl-C included, stops it through the fixture.

`PostgresServer.initdb_s` and `startup_s` record the two phases; the session fixture prints them.

A fault test that restarts the server (`stopped()`: down for a block, then started on the same
port and data) makes a cluster of its own with `durable=True`, never the session's: the other tests'
connections would break, and the session's cluster commits without waiting for its WAL, so an
immediate stop could lose transactions it had already reported committed.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fieldhub.net import free_port

# Names another bin directory (another install, or a missing one to see the tests skip outside CI
# and fail in it).
BIN_DIR_ENV = "FIELDHUB_TEST_POSTGRES_BIN"
# Debian's layout, one directory per major version; scripts/_env.sh's ensure_postgres installs it.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
INSTALL_HINT = "apt-get install -y postgresql (scripts/test runs it: ensure_postgres)"
# The system user that owns the cluster when the tests run as root.
ROOT_RUNS_AS = "postgres"
# initdb of a fresh cluster takes ~1 s and a start well under 1 s here; 60 s leaves room for a
# machine busy with other tests without letting a broken install hang the session for long.
INITDB_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
PSQL_TIMEOUT_S = 30.0
# free_port() cannot reserve the port: another process may take it before postgres binds it.
START_ATTEMPTS = 3
LOG_TAIL_LINES = 40
# What postgres logs when its port is taken: the one start failure a new port fixes.
PORT_TAKEN_MARKER = "Address already in use"
# Names new_database() accepts: plain identifiers, so they need no quoting in a URL or in SQL.
DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# The file postgresql.conf includes, rewritten before each start attempt (the port may change).
TEST_CONF = "fieldhub_test.conf"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


class PostgresStartError(RuntimeError):
    """The cluster could not be created or did not start; the message carries the log tail."""

    def __init__(self, message: str, *, port_taken: bool = False) -> None:
        super().__init__(message)
        self.port_taken = port_taken


def _has_binaries(directory: Path) -> bool:
    return all((directory / name).is_file() for name in REQUIRED_BINARIES)


def _major_version(directory: Path) -> int:
    """18 for /usr/lib/postgresql/18/bin; 0 when the parent is not a number."""
    try:
        return int(directory.parent.name)
    except ValueError:
        return 0


def find_postgres_bin() -> Path:
    """The directory holding initdb, pg_ctl, postgres and psql of one PostgreSQL install.

    In order: $FIELDHUB_TEST_POSTGRES_BIN; `pg_config --bindir` (checked: Debian's
    /usr/bin/pg_config comes with libpq-dev and names a bin directory that may not be
    installed); the newest /usr/lib/postgresql/*/bin; the directory of `initdb` on PATH
    (Debian has none there; Fedora and Homebrew do).
    """
    explicit = os.environ.get(BIN_DIR_ENV)
    if explicit is not None:
        if _has_binaries(Path(explicit)):
            return Path(explicit)
        raise PostgresUnavailable(
            f"{BIN_DIR_ENV}={explicit} lacks one of {', '.join(REQUIRED_BINARIES)}"
        )
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            result = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            result = None
        if result is not None and result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    candidates.extend(
        sorted((Path(p) for p in glob.glob(DEBIAN_BIN_GLOB)), key=_major_version, reverse=True)
    )
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if _has_binaries(directory):
            return directory
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (looked at pg_config --bindir, "
        f"{DEBIAN_BIN_GLOB} and initdb on PATH); install them: {INSTALL_HINT}"
    )


def _clean_env() -> dict[str, str]:
    """os.environ without PG* variables: PGDATA, PGPORT, PGHOST... would redirect pg_ctl and
    psql to another cluster, and PGOPTIONS would change our sessions."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


class PostgresServer:
    """One private PostgreSQL cluster on a free loopback port.

    `start()` runs initdb and pg_ctl start; `stop()` stops it and removes its directory. `url`
    is the superuser's URL of the `postgres` database; `new_database()` makes a fresh one.
    """

    def __init__(self, *, durable: bool = False) -> None:
        # durable: a commit waits for its WAL to be written (synchronous_commit on), so a
        # committed transaction survives an immediate stop (a crash of the server, not of the
        # machine: fsync stays off). The default trades that for speed.
        self.durable = durable
        self.bin_dir = find_postgres_bin()
        self.as_root = os.geteuid() == 0
        self.owner: pwd.struct_passwd | None = None
        if self.as_root:
            try:
                self.owner = pwd.getpwnam(ROOT_RUNS_AS)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, but there is no `{ROOT_RUNS_AS}` user to own the test "
                    f"cluster (initdb refuses root); Debian's package creates it: {INSTALL_HINT}"
                ) from None
        self.base_dir: Path | None = None
        self.port = 0
        self.running = False
        self.initdb_s: float | None = None
        self.startup_s: float | None = None

    # -- paths and addresses -------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "start() the server first"
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None, "start() the server first"
        return self.base_dir / "postgres.log"

    @property
    def url(self) -> str:
        """postgresql://postgres@127.0.0.1:PORT/postgres (trust authentication: no password)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """initdb a new cluster and start it (retrying on a port taken meanwhile).

        Raises PostgresStartError with the log tail; the directory is removed then too.
        """
        try:
            started = time.monotonic()
            self._make_base_dir()
            self._initdb()
            self.initdb_s = time.monotonic() - started
            started = time.monotonic()
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    self._start_once()
                except PostgresStartError as exc:
                    if attempt == START_ATTEMPTS or not exc.port_taken:
                        raise
                    continue
                break
            self.startup_s = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def _make_base_dir(self) -> None:
        if self.owner is not None:
            # /tmp: reachable by the `postgres` user. mkdtemp makes it 0700, so handing it to
            # that user keeps it private to the cluster (and root).
            self.base_dir = Path(tempfile.mkdtemp(prefix="fieldhub-pg-", dir="/tmp"))
            os.chown(self.base_dir, self.owner.pw_uid, self.owner.pw_gid)
        else:
            self.base_dir = Path(tempfile.mkdtemp(prefix="fieldhub-pg-"))

    def _command(self, binary: str, *args: str) -> list[str]:
        """A command line running one of the server binaries as the cluster's owner."""
        command = [str(self.bin_dir / binary), *args]
        if self.owner is not None:
            return ["runuser", "-u", self.owner.pw_name, "--", *command]
        return command

    def _run(self, command: list[str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=_clean_env(),
            # The owner may not be allowed into the caller's working directory.
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
        )

    def _initdb(self) -> None:
        result = self._run(
            self._command(
                "initdb",
                "--pgdata",
                str(self.data_dir),
                "--username=postgres",
                # Trust: every connection is let in as whoever it claims to be. The cluster
                # listens on loopback only and holds nothing but disposable test data.
                "--auth=trust",
                # Fixed, not inherited from the caller's environment: the same cluster on every
                # machine. C sorts bytewise and case-maps ASCII only, as SQLite does.
                "--encoding=UTF8",
                "--locale=C",
                # No fsync of the new files: a crash mid-run loses only test data.
                "--no-sync",
            ),
            timeout_s=INITDB_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise PostgresStartError(
                f"initdb failed (rc {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# Added by tests/support/postgres.py\ninclude '{TEST_CONF}'\n")

    def _write_test_conf(self) -> None:
        path = self.data_dir / TEST_CONF
        path.write_text(
            "\n".join(
                [
                    "# Written by tests/support/postgres.py before each start.",
                    f"port = {self.port}",
                    "listen_addresses = '127.0.0.1'",
                    f"unix_socket_directories = '{self.data_dir}'",
                    # Speed over durability: test data is disposable, so nothing needs to
                    # survive a crash of the machine (or of this server: each run makes a new
                    # cluster). Commits then skip the disk flushes that dominate their cost.
                    "fsync = off",
                    *([] if self.durable else ["synchronous_commit = off"]),
                    "full_page_writes = off",
                    "",
                ]
            )
        )
        if self.owner is not None:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)

    def _start_once(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._write_test_conf()
        result = self._run(
            self._command(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_file),
                "--wait",
                "--timeout",
                str(START_TIMEOUT_S),
            ),
            # pg_ctl gives up after its own --timeout; this bound is for a pg_ctl that hangs.
            timeout_s=START_TIMEOUT_S + 30,
        )
        if result.returncode == 0:
            self.running = True
            return
        # pg_ctl may have left a server that came up too slowly: stop it before a retry.
        self._pg_ctl_stop("immediate")
        tail = self.log_tail()
        raise PostgresStartError(
            f"pg_ctl start failed on port {self.port} (rc {result.returncode}): "
            f"{result.stdout.strip()} {result.stderr.strip()}\n{tail}",
            port_taken=PORT_TAKEN_MARKER in tail,
        )

    def _pg_ctl_stop(self, mode: str) -> bool:
        result = self._run(
            self._command(
                "pg_ctl",
                "stop",
                "--pgdata",
                str(self.data_dir),
                "--mode",
                mode,
                "--wait",
                "--timeout",
                str(STOP_TIMEOUT_S),
            ),
            timeout_s=STOP_TIMEOUT_S + 30,
        )
        return result.returncode == 0

    @contextmanager
    def stopped(self, *, mode: str = "immediate") -> Iterator[None]:
        """The server is down within the block (`immediate`: as if it crashed; `fast`: it ends
        its sessions and checkpoints) and started again after it, on the same port and data.

        A fault test's own cluster only (`durable=True`, see the module's docstring). Raises
        PostgresStartError when it does not come back (its port taken meanwhile, say).
        """
        assert self.running, "start() the server first"
        if not self._pg_ctl_stop(mode):
            raise PostgresStartError(f"pg_ctl stop -m {mode} failed\n{self.log_tail()}")
        self.running = False
        try:
            yield
        finally:
            self._start_once(self.port)

    def stop(self) -> None:
        """Stop the server and remove the cluster's directory.

        Immediate mode: the directory goes right after, so the shutdown checkpoint that "fast"
        mode writes first (every database the run created) would be work thrown away.
        """
        if self.base_dir is None:
            return
        if self.running:
            self._pg_ctl_stop("immediate")
        self.running = False
        # A full suite leaves hundreds of databases (GBs in ~100k files): removing them took
        # ~85 s at the end of every run. Nobody waits for it: a detached `rm -rf` finishes it.
        subprocess.Popen(
            ["rm", "-rf", str(self.base_dir)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base_dir = None

    # -- databases -----------------------------------------------------------------------------

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run `sql` with psql as the superuser; returns its unaligned output, raises on error."""
        assert self.running, "start() the server first"
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "--no-psqlrc",
                "--quiet",
                "--no-align",
                "--tuples-only",
                "--set=ON_ERROR_STOP=1",
                f"--dbname={self.database_url(database)}",
                f"--command={sql}",
            ],
            capture_output=True,
            text=True,
            timeout=PSQL_TIMEOUT_S,
            check=False,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed (rc {result.returncode}) on {sql!r}: {result.stderr}")
        return result.stdout

    def new_database(self, name: str | None = None) -> str:
        """Create an empty database (default name: a random `test_...`) and return its URL."""
        if name is None:
            name = f"test_{secrets.token_hex(6)}"
        if DATABASE_NAME.fullmatch(name) is None:
            raise ValueError(f"database name {name!r} is not a plain lower-case identifier")
        self.psql(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log, for error messages."""
        if self.base_dir is None:
            return "(the cluster's directory is gone)"
        try:
            text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no PostgreSQL log was written)"
        return f"--- {self.log_file} ---\n" + "\n".join(text)


@contextmanager
def running_postgres(*, durable: bool = False) -> Iterator[PostgresServer]:
    """A started private cluster, stopped and removed on exit. Raises PostgresUnavailable when
    the binaries are missing and PostgresStartError (with the log tail) when it does not start."""
    server = PostgresServer(durable=durable).start()
    try:
        yield server
    finally:
        server.stop()
