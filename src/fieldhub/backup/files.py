"""Copying the data dir's parts (models, certificates, secrets) into a backup and back, private.

Every directory is made 0700 and every file 0600 whatever the source's modes and the umask: the
parts hold the CA's private key and fieldhub's broker passwords. Symlinks are neither followed
nor copied (a link planted in the data dir must not pull a file from elsewhere into a backup),
and are reported so a restore that lacks something can be explained.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Bytes copied per read: big enough for a model file to go in a few calls.
COPY_CHUNK_BYTES = 1 << 20
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def copy_private(source: Path, target: Path) -> tuple[int, list[Path]]:
    """Copy the tree at `source` to the new directory `target`; (files copied, symlinks and
    other non-regular files skipped)."""
    copied = 0
    skipped: list[Path] = []
    target.mkdir(mode=0o700, parents=True)
    os.chmod(target, 0o700)
    for directory, dirs, names, dir_fd in os.fwalk(source, follow_symlinks=False):
        relative = Path(directory).relative_to(source)
        for name in dirs:
            if not os.path.islink(Path(directory) / name):
                (target / relative / name).mkdir(mode=0o700)
                os.chmod(target / relative / name, 0o700)
        for name in names:
            try:
                # O_NONBLOCK: opening a FIFO planted in the data dir must not hang the backup.
                fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
            except OSError:  # a symlink (ELOOP), a socket, a file gone meanwhile
                skipped.append(relative / name)
                continue
            with os.fdopen(fd, "rb") as reader:
                if not _regular(fd):
                    skipped.append(relative / name)
                    continue
                out = os.open(
                    target / relative / name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    0o600,
                )
                with os.fdopen(out, "wb") as writer:
                    shutil.copyfileobj(reader, writer, COPY_CHUNK_BYTES)
            copied += 1
        # Symlinked directories are listed in `dirs` but fwalk does not enter them.
        skipped += [relative / d for d in dirs if (Path(directory) / d).is_symlink()]
    return copied, skipped


def _regular(fd: int) -> bool:
    return os.fstat(fd).st_mode & 0o170000 == 0o100000
