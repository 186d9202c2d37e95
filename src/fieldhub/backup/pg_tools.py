"""Finding pg_dump and pg_restore of a version that can read the server.

pg_dump refuses a server of a newer major version than its own ("aborting because of server
version mismatch"), and pg_restore reads only archives of its version or older. Debian installs
each major version's clients in /usr/lib/postgresql/<major>/bin and puts a wrapper on PATH that
picks one; other systems have one version on PATH. So: the one on PATH, then the server's own
major version's Debian directory, then the newest one there; the first new enough wins.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fieldhub.backup.contents import BackupError

DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
# `pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` -> 15
VERSION_LINE = re.compile(r"\(PostgreSQL\)\s+(\d+)")
VERSION_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Tool:
    """One PostgreSQL client program and the major version it reports."""

    path: Path
    major: int
    version_line: str


def _version(path: Path) -> Tool | None:
    try:
        done = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = VERSION_LINE.search(done.stdout)
    if done.returncode != 0 or match is None:
        return None
    return Tool(path, int(match.group(1)), done.stdout.strip())


def _candidates(name: str, server_major: int) -> list[Path]:
    found: list[Path] = []
    on_path = shutil.which(name)
    if on_path is not None:
        found.append(Path(on_path))
    found.append(Path(DEBIAN_BIN_GLOB.replace("*", str(server_major))) / name)
    for directory in sorted(glob.glob(DEBIAN_BIN_GLOB), reverse=True):
        found.append(Path(directory) / name)
    return [p for p in dict.fromkeys(found) if p.is_file()]


def find_tool(name: str, server_major: int) -> Tool:
    """`name` (pg_dump, pg_restore) of major version `server_major` or newer; BackupError
    naming what to install when there is none."""
    tools = [t for t in (_version(p) for p in _candidates(name, server_major)) if t is not None]
    for tool in tools:
        if tool.major >= server_major:
            return tool
    install = (
        f"install PostgreSQL {server_major}'s client programs (Debian/Ubuntu: apt-get install "
        f"postgresql-client-{server_major}; Fedora/RHEL: dnf install postgresql{server_major}; "
        f"macOS: brew install postgresql@{server_major}) or put the bin directory of a "
        f"version-{server_major} or newer install first on PATH"
    )
    if not tools:
        raise BackupError(
            f"{name} was not found (on PATH or in {DEBIAN_BIN_GLOB}): fieldhub uses it for "
            f"PostgreSQL backups; {install}"
        )
    newest = max(tools, key=lambda t: t.major)
    raise BackupError(
        f"{name} {newest.major} ({newest.path}) is older than the server (PostgreSQL "
        f"{server_major}) and cannot read it; {install}"
    )
