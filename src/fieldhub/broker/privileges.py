"""Who the broker runs as, and its persistence directory made writable for that user.

Mosquitto started as root switches to the user `mosquitto` (or `nobody`)
itself, but that switch clears the parent-death signal (see
`fieldhub.broker.parent_death`). So when fieldhub runs as root, the switch is
done in the child before that signal is set and Mosquitto is exec'd, and the
persistence directory is handed to that user: otherwise Mosquitto would fail to
save its state, only at autosave and shutdown, and only in its log.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

# Who the broker runs as when fieldhub runs as root: the same choice Mosquitto
# makes itself ("mosquitto", else "nobody").
UNPRIVILEGED_USERS = ("mosquitto", "nobody")


@dataclass(frozen=True)
class RunAs:
    """Credentials the broker is started with (None: inherit ours)."""

    user: int | None
    group: int | None
    extra_groups: list[int] | None
    conf_user: str | None  # the `user` line of mosquitto.conf, if any
    name: str
    # Why the broker keeps root: set only when dropping it was not possible.
    why_root: str | None = None


def _can_search(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    """POSIX search (x) permission on a directory for `uid`/`gids` (ACLs ignored)."""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _first_unreachable_ancestor(path: Path, uid: int, gids: set[int]) -> Path | None:
    """Return the first directory above `path` that `uid` cannot enter, if any."""
    for ancestor in reversed(path.parents):
        if not _can_search(ancestor.stat(), uid, gids):
            return ancestor
    return None


def prepare_run_as(persistence_dir: Path) -> RunAs:
    """Decide who the broker runs as and make `persistence_dir` writable for it.

    Not root: the broker runs as we do and the directory is already ours.
    Root: the broker runs as `mosquitto` (else `nobody`), the user Mosquitto
    would pick itself. We switch users in the child instead of letting Mosquitto
    do it, because the switch clears the parent-death signal. The persistence
    directory (and what is in it, e.g. a file written by an older run as root)
    is handed to that user. If the user cannot even reach the directory, e.g.
    under a 0700 home directory or pytest's 0700 temp root, the broker runs as
    root instead, with `why_root` saying why: otherwise it would start fine and
    then fail to save its state at every autosave and at shutdown.
    """
    persistence_dir.mkdir(parents=True, exist_ok=True)
    euid = os.geteuid()
    if euid != 0:
        try:
            name = pwd.getpwuid(euid).pw_name
        except KeyError:  # containers often run with a uid that has no passwd entry
            name = f"uid {euid}"
        return RunAs(None, None, None, None, name=name)

    for name in UNPRIVILEGED_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        break
    else:
        # An explicit `user root` stops Mosquitto from looking for one itself.
        why = f"none of the users {', '.join(UNPRIVILEGED_USERS)} exists"
        return RunAs(None, None, None, "root", name="root", why_root=why)

    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    blocked = _first_unreachable_ancestor(persistence_dir, entry.pw_uid, set(groups))
    if blocked is not None:
        why = (
            f"user {entry.pw_name} cannot enter {blocked} "
            f"({stat.filemode(blocked.stat().st_mode)}), so it could not save "
            f"{persistence_dir}; use a data dir it can reach to run unprivileged"
        )
        return RunAs(None, None, None, "root", name="root", why_root=why)

    for item in (persistence_dir, *persistence_dir.iterdir()):
        os.chown(item, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    # Queued messages are device data: readable by the broker only.
    persistence_dir.chmod(0o700)
    return RunAs(entry.pw_uid, entry.pw_gid, groups, None, name=entry.pw_name)
