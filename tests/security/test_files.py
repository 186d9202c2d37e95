"""secure_tree (tightening a data dir, and handing it over as root) and whom a root-started
fieldhub becomes, on real directories."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from fieldhub.security.files import secure_tree
from fieldhub.security.run_as import RunAsError, choose_account


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_group_and_other_bits_go_owner_bits_stay(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "mosquitto" / "persistence").mkdir(parents=True)
    script = data / "hook.sh"
    script.write_text("#!/bin/sh\n")
    database = data / "fieldhub.db"
    database.write_bytes(b"")
    for path, mode in ((data, 0o755), (data / "mosquitto", 0o775), (database, 0o644)):
        path.chmod(mode)
    script.chmod(0o755)
    (data / "mosquitto" / "persistence").chmod(0o700)

    changes = secure_tree(data)

    assert {path.name for path, _, _ in changes.tightened} == {
        "data",
        "mosquitto",
        "fieldhub.db",
        "hook.sh",
    }
    assert (_mode(data), _mode(data / "mosquitto"), _mode(database)) == (0o700, 0o700, 0o600)
    assert _mode(script) == 0o700  # the owner's execute bit is the owner's business
    assert not secure_tree(data).tightened  # nothing left to do the second time


def test_links_lead_nowhere_outside(tmp_path: Path) -> None:
    """A symlink or a second hard link in the data dir never changes the file it names."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "shared.txt"
    target.write_text("not fieldhub's\n")
    target.chmod(0o644)
    outside.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "link").symlink_to(target)
    (data / "dirlink").symlink_to(outside)
    os.link(target, data / "hardlink")

    changes = secure_tree(data, extra_files=[data / "link"])

    assert _mode(target) == 0o644
    assert _mode(outside) == 0o755
    assert [(path.name, why) for path, why in changes.skipped] == [("hardlink", "2 hard links")]


def test_extra_files_outside_the_data_dir(tmp_path: Path) -> None:
    """An SQLite database given with --db elsewhere, and its WAL, are tightened too."""
    elsewhere = tmp_path / "db"
    elsewhere.mkdir()
    database = elsewhere / "fieldhub.db"
    database.write_bytes(b"")
    database.chmod(0o644)
    changes = secure_tree(
        tmp_path / "absent", extra_files=[database, elsewhere / "fieldhub.db-wal"]
    )
    assert [path for path, _, _ in changes.tightened] == [database]
    assert _mode(database) == 0o600


def test_explicit_choices(tmp_path: Path) -> None:
    assert choose_account("root", tmp_path) is None
    assert choose_account("0", tmp_path) is None
    nobody = choose_account("nobody", tmp_path)
    assert nobody is not None
    assert nobody.uid == pwd.getpwnam("nobody").pw_uid
    with pytest.raises(RunAsError, match="no such user"):
        choose_account("no-such-user-here", tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a directory owned by another user")
def test_default_is_fieldhub_else_the_data_dirs_owner_else_refused(tmp_path: Path) -> None:
    try:
        expected: str | None = pwd.getpwnam("fieldhub").pw_name
    except KeyError:
        expected = None
    owned = tmp_path / "owned"
    owned.mkdir()
    os.chown(owned, pwd.getpwnam("nobody").pw_uid, -1)
    account = choose_account(None, owned / "not-yet" / "data")  # nearest existing directory
    assert account is not None
    assert account.name == (expected or "nobody")
    if expected is None:
        with pytest.raises(RunAsError, match="useradd --system"):
            choose_account(None, tmp_path / "roots")
