"""What the data-dir tests share: walking a data dir for permissions, owners and secrets."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

# Where fieldhub keeps the passwords of its own MQTT clients (fieldhub.security.mqtt_clients).
CLIENT_SECRETS = Path("secrets") / "mqtt-clients.json"


def walk(data_dir: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """The data dir and everything in it (symlinks themselves, not followed)."""
    yield data_dir, data_dir.lstat()
    for directory, dirs, files in os.walk(data_dir):
        for name in (*dirs, *files):
            path = Path(directory) / name
            yield path, path.lstat()


def shared_paths(data_dir: Path) -> list[str]:
    """Every path in `data_dir` that group or others may read, write or enter, with its mode."""
    return [
        f"{path} {stat.filemode(st.st_mode)}"
        for path, st in walk(data_dir)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077
    ]


def internal_passwords(data_dir: Path) -> list[str]:
    """The passwords of fieldhub's own MQTT clients, if fieldhub made them (auth on)."""
    path = data_dir / CLIENT_SECRETS
    if not path.exists():
        return []
    found: list[str] = []

    def collect(value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if "password" in str(key).lower() and isinstance(inner, str):
                    found.append(inner)
                else:
                    collect(inner)
        elif isinstance(value, list):
            for inner in value:
                collect(inner)

    collect(json.loads(path.read_text()))
    assert found, f"{path} holds no password any more: update this test to its new format"
    return found


def files_holding(data_dir: Path, secrets: list[str]) -> list[str]:
    """Files (other than the secrets file itself) in which any of `secrets` appears verbatim."""
    holders = []
    for path, st in walk(data_dir):
        if not stat.S_ISREG(st.st_mode) or path == data_dir / CLIENT_SECRETS:
            continue
        data = path.read_bytes()
        holders += [f"{path}" for secret in secrets if secret.encode() in data]
    return holders


def stored_readings(db_path: Path) -> int:
    """Readings in the SQLite database (read while fieldhub may still be writing)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        (count,) = conn.execute("SELECT count(*) FROM readings").fetchone()
    return int(count)
