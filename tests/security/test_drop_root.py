"""Started as root, `fieldhub up` binds its HTTP port as root (one below 1024 here), then runs
as an unprivileged user, real, effective and saved ids, as does the Mosquitto it starts; it
still serves and stores, and its data dir belongs to that user. Without a user to become it
refuses to start, saying how to make one."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fieldhub.net import free_port, port_is_free
from security.data_dirs import shared_paths, stored_readings, walk
from support.fieldhub_process import FieldhubProcess, wait_until

FIELDHUB = Path(sys.executable).with_name("fieldhub")
# An existing unprivileged user, named with --run-as: nothing is created on the machine.
TARGET = "nobody"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs a test run as root")


def _searchable_by(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first directory on the way to `path` that `user` cannot enter, if any."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in (*reversed(path.parents), path):
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A data dir `nobody` can reach (pytest's temp root is 0700), left for fieldhub to take."""
    path = Path(tempfile.mkdtemp(prefix="fieldhub-drop-"))
    path.chmod(0o755)
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def interpreter_view() -> Iterator[list[str]]:
    """A command prefix under which `nobody` can read this Python installation.

    Where the interpreter lives under a directory only root may enter (e.g. pyenv in /root),
    the dropped process could not import a module after the switch. Then fieldhub runs in a
    private mount namespace where that directory is replaced by a 0755 one holding only the
    path to the interpreter: the host's directories stay as they are.
    """
    user = pwd.getpwnam(TARGET)
    prefix = Path(sys.base_prefix).resolve()
    blocked = _searchable_by(prefix, user)
    if blocked is None:
        yield []
        return
    if shutil.which("unshare") is None:
        pytest.skip(f"{TARGET} cannot enter {blocked} (Python's prefix) and there is no unshare")
    inner = prefix.relative_to(blocked).parts[0]
    view = Path(tempfile.mkdtemp(prefix="fieldhub-view-"))
    view.chmod(0o755)
    (view / inner).mkdir()
    script = 'mount --bind "$1/$2" "$0/$2" && mount --rbind "$0" "$1" && shift 2 && exec "$@"'
    yield [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        str(view),
        str(blocked),
        inner,
    ]
    shutil.rmtree(view, ignore_errors=True)


def _privileged_free_port() -> int:
    for port in range(1023, 900, -1):
        if port_is_free("127.0.0.1", port):
            return port
    pytest.skip("no free port below 1024")


def test_started_as_root_runs_unprivileged_after_binding(
    reachable_dir: Path, interpreter_view: list[str]
) -> None:
    user = pwd.getpwnam(TARGET)
    fh = FieldhubProcess(
        data_dir=reachable_dir,
        env={"FIELDHUB_AUTH": "false"},
        extra_args=["--demo", "--run-as", TARGET],
        command_prefix=interpreter_view,
    )
    fh.http_port = _privileged_free_port()
    fh.start()
    try:
        assert fh.proc is not None
        process = psutil.Process(fh.proc.pid)
        assert tuple(process.uids()) == (user.pw_uid,) * 3
        assert tuple(process.gids()) == (user.pw_gid,) * 3
        # Its broker runs as that user too (started by the unprivileged process).
        brokers = [child for child in process.children() if child.name() == "mosquitto"]
        assert brokers
        assert tuple(brokers[0].uids()) == (user.pw_uid,) * 3
        # Serves (on the port only root could bind) and stores.
        assert fh.get("/api/v1/devices").status_code == 200
        wait_until(lambda: stored_readings(fh.db_path) > 0, what="readings from the demo fleet")
        wait_until(lambda: fh.get("/api/v1/devices").json()["data"], what="devices over HTTP")
    finally:
        assert fh.stop() == 0
    assert not shared_paths(reachable_dir)
    foreign = [
        f"{path} uid {st.st_uid}" for path, st in walk(reachable_dir) if st.st_uid != user.pw_uid
    ]
    assert not foreign, "not handed to the user fieldhub runs as"
    log = fh.log_path.read_text()
    assert f"running as {TARGET} (uid {user.pw_uid}" in log
    assert f"bound 127.0.0.1:{fh.http_port} as root first" in log


def test_refuses_to_stay_root_without_a_user_to_become(tmp_path: Path) -> None:
    try:
        pwd.getpwnam("fieldhub")
    except KeyError:
        pass
    else:
        pytest.skip("this machine has a `fieldhub` user, which fieldhub would become")
    data_dir = tmp_path / "data"  # root's
    env = {key: value for key, value in os.environ.items() if key != "FIELDHUB_RUN_AS"}
    result = subprocess.run(
        [str(FIELDHUB), "up", "--data-dir", str(data_dir), "--http-port", str(free_port())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "useradd --system" in result.stderr
    assert "--run-as" in result.stderr


def test_refuses_a_tls_key_the_user_could_not_read(reachable_dir: Path, tmp_path: Path) -> None:
    """uvicorn and the broker read the key after the switch: refused at start, not failing then."""
    key = tmp_path / "server.key"  # root's, in pytest's 0700 temp dir
    cert = tmp_path / "server.crt"
    key.write_text("not read before the check\n")
    cert.write_text("not read before the check\n")
    key.chmod(0o600)
    env = {
        **os.environ,
        "FIELDHUB_TLS_CERT": str(cert),
        "FIELDHUB_TLS_KEY": str(key),
        "FIELDHUB_AUTH": "true",
    }
    args = ["--data-dir", str(reachable_dir), "--run-as", TARGET, "--http-port", str(free_port())]
    result = subprocess.run(
        [str(FIELDHUB), "up", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"{TARGET} cannot read tls_cert {cert}" in result.stderr
