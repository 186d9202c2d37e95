"""A private RabbitMQ node with the MQTT plugin, started by the tests themselves.

Never the machine's own RabbitMQ: the node gets its own name, ports, cookie, config, database
and logs, all under one temporary directory, and is stopped at the end. It only shares epmd (the
Erlang port mapper daemon) with other nodes on the machine: epmd is a name service for all of
them, and a node that finds none running starts one that outlives it, as every Erlang node does.

Why the scripts in /usr/lib/rabbitmq/bin and not /usr/sbin: Debian's /usr/sbin wrappers re-run
everything as user `rabbitmq` (via `su`) when called as root, with HOME=/var/lib/rabbitmq, so the
node would use the system node's Erlang cookie and could not write our temporary directory.
The scripts they wrap run as whoever calls them, with our HOME and so our own cookie.

Start-up measured 9-15 s on our 2-vCPU machines: ~3 s Erlang boot and config translation, ~3 s
of core boot steps, and a fixed 3-6 s random wait on a fresh node's first start, in which the
MQTT plugin looks for cluster peers before electing itself leader of its client-id tracker
(mqtt_node.erl; a restarted node skips it). `RabbitMQNode.startup_s` records it and the session
fixture prints it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fieldhub.broker.parent_death import parent_death_hook
from fieldhub.net import can_connect, free_port

# Where Debian's rabbitmq-server package keeps the real scripts.
SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin",)
SCRIPT_DIR_ENV = "FIELDHUB_TEST_RABBITMQ_BIN"
# What scripts/_env.sh's ensure_rabbitmq installs and checks for.
SERVER_BINARY = "/usr/sbin/rabbitmq-server"
# Boot takes 9-15 s here; 60 s leaves room for a machine busy with other tests without making a
# broken node hang the session for long.
START_TIMEOUT_S = 60.0
# A node shuts down in 1-3 s (it flushes Mnesia and the message store); past this it is killed.
STOP_TIMEOUT_S = 20.0
# Port polling interval while the node boots: its listeners open seconds after exec, so 50 ms
# costs no measurable start time and no CPU the booting node needs.
POLL_INTERVAL_S = 0.05
# rabbitmqctl is an Elixir escript that takes ~1 s just to start.
CTL_TIMEOUT_S = 30.0
# free_port() cannot reserve ports: another process may take one before the node binds it.
START_ATTEMPTS = 3
LOG_TAIL_LINES = 40
# RabbitMQ logs this (3.8 to 3.13) when every boot step and plugin has started.
BOOT_COMPLETE_MARKER = b"Server startup complete"


class RabbitMQUnavailable(RuntimeError):
    """The RabbitMQ server scripts are not installed."""


class RabbitMQStartError(RuntimeError):
    """The node did not come up; the message carries the log tail."""

    def __init__(self, message: str, *, port_taken: bool = False) -> None:
        super().__init__(message)
        # Another process bound one of our ports between free_port() and the node's bind.
        self.port_taken = port_taken


def find_rabbitmq_scripts() -> Path:
    """The directory holding `rabbitmq-server` and `rabbitmqctl` that run as the caller.

    FIELDHUB_TEST_RABBITMQ_BIN names it explicitly (another install, or a missing one to see
    the tests skip outside CI and fail in it).
    """
    explicit = os.environ.get(SCRIPT_DIR_ENV)
    if explicit is not None:
        directory = Path(explicit)
        if (directory / "rabbitmq-server").is_file() and (directory / "rabbitmqctl").is_file():
            return directory
        raise RabbitMQUnavailable(f"{SCRIPT_DIR_ENV}={explicit} holds no rabbitmq-server")
    for candidate in SCRIPT_DIRS:
        directory = Path(candidate)
        if (directory / "rabbitmq-server").is_file() and (directory / "rabbitmqctl").is_file():
            return directory
    on_path = shutil.which("rabbitmq-server")
    if on_path is not None and Path(on_path).resolve() != Path(SERVER_BINARY).resolve():
        return Path(on_path).parent  # a non-Debian install: its scripts are the real ones
    raise RabbitMQUnavailable(
        f"RabbitMQ is not installed (looked for {', '.join(SCRIPT_DIRS)} and rabbitmq-server "
        "on PATH); scripts/test installs Debian's rabbitmq-server"
    )


def render_rabbitmq_conf(*, amqp_port: int, mqtt_port: int) -> str:
    """rabbitmq.conf (new-style, sysctl format) for a loopback-only node with MQTT."""
    return "\n".join(
        [
            "# Written by tests/support/rabbitmq.py; every listener on loopback only.",
            f"listeners.tcp.default = 127.0.0.1:{amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{mqtt_port}",
            # Devices connect without credentials, like the FastAPI stack's firmware: the plugin
            # then logs them in as its default user (guest). guest may only log in from
            # loopback, which every connection here is, so loopback_users stays as it is.
            "mqtt.allow_anonymous = true",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            # The plugin's default prefetch is 10: at most 10 unacknowledged QoS 1 messages in
            # flight to a subscriber. fieldhub acknowledges after its batch commits, so 10
            # would cap every batch at 10 messages (the same trap as Mosquitto's
            # max_inflight_messages, default 20). docs/brokers.md recommends this value.
            "mqtt.prefetch = 10000",
            # Queues of persistent sessions (clean_session=false) are deleted after 24 h unused
            # by default: fieldhub down for a weekend would lose what its devices sent. A week
            # matches the session expiry fieldhub asks MQTT 5 brokers for (SESSION_EXPIRY_S).
            "mqtt.subscription_ttl = 604800000",
            # Logs go to the log directory only; stdout stays for boot errors.
            "log.console = false",
            "log.file.level = info",
            "",
        ]
    )


@dataclass(frozen=True, slots=True)
class _Ports:
    amqp: int
    dist: int
    mqtt: int


class RabbitMQNode:
    """One private RabbitMQ node with the MQTT plugin on a free loopback port."""

    def __init__(self, *, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.scripts = find_rabbitmq_scripts()
        self.nodename = f"fieldhub-test-{secrets.token_hex(4)}@localhost"
        self.ports = _Ports(0, 0, 0)
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self._log_offset = 0

    # -- paths and addresses -------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """HOME of the node and its CLI: holds the private Erlang cookie both must share."""
        return self.base_dir / "home"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "log"

    @property
    def console_log(self) -> Path:
        """stdout/stderr of the node: boot errors before its own log file opens."""
        return self.base_dir / "console.log"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.nodename}.log"

    @property
    def mqtt_port(self) -> int:
        return self.ports.mqtt

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.ports.mqtt}"

    def env(self) -> dict[str, str]:
        """The environment of the node and of every rabbitmqctl call against it."""
        base = self.base_dir
        return {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.ports.amqp),
            "RABBITMQ_DIST_PORT": str(self.ports.dist),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            # An empty env file: Debian's /etc/rabbitmq/rabbitmq-env.conf names the system node
            # (NODENAME=rabbit@localhost) and would otherwise be read by our node and CLI.
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            # Erlang distribution on loopback only, as the system node does it.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> RabbitMQNode:
        """Boot the node (retrying on a port taken meanwhile); raises RabbitMQStartError."""
        started = time.monotonic()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once()
            except RabbitMQStartError as exc:
                if attempt == START_ATTEMPTS or not exc.port_taken:
                    raise  # a bad config or install fails the same way every time
                continue
            self.startup_s = time.monotonic() - started
            return self
        raise AssertionError("unreachable")  # the loop returns or raises

    def _prepare(self) -> None:
        for path in (self.base_dir / "mnesia", self.log_dir):
            shutil.rmtree(path, ignore_errors=True)  # a failed attempt's half-made database
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            # Written before the node starts so the node and the CLI read the same file; Erlang
            # refuses a cookie file others can read.
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        self.ports = _Ports(amqp=free_port(), dist=free_port(), mqtt=free_port())
        (self.base_dir / "rabbitmq.conf").write_text(
            render_rabbitmq_conf(amqp_port=self.ports.amqp, mqtt_port=self.ports.mqtt)
        )
        (self.base_dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.base_dir / "advanced.config").write_text("[].\n")
        (self.base_dir / "rabbitmq-env.conf").write_text("")

    def _start_once(self) -> None:
        self._prepare()
        console = self.console_log.open("ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.scripts / "rabbitmq-server")],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.base_dir,
                # The script runs the node (beam.smp) as its child and forwards SIGTERM/SIGINT
                # to it, but a SIGKILL of the script would orphan the node: so the node gets a
                # process group of its own, and _kill signals the whole group. The death signal
                # reaches the script when the test run dies; its trap then stops the node.
                start_new_session=True,
                preexec_fn=parent_death_hook(),
            )
        finally:
            console.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        # The node's own log says when the boot (plugins included) is complete; an open port
        # alone could belong to another process that took it after free_port().
        self._log_offset = 0
        while not self._boot_logged():
            if self.proc.poll() is not None:
                raise self._start_error(f"exited with {self.proc.returncode} during boot")
            if time.monotonic() > deadline:
                self._kill()
                raise self._start_error(
                    f"did not open its MQTT port {self.ports.mqtt} within {START_TIMEOUT_S} s"
                )
            time.sleep(POLL_INTERVAL_S)
        if not can_connect("127.0.0.1", self.ports.mqtt):
            self._kill()
            raise self._start_error(f"booted but its MQTT port {self.ports.mqtt} is closed")
        # The CLI must reach the node too (tests call rabbitmqctl): fails here, not at some
        # later call, if the cookie in our HOME is not the node's.
        result = self.ctl("await_startup", "--timeout", str(int(START_TIMEOUT_S)))
        if result.returncode != 0:
            self._kill()
            raise self._start_error(
                f"is not reachable by rabbitmqctl (rc {result.returncode}): "
                f"{result.stdout.strip()} {result.stderr.strip()}"
            )

    def _boot_logged(self) -> bool:
        """True once the node's log has the line RabbitMQ writes at the end of its boot."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(self._log_offset)
                new = log.read()
        except FileNotFoundError:
            return False
        # Keep the last line's start: the marker may be cut in two by this read.
        cut = new.rfind(b"\n") + 1
        if BOOT_COMPLETE_MARKER in new:
            return True
        self._log_offset += cut
        return False

    def _start_error(self, what: str) -> RabbitMQStartError:
        tail = self.log_tail()
        return RabbitMQStartError(
            f"RabbitMQ node {self.nodename} {what}\n{tail}",
            # A listener the node could not bind: the one case a retry on new ports fixes.
            port_taken="eaddrinuse" in tail,
        )

    def ctl(self, *args: str, timeout_s: float = CTL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run `rabbitmqctl -n <node> <args>` against this node with its cookie."""
        return subprocess.run(
            [str(self.scripts / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def stop(self) -> int | None:
        """Stop the node: SIGTERM (Erlang shuts down cleanly), then SIGKILL after a timeout.

        A signal to the process group we started rather than `rabbitmqctl stop`: the CLI costs
        a second of Elixir start-up and can only ask, while the signal also works on a node whose
        distribution is broken.
        """
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)  # the script exits once the node has
            except subprocess.TimeoutExpired:
                self._kill()
        return proc.returncode

    def _kill(self) -> None:
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        # The group id is the script's pid (start_new_session); it outlives the script while
        # the node still runs, so an orphaned node is still reached.
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass  # the script and the node are both gone already

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the node's console output and log file, for error messages."""
        parts = []
        for path in (self.console_log, self.log_file):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no RabbitMQ log was written)"


def in_ci() -> bool:
    """True on a CI runner (CI=true, as GitHub Actions, GitLab and most others set it)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@contextmanager
def running_rabbitmq(base_dir: Path) -> Iterator[RabbitMQNode]:
    """A started private node, stopped on exit. Raises RabbitMQUnavailable when RabbitMQ is not
    installed and RabbitMQStartError (with the log tail) when it does not come up."""
    node = RabbitMQNode(base_dir=base_dir)
    node.start()
    try:
        yield node
    finally:
        node.stop()
