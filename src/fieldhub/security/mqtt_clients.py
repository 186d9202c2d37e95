"""fieldhub's own MQTT logins on its embedded broker: one per client role, made at first start.

Kept in `<data_dir>/secrets/mqtt-clients.json` (0600 in a 0700 directory): the broker's password
file holds only their hashes, so this file is what lets a restarted fieldhub log in again. The
usernames carry a random suffix because the broker makes a client's id its username
(`use_username_as_clientid`): a client on the legacy listener, which picks its own client id,
cannot take over a session whose id it cannot guess.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ClientRole = Literal["ingest", "commands"]
ROLES: tuple[ClientRole, ...] = ("ingest", "commands")

# 64 random bits of username suffix make guessing a client id hopeless over a network; 32 bytes
# of password are beyond any brute force (the broker stores a PBKDF2 hash of it).
SUFFIX_BYTES = 8
PASSWORD_BYTES = 32

SECRETS_DIR = "secrets"
FILE_NAME = "mqtt-clients.json"


class SecretsFileError(RuntimeError):
    """The secrets file exists but cannot be used; the message says how to recover."""


@dataclass(frozen=True, slots=True)
class ClientLogin:
    """One of fieldhub's own broker logins. `username` is also its client id."""

    role: ClientRole
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password, even in a traceback
        return f"ClientLogin(role={self.role!r}, username={self.username!r})"


def secrets_dir(data_dir: Path) -> Path:
    """Where fieldhub keeps secrets it generated (0700)."""
    return data_dir / SECRETS_DIR


def load_or_create(data_dir: Path) -> dict[ClientRole, ClientLogin]:
    """The logins of every client role, made and saved on first use (and for a role added since).

    Written to a temporary file and renamed, so a crash never leaves half a file; created 0600
    whatever the umask.
    """
    directory = secrets_dir(data_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = directory / FILE_NAME
    stored: dict[str, dict[str, str]] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            logins = {
                role: ClientLogin(role, stored[role]["username"], stored[role]["password"])
                for role in ROLES
                if role in stored
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise SecretsFileError(
                f"{path} is not a valid fieldhub secrets file ({exc}); move it away and start "
                "fieldhub again to make new logins for its own clients"
            ) from None
    else:
        logins = {}
    missing = [role for role in ROLES if role not in logins]
    if not missing:
        return logins
    for role in missing:
        logins[role] = ClientLogin(
            role,
            f"fieldhub-{role}-{secrets.token_hex(SUFFIX_BYTES)}",
            secrets.token_urlsafe(PASSWORD_BYTES),
        )
    text = json.dumps(
        {
            role: {"username": login.username, "password": login.password}
            for role, login in logins.items()
        },
        indent=2,
    )
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return logins
