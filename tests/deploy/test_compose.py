"""deploy/ without a Docker engine (there is none in CI or on the development machine).

What can be checked for real is: every `fieldhub` command line in compose.yaml against the real
CLI (each flag in `fieldhub <command> --help`, and the arguments through its own parser), the
URLs and ports between the services, mosquitto.conf against the embedded broker's configuration
and run by the real Mosquitto, and the Dockerfile's build stage building the wheel from what it
copies. What is not checked: images, networking, volumes and healthchecks inside Docker.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
import typer.main
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fieldhub.broker import MosquittoNotFound, find_mosquitto
from fieldhub.broker.config import (
    AUTOSAVE_INTERVAL_S,
    MAX_INFLIGHT_MESSAGES,
    MAX_KEEPALIVE_S,
    MAX_QUEUED_BYTES,
    MAX_QUEUED_MESSAGES,
    render_mosquitto_conf,
)
from fieldhub.cli import app
from fieldhub.config import Settings
from fieldhub.net import can_connect, free_port
from support.rabbitmq import in_ci

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
MOSQUITTO_CONF = DEPLOY / "mosquitto.conf"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
ENV_EXAMPLE = DEPLOY / "env.example"
GUIDE = DEPLOY / "README.md"

# Variables compose.yaml requires (`${NAME:?...}`), with the values the checks use; every other
# variable takes the file's default, as `docker compose up` without a .env would.
REQUIRED_ENV = {"DEPLOY_DB_PASSWORD": "not-a-real-password"}
# The `fieldhub` the venv runs: the same executable the ingest supervisor starts its workers with.
FIELDHUB = Path(sys.executable).with_name("fieldhub")
# The services deploy/README.md describes.
SERVICES = {"broker", "db", "ingest", "api", "migrate"}
LONG_RUNNING = ("broker", "db", "ingest", "api")
# Where the eclipse-mosquitto image reads its configuration.
MOSQUITTO_CONF_TARGET = "/mosquitto/config/mosquitto.conf"
# The options render_mosquitto_conf fills from its arguments (where the broker listens, saves, runs
# as): the only ones in which the embedded broker and the container may differ.
PLACE_OPTIONS = {"listener", "persistence_location", "user"}
BROKER_START_S = 10.0
# Mosquitto's own warning when it keeps root (see deployed_broker); the image drops to mosquitto.
ROOT_WARNING = "Mosquitto should not be run as root"


# -- compose interpolation ----------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))"
)


class MissingVariable(Exception):
    """A `${NAME:?message}` whose variable is not set."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`,
    `${NAME-default}`, `${NAME:?error}`, `${NAME?error}`."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        value = env.get(name)
        op = match["op"] or ""
        is_set = bool(value) if op.startswith(":") else value is not None
        if op.endswith("-"):
            return value if is_set and value is not None else match["arg"]
        if op.endswith("?"):
            if not is_set or value is None:
                raise MissingVariable(f"{name}: {match['arg']}")
            return value
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def load_compose(env: Mapping[str, str] = REQUIRED_ENV) -> dict[str, Any]:
    """compose.yaml parsed (merge keys applied) and interpolated with `env`."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    compose: dict[str, Any] = _interpolate_tree(raw, env)
    return compose


COMPOSE = load_compose()
SERVICE_DEFS: dict[str, dict[str, Any]] = COMPOSE["services"]


# -- the Dockerfile -----------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), one list per stage, with
    comments dropped and continuation lines joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        instruction, _, arguments = logical.partition(" ")
        logical = ""
        if instruction.upper() == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def entrypoint_of(service: dict[str, Any]) -> list[str]:
    """The entrypoint a service runs with: its own, else the Dockerfile's it is built from."""
    if "entrypoint" in service:
        entrypoint = service["entrypoint"]
        return shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
    build = service.get("build")
    if build is None:
        return []  # an upstream image: its entrypoint is not ours to check
    dockerfile = (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve()
    assert dockerfile == DOCKERFILE, f"built from {dockerfile}, expected {DOCKERFILE}"
    final = dockerfile_stages()[-1]
    (entrypoint,) = [args for instruction, args in final if instruction == "ENTRYPOINT"]
    parsed = yaml.safe_load(entrypoint)  # exec form is a JSON array
    assert isinstance(parsed, list), f"ENTRYPOINT in exec form, got {entrypoint}"
    return parsed


def argv_of(service: dict[str, Any]) -> list[str]:
    """The full command line a service's container runs (entrypoint + command)."""
    command = service.get("command", [])
    command = shlex.split(command) if isinstance(command, str) else list(command)
    return [*entrypoint_of(service), *command]


def fieldhub_commands() -> dict[str, list[str]]:
    """Service -> arguments after `fieldhub`, for every service that runs fieldhub."""
    found = {}
    for name, service in SERVICE_DEFS.items():
        argv = argv_of(service)
        if argv and Path(argv[0]).name == "fieldhub":
            found[name] = argv[1:]
    return found


FIELDHUB_COMMANDS = fieldhub_commands()


def flags_in(args: list[str]) -> list[str]:
    """The options in an argument list (`--name` or `-n`; `--name=value` gives `--name`)."""
    return [arg.split("=", 1)[0] for arg in args if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", arg)]


def option_value(args: list[str], flag: str) -> str:
    values = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]
    assert len(values) == 1, f"{flag} given {len(values)} times in {args}"
    return values[0]


@functools.cache
def help_text(command: str) -> str:
    """`fieldhub <command> --help`, wide and without colours so no option name is cut."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run(
        [str(FIELDHUB), command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"fieldhub {command} --help failed:\n{done.stdout}{done.stderr}"
    return done.stdout


# -- compose.yaml: shape ------------------------------------------------------------------------


def test_the_services_of_the_scale_out_shape() -> None:
    assert set(SERVICE_DEFS) == SERVICES
    assert SERVICE_DEFS["broker"]["image"].startswith("eclipse-mosquitto:2")
    assert SERVICE_DEFS["db"]["image"].startswith("postgres:16")
    # ingest, api and migrate run the image built from deploy/Dockerfile, as `fieldhub ...`.
    assert set(FIELDHUB_COMMANDS) == {"ingest", "api", "migrate"}
    assert FIELDHUB_COMMANDS["ingest"][0] == "ingest"
    assert FIELDHUB_COMMANDS["api"][0] == "up"
    assert FIELDHUB_COMMANDS["migrate"][0] == "migrate"


def test_the_password_has_no_default() -> None:
    with pytest.raises(MissingVariable, match="DEPLOY_DB_PASSWORD"):
        load_compose(env={})


def test_long_running_services_have_healthchecks_and_wait_for_them() -> None:
    for name in LONG_RUNNING:
        test = SERVICE_DEFS[name].get("healthcheck", {}).get("test")
        assert isinstance(test, list), f"{name}: healthcheck test in exec form"
        assert test[0] == "CMD", f"{name}: {test}"
        # Docker restarts a container only by its restart policy, not for a failed healthcheck.
        assert SERVICE_DEFS[name]["restart"] == "unless-stopped"
    for name in ("ingest", "api", "migrate"):
        depends = SERVICE_DEFS[name]["depends_on"]
        for dependency, how in depends.items():
            assert how == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in SERVICE_DEFS[dependency], dependency
    assert set(SERVICE_DEFS["ingest"]["depends_on"]) == {"db", "broker"}
    assert set(SERVICE_DEFS["api"]["depends_on"]) == {"db", "broker"}
    assert set(SERVICE_DEFS["migrate"]["depends_on"]) == {"db"}


def test_python_healthchecks_compile() -> None:
    """The `python -c` healthchecks run in the image's Python: at least they must compile."""
    scripts = {
        name: service["healthcheck"]["test"]
        for name, service in SERVICE_DEFS.items()
        if "healthcheck" in service and service["healthcheck"]["test"][1] == "python"
    }
    assert set(scripts) == {"ingest", "api"}
    for name, test in scripts.items():
        assert test[2] == "-c", test
        compile(test[3], f"<{name} healthcheck>", "exec")


# Run inside a fresh PID namespace (as in a container): two stand-in workers with the argument
# `fieldhub ingest --worker-index` gives its workers, then the healthcheck asking for 2 and 3.
_HEALTHCHECK_DRIVER = """
import subprocess, sys, time
script = sys.argv[1]
workers = [
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                      "ingest", "--worker-index", str(i)])
    for i in (1, 2)
]
time.sleep(0.3)
codes = [subprocess.run([sys.executable, "-c", script, n]).returncode for n in ("2", "3")]
workers[1].kill()
workers[1].wait()
codes.append(subprocess.run([sys.executable, "-c", script, "2"]).returncode)
for worker in workers:
    worker.kill()
print(codes)
"""


def test_the_ingest_healthcheck_counts_running_workers() -> None:
    """The script itself, in its own PID namespace like a container's /proc: healthy with all
    workers running, unhealthy with one missing (its own command line must not count)."""
    script = SERVICE_DEFS["ingest"]["healthcheck"]["test"][3]
    unshare = shutil.which("unshare")
    command = [unshare or "unshare", "--pid", "--fork", "--mount-proc"]
    command += [sys.executable, "-c", _HEALTHCHECK_DRIVER, script]
    done = None
    if unshare is not None:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done is None or (done.returncode != 0 and "unshare" in done.stderr):
        # Needs root (or user namespaces) for a PID namespace; CI runs as root.
        if in_ci():
            pytest.fail(f"cannot make a PID namespace: {done.stderr if done else 'no unshare'}")
        pytest.skip("cannot make a PID namespace here (unshare)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 1]", done.stdout + done.stderr


def test_the_ingest_healthcheck_counts_the_workers_started() -> None:
    ingest = SERVICE_DEFS["ingest"]
    assert ingest["healthcheck"]["test"][-1] == option_value(
        FIELDHUB_COMMANDS["ingest"], "--workers"
    )


def test_the_api_healthcheck_and_ports_use_the_port_it_serves() -> None:
    api = SERVICE_DEFS["api"]
    args = FIELDHUB_COMMANDS["api"]
    port = option_value(args, "--http-port")
    assert option_value(args, "--http-host") == "0.0.0.0"  # reachable from outside the container
    assert f"http://127.0.0.1:{port}/healthz" in api["healthcheck"]["test"][3]
    (published,) = api["ports"]
    bind, host_port, container_port = published.split(":")
    assert container_port == port
    # The dashboard has no login: the host's loopback unless the operator says otherwise.
    assert bind == "127.0.0.1"
    assert host_port.isdigit()


def test_volumes_hold_the_broker_state_and_the_database() -> None:
    declared = set(COMPOSE["volumes"])
    broker_volumes = [v.split(":") for v in SERVICE_DEFS["broker"]["volumes"]]
    db_volumes = [v.split(":") for v in SERVICE_DEFS["db"]["volumes"]]
    persistence = mosquitto_options(MOSQUITTO_CONF.read_text())["persistence_location"][0]
    named = {(source, target.rstrip("/")) for source, target, *_ in broker_volumes + db_volumes}
    assert (("broker-data", persistence.rstrip("/"))) in named
    assert ("db-data", "/var/lib/postgresql/data") in named  # the postgres:16 image's PGDATA
    assert {source for source, _ in named if not source.startswith(".")} == declared
    # The configuration from this directory, read-only, where the image looks for it.
    assert ["./mosquitto.conf", MOSQUITTO_CONF_TARGET, "ro"] in broker_volumes


def test_migrate_is_a_one_shot_behind_a_profile() -> None:
    migrate = SERVICE_DEFS["migrate"]
    assert migrate["profiles"] == ["migrate"]
    assert migrate["restart"] == "no"
    args = FIELDHUB_COMMANDS["migrate"]
    assert len(args) == 3, args  # migrate SOURCE TARGET
    (volume,) = migrate["volumes"]
    _, target = volume.split(":")[:2]
    source = urlsplit(args[1])
    assert source.scheme == "sqlite"
    # sqlite:////import/x.db: an absolute path inside the mounted directory.
    assert Path(source.path[1:]).parent == Path(target), (args[1], volume)
    assert urlsplit(args[2]).scheme == "postgresql"


# -- compose.yaml: fieldhub's command lines against the real CLI -------------------------------

FLAG_CASES = [
    pytest.param(service, args[0], flag, id=f"{service}-{flag}")
    for service, args in FIELDHUB_COMMANDS.items()
    for flag in flags_in(args)
]


@pytest.mark.parametrize(("service", "command", "flag"), FLAG_CASES)
def test_each_flag_is_in_the_commands_help(service: str, command: str, flag: str) -> None:
    text = help_text(command)
    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
        f"{service}: `fieldhub {command} --help` has no {flag}:\n{text}"
    )


@pytest.mark.parametrize("service", sorted(FIELDHUB_COMMANDS))
def test_each_command_line_parses_with_the_real_cli(service: str) -> None:
    """Values too (`--workers` in range, SOURCE and TARGET given): the CLI's own parser, without
    running the command."""
    args = FIELDHUB_COMMANDS[service]
    group = typer.main.get_command(app)
    command = group.commands[args[0]]  # type: ignore[attr-defined]
    try:
        context = command.make_context(args[0], list(args[1:]))
    except Exception as exc:  # click's UsageError and friends, with their message
        pytest.fail(f"{service}: `fieldhub {shlex.join(args)}` is refused: {exc}")
    params = context.params
    # The settings those flags build, validated as `fieldhub` validates them.
    Settings(
        **{
            key: params[key]
            for key in ("db", "mqtt_url", "http_host", "http_port", "log_level")
            if params.get(key) is not None
        }
    )


@pytest.mark.parametrize("service", sorted(FIELDHUB_COMMANDS))
def test_urls_point_at_the_services(service: str) -> None:
    args = FIELDHUB_COMMANDS[service]
    db_env = SERVICE_DEFS["db"]["environment"]
    db_url = args[2] if args[0] == "migrate" else option_value(args, "--db")
    db = urlsplit(db_url)
    assert db.scheme == "postgresql"
    assert db.hostname == "db"
    assert db.port == 5432
    assert db.username == db_env["POSTGRES_USER"]
    assert db.path == f"/{db_env['POSTGRES_DB']}"
    # No password on a command line (visible in `ps` and `docker inspect`): PGPASSWORD.
    assert db.password is None
    assert SERVICE_DEFS[service]["environment"]["PGPASSWORD"] == db_env["POSTGRES_PASSWORD"]
    if args[0] == "migrate":
        return
    broker = urlsplit(option_value(args, "--mqtt-url"))
    assert broker.scheme == "mqtt"
    assert broker.hostname == "broker"
    listeners = mosquitto_options(MOSQUITTO_CONF.read_text())["listener"]
    assert listeners == [str(broker.port)], "the broker listens where fieldhub connects"
    published = [p.rsplit(":", 1)[-1] for p in SERVICE_DEFS["broker"]["ports"]]
    assert str(broker.port) in published


def test_the_api_does_not_ingest_beside_the_workers() -> None:
    """Without API-only mode `fieldhub up` subscribes on its own and stores every message the
    workers store (docs/scale-out.md)."""
    assert "--no-ingest" in FIELDHUB_COMMANDS["api"]


def test_every_variable_is_documented() -> None:
    names = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text(encoding="utf-8")))
    assert names, "compose.yaml takes its settings from variables"
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    guide = GUIDE.read_text(encoding="utf-8")
    for name in sorted(names):
        assert re.search(rf"^#?\s*{name}=", example, re.MULTILINE), f"{name} not in env.example"
        assert name in guide, f"{name} not in deploy/README.md"


