"""The layer check itself: `lint-imports` (run by scripts/test over the contracts in
pyproject.toml) passes on the tree as it is and fails when a lower layer imports a higher one.

Each test checks a copy of `src/fieldhub` in a temporary folder, put first on the import path, so
the deliberate upward import never touches the real tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _copy_tree(tmp_path: Path) -> Path:
    """A copy of the package and of pyproject.toml (the contracts) under `tmp_path`."""
    shutil.copytree(
        ROOT / "src" / "fieldhub",
        tmp_path / "src" / "fieldhub",
        ignore=shutil.ignore_patterns("__pycache__", "static", "templates"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "src" / "fieldhub"


def _lint(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(tmp_path / "pyproject.toml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _add_import(module: Path, statement: str) -> None:
    module.write_text(module.read_text() + f"\n{statement}  # deliberate: the check must fail\n")


def test_the_tree_as_it_is_keeps_every_contract(tmp_path: Path) -> None:
    """The unmodified copy passes: the failures below come from the added import alone."""
    _copy_tree(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "complaint"),
    [
        # The store (below the API) reaching for the composition root.
        (
            "store/types.py",
            "import fieldhub.platform",
            "fieldhub.store is not allowed to import fieldhub.platform",
        ),
        # The pure protocol core reaching for the store.
        (
            "protocol/ids.py",
            "from fieldhub.store import core",
            "fieldhub.protocol is not allowed to import fieldhub.store",
        ),
        # Two packages of one layer importing each other.
        (
            "ingest/follower.py",
            "import fieldhub.export",
            "fieldhub.ingest is not allowed to import fieldhub.export",
        ),
        # The protocol core loading the MQTT client library.
        (
            "protocol/topics.py",
            "import paho.mqtt.client",
            "fieldhub.protocol is not allowed to import paho",
        ),
    ],
)
def test_an_upward_import_breaks_the_check(
    tmp_path: Path, module: str, statement: str, complaint: str
) -> None:
    """A deliberately added import against the layers fails lint-imports, naming it."""
    package = _copy_tree(tmp_path)
    _add_import(package / module, statement)
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert complaint in result.stdout
