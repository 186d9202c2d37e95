"""Outside demo mode fieldhub refuses to log in to its broker or database with an empty,
placeholder or default password, and says what to do; demo mode keeps the old leniency."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIELDHUB = Path(sys.executable).with_name("fieldhub")


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FIELDHUB_")}
    return subprocess.run(
        [str(FIELDHUB), *args],
        env={**environment, "FIELDHUB_DATA_DIR": str(tmp_path / "data"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("flag", "url"),
    [
        ("--mqtt-url", "mqtt://fieldhub:changeme@127.0.0.1:1"),
        ("--mqtt-url", "mqtt://guest:guest@127.0.0.1:1"),
        ("--mqtt-url", "mqtt://fieldhub:@127.0.0.1:1"),
        ("--db", "postgresql://fieldhub:password@127.0.0.1:1/fieldhub"),
    ],
)
def test_placeholder_passwords_are_refused(flag: str, url: str, tmp_path: Path) -> None:
    args = ["up", flag, url]
    if flag == "--db":
        args += ["--mqtt-url", "mqtt://127.0.0.1:1"]
    result = run(args, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{flag} logs in as" in result.stderr
    assert "real password" in result.stderr
    assert url not in result.stderr  # the URL with its password is never echoed


def test_workers_refuse_them_too(tmp_path: Path) -> None:
    result = run(["ingest", "--mqtt-url", "mqtt://guest:guest@127.0.0.1:1"], tmp_path)
    assert result.returncode == 2
    assert "--mqtt-url logs in as 'guest'" in result.stderr
