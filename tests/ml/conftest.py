"""Fixtures of the model tests: the shipped default, one re-training of it and a registry
template with two versions, each built once per session (training is the slow part)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fieldhub.ml.policy import synthetic_dataset
from fieldhub.ml.registry import DEFAULT_MODELS
from fieldhub.ml.runtime import Manifest

SHIPPED_DEFAULT = DEFAULT_MODELS / "window" / "1"
# The incremental version 2 of the registry tests: a few new synthetic examples, few epochs.
INCREMENTAL_EXAMPLES = 40
INCREMENTAL_EPOCHS = 5
INCREMENTAL_SEED = 2


@pytest.fixture(scope="session")
def retrained_default(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """The shipped default's recipe trained again: its version directory and manifest."""
    from fieldhub.ml.train import train_default

    out_dir = tmp_path_factory.mktemp("retrained") / "window" / "1"
    return out_dir, train_default(out_dir)


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry root holding window/1 (the shipped default) and window/2 (trained from it on
    a few new examples), nothing activated."""
    from fieldhub.ml.train import train

    root = tmp_path_factory.mktemp("registry-template")
    shutil.copytree(SHIPPED_DEFAULT, root / "window" / "1")
    train(
        synthetic_dataset(INCREMENTAL_EXAMPLES, INCREMENTAL_SEED),
        seed=INCREMENTAL_SEED,
        epochs=INCREMENTAL_EPOCHS,
        parent_dir=root / "window" / "1",
        out_dir=root / "window" / "2",
        version=2,
        source="history",
        window=(1_700_000_000_000_000, 1_700_086_400_000_000),
    )
    return root


@pytest.fixture
def registry_root(registry_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the registry template for one test."""
    root = tmp_path / "models"
    shutil.copytree(registry_template, root)
    return root


@pytest.fixture
def copy_version() -> Callable[[Path, int], Path]:
    """Copies a version directory to a new version number beside it, manifest renumbered (the
    manifest is not in its own checksums, so the copy is valid)."""
    from fieldhub.ml.runtime import MANIFEST_FILE, read_manifest

    def copy(source: Path, version: int) -> Path:
        target = source.parent / str(version)
        shutil.copytree(source, target)
        manifest = read_manifest(source).model_copy(update={"version": version})
        (target / MANIFEST_FILE).write_bytes(manifest.to_json_bytes())
        return target

    return copy
