"""Tie a child process's life to this one: on Linux it gets SIGTERM when we die.

Without it, `kill -9` of fieldhub would leave an orphan Mosquitto holding the
port. SIGTERM rather than SIGKILL because Mosquitto stops cleanly on it and
still saves its persistence file.

The kernel clears the setting whenever the child changes its user id, so it
must be set after any user switch (subprocess does the switch before calling
the pre-exec hook). It is also tied to the *thread* that forks: the signal
comes when that thread ends, so spawn from a thread that lives as long as the
child should.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    """Return libc's prctl on Linux, else None (the death signal is Linux-only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Loaded once in the parent: the pre-exec hook runs between fork and exec, where
# loading a library (locks, allocations) is unsafe.
_PRCTL = _load_prctl()


def parent_death_hook() -> Callable[[], None] | None:
    """Build the pre-exec hook (`preexec_fn`) that ties the child's life to this process.

    None where there is no death signal (not Linux): pass it on as it is.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent_pid = os.getpid()

    def set_parent_death_signal() -> None:
        # Runs in the child after fork, after any user switch (which would clear
        # the setting), before exec; the setting survives exec of a normal binary.
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:
            # The parent died between fork and prctl: the signal will never come.
            os.kill(os.getpid(), signal.SIGTERM)

    return set_parent_death_signal
