"""Files fieldhub keeps are its own: readable by the user it runs as, and nobody else.

The data dir holds the database (readings, users, password hashes, sessions), the broker's
config, password and ACL files and its queued messages, the broker's log and generated secrets:
nothing in it is for other local users. Two parts keep it so:

* `restrict_new_files()` sets the process umask to 0o077 at the start of `fieldhub up` and
  `fieldhub ingest`, so every file and directory created afterwards (SQLite's database, -wal and
  -shm, mosquitto.conf, the broker's log and persistence, the secrets) is 0600 / 0700, including
  what Mosquitto creates: a child process inherits the umask.
* `secure_tree()` walks what an older fieldhub left with 0644 / 0755 and removes the group and
  other bits (and, started as root, hands it to the user fieldhub will run as). SQLite matters
  here: it gives a new -wal or -shm the *database file's* mode with fchmod, whatever the umask,
  so an old 0644 database would keep producing 0644 WALs until the database itself is tightened.

Root walks directories a less privileged user may be able to write (a data dir owned by the
user fieldhub drops to), so the walk never follows a symlink and changes files through
descriptors opened with O_NOFOLLOW: a symlink or a hard link planted in the data dir cannot
make root chmod or chown a file outside it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("fieldhub.security")

PRIVATE_UMASK = 0o077
# Group and other permission bits: what no file or directory of fieldhub's may carry.
SHARED_BITS = 0o077
# How many tightened paths the log line names; the rest are counted.
LOGGED_PATHS = 10

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def restrict_new_files() -> None:
    """Make every file and directory this process (and its children) creates private."""
    os.umask(PRIVATE_UMASK)


@dataclass
class TreeChanges:
    """What `secure_tree` changed, and what it left alone and why."""

    tightened: list[tuple[Path, int, int]] = field(default_factory=list)  # path, old, new mode
    chowned: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, other: TreeChanges) -> None:
        self.tightened += other.tightened
        self.chowned += other.chowned
        self.skipped += other.skipped


def secure_tree(
    root: Path, *, owner: tuple[int, int] | None = None, extra_files: Iterable[Path] = ()
) -> TreeChanges:
    """Remove group/other bits from `root`, everything under it and `extra_files`; with `owner`
    (uid, gid), also give each of them to that user.

    `extra_files` are files outside `root` that are fieldhub's all the same (an SQLite database
    given with --db elsewhere, and its -wal/-shm); absent ones are ignored. Symlinks are left as
    they are, never followed. Files with several hard links are skipped: one of the other names
    may be outside the data dir.
    """
    changes = TreeChanges()
    # Resolved: fwalk without following symlinks walks nothing from a top that is one, and the
    # data dir's own path is the operator's choice (only what is inside it is distrusted).
    root = root.resolve()
    if root.is_dir():
        for directory, _dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
            path = Path(directory)
            _secure_fd(dir_fd, path, owner, changes)
            for name in files:
                _secure_entry(dir_fd, name, path / name, owner, changes)
    for extra in extra_files:
        if extra.is_relative_to(root):
            continue  # walked above
        try:
            parent_fd = os.open(extra.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            _secure_entry(parent_fd, extra.name, extra, owner, changes)
        finally:
            os.close(parent_fd)
    return changes


def _secure_entry(
    dir_fd: int, name: str, path: Path, owner: tuple[int, int] | None, changes: TreeChanges
) -> None:
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:  # gone since the listing (a WAL removed at a checkpoint)
        return
    except OSError as exc:  # ELOOP: a symlink; ENXIO: a socket; EACCES: not ours to open
        if not os.path.islink(path):
            changes.skipped.append((path, exc.strerror or str(exc)))
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return  # FIFOs and device nodes are nothing fieldhub makes
        if st.st_nlink > 1:
            changes.skipped.append((path, f"{st.st_nlink} hard links"))
            return
        _secure_fd(fd, path, owner, changes, st)
    finally:
        os.close(fd)


def _secure_fd(
    fd: int,
    path: Path,
    owner: tuple[int, int] | None,
    changes: TreeChanges,
    st: os.stat_result | None = None,
) -> None:
    st = st or os.fstat(fd)
    try:
        if owner is not None and (st.st_uid, st.st_gid) != owner:
            os.fchown(fd, *owner)
            changes.chowned += 1
        mode = stat.S_IMODE(st.st_mode)
        if mode & SHARED_BITS:
            os.fchmod(fd, mode & ~SHARED_BITS)
            changes.tightened.append((path, mode, mode & ~SHARED_BITS))
    except PermissionError as exc:
        # Not root and not ours: e.g. persistence an older run as root gave to `mosquitto`.
        changes.skipped.append((path, exc.strerror or str(exc)))


def log_changes(changes: TreeChanges, where: Path) -> None:
    """One line for what was tightened (files an older fieldhub left readable), one for what
    could not be checked; nothing when everything already was private."""
    if changes.tightened:
        named = ", ".join(
            f"{_shown(path, where)} ({old:04o} -> {new:04o})"
            for path, old, new in changes.tightened[:LOGGED_PATHS]
        )
        more = len(changes.tightened) - LOGGED_PATHS
        log.warning(
            "made %d paths in %s private that group or others could read: %s%s",
            len(changes.tightened),
            where,
            named,
            f" and {more} more" if more > 0 else "",
        )
    if changes.skipped:
        named = ", ".join(
            f"{_shown(path, where)} ({why})" for path, why in changes.skipped[:LOGGED_PATHS]
        )
        log.warning("could not make these paths private: %s", named)


def _shown(path: Path, where: Path) -> str:
    try:
        return str(path.relative_to(where)) if path != where else str(path)
    except ValueError:
        return str(path)
