"""Every secret the suite makes, and a scan of every log the suite produced for any of them.

Tests that create a secret (a password, an API token, a device secret) `remember` it; fieldhub's
own broker logins are read from every `secrets/mqtt-clients.json` under the run's temporary
directory. At the end of the session (tests/conftest.py) every log file under that directory is
searched; a secret found in one fails the run, naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

# Shorter strings could occur in a log by chance (and the suite makes none that short).
MIN_SECRET_CHARS = 10
LOG_SUFFIXES = (".log", ".out", ".err")

_remembered: set[str] = set()


def remember(*secrets: str | None) -> None:
    """Note secrets this test made, so the end-of-session scan looks for them."""
    for secret in secrets:
        if secret is not None and len(secret) >= MIN_SECRET_CHARS:
            _remembered.add(secret)


def _internal_passwords(root: Path) -> set[str]:
    found: set[str] = set()
    for path in root.rglob("mqtt-clients.json"):
        try:
            logins = json.loads(path.read_text())
            found |= {login["password"] for login in logins.values()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return found


def scan_logs(root: Path) -> list[str]:
    """`file: secret...` for every log under `root` holding a known secret (none: empty)."""
    secrets = {s for s in _remembered | _internal_passwords(root) if len(s) >= MIN_SECRET_CHARS}
    leaks: list[str] = []
    if not secrets:
        return leaks
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix not in LOG_SUFFIXES:
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for secret in secrets:
            if secret in text:
                leaks.append(f"{path}: {secret[:4]}... ({len(secret)} characters)")
    return leaks


def remembered_count() -> int:
    return len(_remembered)