# -- mosquitto.conf -----------------------------------------------------------------------------


def mosquitto_options(text: str) -> dict[str, list[str]]:
    """Option -> its values in file order (log_type may repeat)."""
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            options.setdefault(key, []).append(value.strip())
    return options


def test_mosquitto_conf_carries_the_embedded_brokers_values() -> None:
    text = MOSQUITTO_CONF.read_text(encoding="utf-8")
    options = mosquitto_options(text)
    assert options["max_inflight_messages"] == [str(MAX_INFLIGHT_MESSAGES)]
    assert options["max_queued_messages"] == [str(MAX_QUEUED_MESSAGES)]
    assert options["max_queued_bytes"] == [str(MAX_QUEUED_BYTES)]
    assert options["max_keepalive"] == [str(MAX_KEEPALIVE_S)]
    assert options["persistence"] == ["true"]
    assert options["autosave_interval"] == [str(AUTOSAVE_INTERVAL_S)]
    assert "src/fieldhub/broker/config.py" in text, "the comment that says where the why is"


def test_mosquitto_conf_is_the_embedded_one_but_for_where_it_listens_and_saves() -> None:
    """Every option the embedded broker sets, with the same values, except its listener and
    persistence directory; and the container's stdout instead of the supervisor's stderr. A new
    option in src/fieldhub/broker/config.py fails here until deploy/mosquitto.conf has it."""
    embedded = mosquitto_options(
        render_mosquitto_conf(host="127.0.0.1", port=1883, persistence_dir=Path("/mosquitto/data"))
    )
    deployed = mosquitto_options(MOSQUITTO_CONF.read_text(encoding="utf-8"))
    embedded["log_dest"] = ["stdout"]  # the container log, not a file the supervisor keeps
    assert deployed["listener"] == ["1883"]  # every interface of the container
    assert deployed["persistence_location"] == ["/mosquitto/data/"]
    assert "user" not in deployed  # the image's default user, mosquitto
    for name in PLACE_OPTIONS:
        embedded.pop(name, None)
        deployed.pop(name, None)
    assert deployed == embedded


