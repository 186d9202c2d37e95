"""`fieldhub users add|reset-password` on the database: the first admin without a browser, and
the way back in after a forgotten admin password; the password is asked, never an argument."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from support.auth import login, new_password
from support.fieldhub_process import FieldhubProcess
from support.secrets import remember

FIELDHUB = Path(sys.executable).with_name("fieldhub")


def users(data_dir: Path, *args: str, answers: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FIELDHUB_")}
    return subprocess.run(
        [str(FIELDHUB), "users", *args, "--data-dir", str(data_dir)],
        input=answers,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # no terminal: getpass reads the answers from stdin
    )


def test_an_admin_added_and_reset_on_the_command_line_signs_in(tmp_path: Path) -> None:
    data_dir = tmp_path / "fh"
    first, second = new_password(), new_password()
    remember(first, second)
    added = users(data_dir, "add", "root-admin", "--role", "admin", answers=f"{first}\n{first}\n")
    assert added.returncode == 0, added.stderr
    assert first not in added.stdout + added.stderr

    mismatch = users(data_dir, "reset-password", "root-admin", answers=f"{second}\nother-one-x\n")
    assert mismatch.returncode == 2
    assert "differ" in mismatch.stderr
    reset = users(data_dir, "reset-password", "root-admin", answers=f"{second}\n{second}\n")
    assert reset.returncode == 0, reset.stderr
    weak = users(data_dir, "add", "weak", answers="changeme\nchangeme\n")
    assert weak.returncode == 1
    assert "placeholder" in weak.stderr or "shorter" in weak.stderr

    fh = FieldhubProcess(data_dir=data_dir, auth=True).start()
    try:
        refused = httpx.post(
            f"{fh.base_url}/api/v1/auth/login",
            json={"username": "root-admin", "password": first},
            timeout=10,
        )
        assert refused.status_code == 401
        session = login(fh.base_url, "root-admin", second)
        me = session.client.get("/api/v1/auth/me").json()
        assert me["role"] == "admin"
        audit = session.client.get("/api/v1/audit", params={"limit": 50}).json()
        actors = {entry["actor"] for entry in audit["data"]}
        assert any(actor.startswith("cli:") for actor in actors), actors
        session.close()
    finally:
        fh.stop()
