"""Fixtures of the broker tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A data dir every user can reach (pytest's tmp root is 0700, root-only)."""
    path = Path(tempfile.mkdtemp(prefix="fieldhub-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