@pytest.fixture
def mosquitto_executable() -> str:
    try:
        return find_mosquitto()
    except MosquittoNotFound as exc:
        if in_ci():
            pytest.fail(f"{exc}; CI must run the broker tests")
        pytest.skip(str(exc))


@dataclass
class DeployedBroker:
    port: int
    data: Path  # its persistence directory
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def deployed_broker(tmp_path: Path, mosquitto_executable: str) -> Iterator[DeployedBroker]:
    """deploy/mosquitto.conf run by the real Mosquitto, unchanged but for two lines: the
    listener on a free port of 127.0.0.1, and the persistence directory in tmp_path. Stopped
    (SIGTERM) after the test unless the test did, and then it must have exited cleanly without
    an error or warning in its log."""
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    text = MOSQUITTO_CONF.read_text(encoding="utf-8")
    text, listeners = re.subn(r"(?m)^listener 1883$", f"listener {port} 127.0.0.1", text)
    text, locations = re.subn(
        r"(?m)^persistence_location /mosquitto/data/$", f"persistence_location {data}/", text
    )
    assert (listeners, locations) == (1, 1), "the lines this test rewrites are not as expected"
    if os.geteuid() == 0:
        # As root, Mosquitto switches to the user `mosquitto`, which cannot enter pytest's 0700
        # temp directories to save its state: stay root (the supervisor does the same).
        text += "\nuser root\n"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text, encoding="utf-8")
    log_path = tmp_path / "mosquitto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [mosquitto_executable, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    broker = DeployedBroker(port=port, data=data, process=process, log_path=log_path)
    try:
        deadline = time.monotonic() + BROKER_START_S
        while not can_connect("127.0.0.1", port):
            assert process.poll() is None, f"mosquitto refused the config:\n{broker.log()}"
            assert time.monotonic() < deadline, f"mosquitto did not listen:\n{broker.log()}"
            time.sleep(0.05)
        yield broker
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
        log_text = broker.log()  # complete only now: Mosquitto buffers its stdout
        assert process.returncode == 0, log_text
        assert f"Config loaded from {conf}" in log_text
        lines = [line for line in log_text.splitlines() if ROOT_WARNING not in line]
        assert not [line for line in lines if "Error" in line or "Warning" in line], log_text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_mosquitto_runs_the_deploy_config(deployed_broker: DeployedBroker) -> None:
    port = deployed_broker.port

    # The compose healthcheck itself (mosquitto-clients; the image ships them).
    test = SERVICE_DEFS["broker"]["healthcheck"]["test"][1:]
    assert test[test.index("-p") + 1] == "1883"
    test[test.index("-p") + 1] = str(port)
    if shutil.which(test[0]) is None and not in_ci():
        pass  # mosquitto-clients not installed here; CI has them (scripts/test)
    else:
        done = subprocess.run(test, capture_output=True, text=True, timeout=10, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("mosquitto version"), done.stdout

    # max_keepalive is in force: an MQTT 5 client asking for 600 s is told the broker's 300.
    connected = threading.Event()
    granted: dict[str, int] = {}

    def on_connect(
        client: mqtt.Client, userdata: object, flags: Any, reason: Any, properties: Any
    ) -> None:
        granted["keepalive"] = getattr(properties, "ServerKeepAlive", -1)
        connected.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="deploy-test", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=600)
    client.loop_start()
    try:
        assert connected.wait(10), "no CONNACK"
        assert granted["keepalive"] == MAX_KEEPALIVE_S
    finally:
        client.disconnect()
        client.loop_stop()


