"""Started as root, `fieldhub up` binds its HTTP port, hands its files over and stops being root.

What needs root happens first: binding the HTTP listener (ports below 1024) and giving the data
dir to the user fieldhub will run as. Then the process sets its groups, gid and uid, real,
effective and saved, before anything else starts: the store, the broker supervisor (whose
Mosquitto then runs as that user too, `fieldhub.broker.privileges` with euid != 0), ingest and
the API all run unprivileged, and a bug in any of them is not a root bug.

Who fieldhub runs as (`choose_account`), in order:

1. `run_as` (`--run-as`, FIELDHUB_RUN_AS), if given. `root` keeps root (not recommended; the
   broker then stays root too: its own switch to `mosquitto` needs a data dir that user can
   enter, and the data dir is 0700).
2. the user `fieldhub`, if it exists: the dedicated system user an install creates
   (deploy/Dockerfile does), owning nothing else.
3. the owner of the data dir (or of the nearest directory above it that exists) unless that
   is root: `sudo fieldhub up --data-dir ~/fieldhub-data` then runs as the user whose data it is.
4. otherwise fieldhub refuses to start and says how to create the user. Not `nobody`: that
   account is shared by every service that wants "no one" (and by NFS root squashing), so files
   it owns are writable by all of them; it is accepted only when asked for by name.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from fieldhub.config import Settings
from fieldhub.net import describe_bind_error
from fieldhub.security.files import log_changes, secure_tree

log = logging.getLogger("fieldhub.security")

DEFAULT_USER = "fieldhub"
KEEP_ROOT = "root"
# SQLite's files beside a database (WAL mode, and a rollback journal left by a crash).
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class RunAsError(RuntimeError):
    """fieldhub cannot run as the user it should; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Account:
    """The user fieldhub runs as after dropping root."""

    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str


def start_unprivileged(settings: Settings, *, http_port: int) -> list[socket.socket] | None:
    """Make the data dir private; started as root, also bind the HTTP listener, give the data
    dir to the chosen user and become that user.

    Returns the bound listening sockets for uvicorn, or None when nothing was bound here
    (not root, or root kept: uvicorn binds as usual). Raises RunAsError when root cannot be
    dropped safely.
    """
    # Resolved: a data dir that is a symlink is the operator's choice of where the files live.
    data_dir = settings.data_dir.resolve()
    database = _sqlite_files(settings)
    if os.geteuid() != 0:
        if settings.run_as is not None and settings.run_as != _current_user():
            log.warning(
                "run_as=%s is used only when fieldhub is started as root; running as %s",
                settings.run_as,
                _current_user(),
            )
        log_changes(secure_tree(data_dir, extra_files=database), data_dir)
        return None

    account = choose_account(settings.run_as, data_dir)
    if account is None:
        log.warning(
            "running as root (run_as=root): fieldhub and its broker keep every privilege; "
            "create a `%s` system user and drop run_as to run unprivileged",
            DEFAULT_USER,
        )
        log_changes(secure_tree(data_dir, extra_files=database), data_dir)
        return None

    # Made by root, handed over below: the user may lack the right to create it itself.
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir.resolve()
    _check_reachable(account, data_dir, "its data dir", handed_over=True)
    for path in database[:1]:
        if not path.is_relative_to(data_dir):
            _check_reachable(account, path.parent, "the database's directory")
    # uvicorn and the broker read these after the switch (at startup and at every broker start).
    for what, given in (("tls_cert", settings.tls_cert), ("tls_key", settings.tls_key)):
        if given is not None and not given.resolve().is_relative_to(data_dir):
            _check_readable(account, given.resolve(), what)
    sock = bind_listener(settings.http_host, http_port)
    try:
        changes = secure_tree(data_dir, owner=(account.uid, account.gid), extra_files=database)
        log_changes(changes, data_dir)
        drop_to(account)
    except BaseException:
        sock.close()
        raise
    log.info(
        "running as %s (uid %d, gid %d); bound %s:%d as root first",
        account.name,
        account.uid,
        account.gid,
        settings.http_host,
        http_port,
    )
    return [sock]


