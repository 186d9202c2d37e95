"""Whether a fieldhub runs on a data dir: an advisory lock on `<data_dir>/fieldhub.lock`.

Every running platform holds a *shared* lock on it (several may: API beside workers, a test's
platforms), and a restore takes it *exclusively*: a restore while fieldhub runs is refused, and
a fieldhub started during a restore refuses to start. flock(2) locks die with their process, so
a fieldhub killed with SIGKILL leaves nothing to clean up.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from fieldhub.store.types import StoreError

LOCK_FILE = "fieldhub.lock"


class DataDirBusy(StoreError):
    """Someone holds the data dir's lock in a way that excludes this use; the message says who
    (a StoreError: `fieldhub up` reports it in one line, as it does a database it cannot open)."""


def _open(data_dir: Path) -> IO[bytes]:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "r+b")


def hold_running(data_dir: Path) -> IO[bytes]:
    """The shared lock of a running fieldhub, held until the returned file is closed.

    DataDirBusy when a restore is writing the data dir.
    """
    handle = _open(data_dir)
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirBusy(
            f"a fieldhub restore is writing {data_dir}: start fieldhub when it has finished"
        ) from None
    return handle


def hold_exclusive(data_dir: Path) -> IO[bytes]:
    """The exclusive lock of a restore, held until the returned file is closed.

    DataDirBusy when fieldhub runs on `data_dir` (or another restore writes it).
    """
    handle = _open(data_dir)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirBusy(
            f"fieldhub is running on {data_dir} (it holds {data_dir / LOCK_FILE}): stop it "
            "(Ctrl-C, or systemctl stop fieldhub) and restore again; nothing was changed"
        ) from None
    return handle