def test_mosquitto_saves_where_the_volume_is(deployed_broker: DeployedBroker) -> None:
    """persistence and persistence_location: on SIGTERM (what `docker compose stop` sends)
    mosquitto.db appears in the directory the broker-data volume holds in the container."""
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="deploy-test-retained")
    publisher.connect("127.0.0.1", deployed_broker.port)
    publisher.loop_start()
    try:
        publisher.publish("deploy-test/retained", b"kept", qos=1, retain=True).wait_for_publish(10)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    saved = deployed_broker.data / "mosquitto.db"
    assert not saved.exists()
    deployed_broker.process.send_signal(signal.SIGTERM)
    assert deployed_broker.process.wait(timeout=10) == 0, deployed_broker.log()
    assert saved.is_file(), deployed_broker.log()
    assert b"deploy-test/retained" in saved.read_bytes()


# -- the Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_runs_fieldhub_as_an_unprivileged_user_on_python_311_slim() -> None:
    stages = dockerfile_stages()
    for stage in stages:
        base = stage[0][1].split()[0]
        assert base == "python:3.11-slim", stage[0]
    final = stages[-1]
    instructions = [instruction for instruction, _ in final]
    users = [args for instruction, args in final if instruction == "USER"]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert instructions.index("USER") < instructions.index("ENTRYPOINT")
    assert entrypoint_of(SERVICE_DEFS["api"]) == ["fieldhub"]