def choose_account(run_as: str | None, data_dir: Path) -> Account | None:
    """The user to become (see the module docstring); None for an explicit `root`."""
    if run_as == KEEP_ROOT:
        return None
    if run_as is not None:
        try:
            entry = pwd.getpwuid(int(run_as)) if run_as.isdigit() else pwd.getpwnam(run_as)
        except KeyError:
            raise RunAsError(
                f"run_as={run_as}: no such user; create it (useradd --system {run_as}) or name "
                "an existing one"
            ) from None
        if entry.pw_uid == 0:
            return None
        if entry.pw_name == "nobody":
            log.warning(
                "running as nobody: other services share that user, and so the data dir; "
                "a dedicated `%s` user is safer",
                DEFAULT_USER,
            )
        return _account(entry)
    try:
        return _account(pwd.getpwnam(DEFAULT_USER))
    except KeyError:
        pass
    owner, group = _owner_of(data_dir)
    if owner != 0:
        try:
            return _account(pwd.getpwuid(owner))
        except KeyError:
            # A uid without a name (a volume from another system): still a user that is not root.
            return Account(f"uid {owner}", owner, group, [group], "/")
    raise RunAsError(
        f"started as root, fieldhub runs as an unprivileged user, but there is no `{DEFAULT_USER}` "
        f"user and {data_dir} belongs to root. Create one: "
        f"`useradd --system --home-dir {data_dir} --shell /usr/sbin/nologin {DEFAULT_USER}`, "
        "or pass --run-as USER (FIELDHUB_RUN_AS); --run-as root keeps root (not recommended)"
    )


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` as uvicorn would bind it (uvicorn listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # As uvicorn does: a port held only by TIME_WAIT connections of a previous run is free.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RunAsError(
            f"cannot listen for HTTP: {describe_bind_error(host, port, exc)} "
            f"({(exc.strerror or str(exc)).lower()})"
        ) from None
    return sock


def drop_to(account: Account) -> None:
    """Become `account` for good: groups, then gid, then uid (each real, effective and saved;
    after the uid no other change is allowed), and check that root cannot be regained."""
    os.setgroups(account.groups)
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    if os.getresuid() != (account.uid,) * 3 or os.getresgid() != (account.gid,) * 3:
        raise RunAsError(f"could not switch to {account.name}: the ids did not change")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise RunAsError(f"after switching to {account.name} the process could become root again")
    # What libraries look at for the user's files (caches, config): not root's.
    os.environ.update(HOME=account.home, USER=account.name, LOGNAME=account.name)


def _account(entry: pwd.struct_passwd) -> Account:
    return Account(
        entry.pw_name,
        entry.pw_uid,
        entry.pw_gid,
        os.getgrouplist(entry.pw_name, entry.pw_gid),
        entry.pw_dir,
    )


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _owner_of(path: Path) -> tuple[int, int]:
    """Owner and group of `path`, or of the nearest directory above it that exists."""
    for candidate in (path, *path.parents):
        try:
            st = candidate.stat()
        except FileNotFoundError:
            continue
        return st.st_uid, st.st_gid
    return 0, 0


def _sqlite_files(settings: Settings) -> list[Path]:
    """The SQLite database and its side files (database first); none for PostgreSQL."""
    url = settings.db_url
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return []
    given = Path(url[len(prefix) :])
    # The directory resolved like the data dir, so a database inside it is recognised as such.
    database = given.absolute().parent.resolve() / given.name
    return [database, *(database.with_name(database.name + end) for end in SQLITE_SIDE_FILES)]


def _check_reachable(account: Account, path: Path, what: str, *, handed_over: bool = False) -> None:
    """Refuse to start when `account` could not enter the directories above `path`, or (unless
    `path` is `handed_over` to it) create files in `path`: fieldhub would start and then fail at
    its first write, far from the cause."""
    groups = set(account.groups)
    for directory in reversed(path.parents):
        st = directory.stat()
        if not _allows(st, account.uid, groups, stat.S_IXUSR):
            raise RunAsError(
                f"{account.name} cannot enter {directory} ({stat.filemode(st.st_mode)}) on the "
                f"way to {what} {path}: choose a data dir it can reach (e.g. /var/lib/fieldhub) "
                "or another --run-as"
            )
    st = path.stat()
    if not handed_over and not _allows(st, account.uid, groups, stat.S_IWUSR | stat.S_IXUSR):
        raise RunAsError(
            f"{account.name} cannot create files in {what} {path} ({stat.filemode(st.st_mode)}): "
            f"SQLite writes its -wal and -shm there; make it writable for {account.name} or "
            "choose another --run-as"
        )


def _check_readable(account: Account, path: Path, what: str) -> None:
    """Refuse to start when `account` could not read `path` (a TLS file outside the data dir,
    which is not handed over: it may be shared with other services)."""
    groups = set(account.groups)
    for directory in reversed(path.parents):
        if not _allows(directory.stat(), account.uid, groups, stat.S_IXUSR):
            break
    else:
        if _allows(path.stat(), account.uid, groups, stat.S_IRUSR):
            return
    raise RunAsError(
        f"{account.name} cannot read {what} {path}, and fieldhub reads it after dropping root: "
        f"let {account.name} read it (e.g. through its group) or keep the certificate in the "
        "data dir (`fieldhub certs init` does)"
    )


def _allows(st: os.stat_result, uid: int, gids: set[int], user_bits: int) -> bool:
    """POSIX permission check of owner-class `user_bits` for uid/gids (ACLs ignored)."""
    if st.st_uid == uid:
        return st.st_mode & user_bits == user_bits
    if st.st_gid in gids:
        return st.st_mode & (user_bits >> 3) == user_bits >> 3
    return st.st_mode & (user_bits >> 6) == user_bits >> 6
