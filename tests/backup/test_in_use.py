"""The data dir's lock: running fieldhubs share it, a restore takes it alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldhub.backup.in_use import DataDirBusy, hold_exclusive, hold_running


def test_running_fieldhubs_share_the_lock_and_a_restore_is_refused(tmp_path: Path) -> None:
    """Two running holders at once; a restore meanwhile is refused, and allowed after."""
    first, second = hold_running(tmp_path), hold_running(tmp_path)
    with pytest.raises(DataDirBusy, match="fieldhub is running on"):
        hold_exclusive(tmp_path)
    first.close()
    with pytest.raises(DataDirBusy):
        hold_exclusive(tmp_path)
    second.close()
    hold_exclusive(tmp_path).close()


def test_fieldhub_refuses_to_start_during_a_restore(tmp_path: Path) -> None:
    """While a restore holds the lock, a start says so instead of opening half a database."""
    restoring = hold_exclusive(tmp_path)
    with pytest.raises(DataDirBusy, match="a fieldhub restore is writing"):
        hold_running(tmp_path)
    restoring.close()
    hold_running(tmp_path).close()
    assert (tmp_path / "fieldhub.lock").stat().st_mode & 0o777 == 0o600