def test_dockerfile_installs_the_wheel_without_extras() -> None:
    final = dockerfile_stages()[-1]
    installs = [
        args for instruction, args in final if instruction == "RUN" and "pip install" in args
    ]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0].split("&&")[0])
    targets = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
    assert targets, installs[0]
    assert all(t.endswith(".whl") for t in targets), targets
    assert not any("[" in t for t in targets), "no extras (the [test] tools stay out)"
    assert not {"-e", "--editable"} & set(words)


def _build_stage_copies() -> list[str]:
    build = dockerfile_stages()[0]
    sources = []
    for instruction, args in build:
        if instruction == "COPY":
            assert "--from" not in args, args
            *srcs, _ = args.split()
            sources += srcs
    return sources


def test_the_build_context_keeps_what_the_build_copies() -> None:
    """Dockerfile.dockerignore excludes everything, then lets back exactly the COPY sources."""
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {source.rstrip("/") for source in _build_stage_copies()} == allowed


def test_the_build_stage_builds_a_complete_wheel(tmp_path: Path) -> None:
    """The build stage's COPY set, copied as Docker would (minus the dockerignore'd caches),
    built by the stage's own `pip wheel` command (which, like the Docker build, fetches
    setuptools from the package index): the wheel holds every module of both packages, fieldhub's
    package data and the `fieldhub` entry point."""
    # What pyproject.toml selects from the repository: every module of both packages and
    # fieldhub's package data (templates, static files, the vendored charts).
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    roots = {
        "fieldhub": REPO / "src" / "fieldhub",
        "fieldhub_node": REPO / "firmware/lib/fieldhub_node",
    }
    expected = {
        f"{package}/{path.relative_to(root).as_posix()}"
        for package, root in roots.items()
        for path in root.rglob("*.py")
    } | {
        f"{package}/{path.relative_to(roots[package]).as_posix()}"
        for package, patterns in package_data.items()
        for pattern in patterns
        for path in roots[package].glob(pattern)
        if path.is_file()
    }
    assert any(name.startswith("fieldhub/web/templates/") for name in expected)
    context = tmp_path / "src"
    for source in _build_stage_copies():
        origin = REPO / source
        assert origin.exists(), f"COPY {source}: no such path in the repository"
        destination = context / source
        if origin.is_dir():
            destination.parent.mkdir(parents=True, exist_ok=True)
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(origin, destination, ignore=ignore)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(origin.read_bytes())
    (run,) = [args for instruction, args in dockerfile_stages()[0] if instruction == "RUN"]
    words = shlex.split(run)
    assert words[:2] == ["pip", "wheel"], run
    out = tmp_path / "wheels"
    words[words.index("--wheel-dir") + 1] = str(out)
    done = subprocess.run(
        [sys.executable, "-m", *words],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("fieldhub-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_text = archive.read(entry_points).decode()
    assert re.search(r"(?m)^fieldhub = fieldhub\.cli:main$", entry_text), entry_text
    missing = sorted(expected - names)
    assert not missing, f"not in the image's wheel: {missing}"
