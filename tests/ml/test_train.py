"""Training: the shipped default is reproducible, meets its stated quality, its confidence is
calibrated, its ONNX graph computes what torch does, and incremental training learns."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from fieldhub.errors import Conflict, Invalid
from fieldhub.ml import export
from fieldhub.ml.registry import DEFAULT_MODELS
from fieldhub.ml.runtime import MODEL_FILE, Manifest, WindowModel, read_manifest
from fieldhub.ml.train import (
    CALIBRATION_LEVELS,
    DEFAULT_EPOCHS,
    DEFAULT_EXAMPLES,
    DEFAULT_SEED,
    load_weights,
    train,
)

SHIPPED_DEFAULT = DEFAULT_MODELS / "window" / "1"
# The shipped default measured 5.02 points held-out MAE and 0.872 within 10 points (its manifest).
# The bounds leave a margin for another CPU's rounding, not for a worse model.
MAX_HELD_OUT_MAE = 5.3
MIN_WITHIN_10 = 0.86
# Single-threaded CPU torch reproduces the figures exactly on one machine; another CPU (another
# SIMD width in oneDNN's kernels) rounds sums differently and training drifts a little. Measured
# on two machines with the same wheel: MAE 5.0247 vs 5.0264, within 10 points 0.8718 vs 0.8725,
# calibration counts apart by up to 13 of 4,000. The tolerances are a few times that.
MAE_TOLERANCE = 0.02
WITHIN_10_TOLERANCE = 0.005
CALIBRATION_N_TOLERANCE = 40


def test_retraining_reproduces_the_shipped_metrics(
    retrained_default: tuple[Path, Manifest],
) -> None:
    """The default's recipe (seed, n, epochs) gives the shipped manifest's metrics again."""
    _, manifest = retrained_default
    shipped = read_manifest(SHIPPED_DEFAULT)
    assert manifest.training.model_dump(exclude={"torch"}) == shipped.training.model_dump(
        exclude={"torch"}
    )
    assert (manifest.training.seed, manifest.training.examples) == (DEFAULT_SEED, DEFAULT_EXAMPLES)
    assert manifest.training.epochs == DEFAULT_EPOCHS
    assert manifest.features == shipped.features
    assert manifest.metrics.mae == pytest.approx(shipped.metrics.mae, abs=MAE_TOLERANCE)
    assert manifest.metrics.within_10 == pytest.approx(
        shipped.metrics.within_10, abs=WITHIN_10_TOLERANCE
    )
    for got, expected in zip(
        manifest.metrics.calibration, shipped.metrics.calibration, strict=True
    ):
        assert got.c == expected.c
        assert got.n == pytest.approx(expected.n, abs=CALIBRATION_N_TOLERANCE)


def test_held_out_quality(retrained_default: tuple[Path, Manifest]) -> None:
    """Held-out MAE and within-10 fraction meet the stated bounds (shipped and retrained)."""
    for manifest in (retrained_default[1], read_manifest(SHIPPED_DEFAULT)):
        assert manifest.training.held_out == DEFAULT_EXAMPLES // 5
        assert manifest.metrics.mae <= MAX_HELD_OUT_MAE
        assert manifest.metrics.within_10 >= MIN_WITHIN_10


def test_calibration_table_holds(retrained_default: tuple[Path, Manifest]) -> None:
    """Held-out decisions with confidence >= c are within 10 points at least c of the time, at
    every level, and the confidence does spread over the levels."""
    for manifest in (retrained_default[1], read_manifest(SHIPPED_DEFAULT)):
        table = manifest.metrics.calibration
        assert [row.c for row in table] == list(CALIBRATION_LEVELS)
        for row in table:
            if row.n:
                assert row.within_10 is not None
                assert row.within_10 >= row.c, row
        assert table[0].n > table[-2].n > 0


def test_onnx_agrees_with_torch(retrained_default: tuple[Path, Manifest]) -> None:
    """ONNX Runtime and torch agree within 1e-4 on 1,000 random scaled inputs, for the graph
    written to disk and a fresh export."""
    directory, _ = retrained_default
    model, _ = load_weights(directory)
    written = (directory / MODEL_FILE).read_bytes()
    assert export.check_agreement(model, written, samples=1_000) <= 1e-4
    assert export.check_agreement(model, export.to_onnx(model), samples=1_000) <= 1e-4


def test_agreement_check_catches_a_different_graph(
    retrained_default: tuple[Path, Manifest],
) -> None:
    """A graph that is not the torch model's is refused."""
    directory, _ = retrained_default
    model, _ = load_weights(directory)
    written = (directory / MODEL_FILE).read_bytes()
    with torch.no_grad():
        model.position_head.bias.add_(0.01)
    with pytest.raises(Invalid) as caught:
        export.check_agreement(model, written)
    assert caught.value.code == "model_export_mismatch"


def test_incremental_training_moves_toward_new_examples(tmp_path: Path) -> None:
    """A dozen new labels far from the policy pull the new version's predictions there; it
    records its parent and keeps the parent's scaler."""
    root = tmp_path / "window"
    shutil.copytree(SHIPPED_DEFAULT, root / "1")
    # A household that wants the window wide open at 24.5 °C where the policy says a third.
    new = [(24.0 + 0.1 * i, 50.0 + i, -32.0 + 0.2 * i, 95.0) for i in range(12)]
    probe = {"temperature": 24.5, "humidity": 55.0, "sound_volume": -31.0}
    before, _ = WindowModel.load(root / "1").predict(probe)
    manifest = train(
        new,
        seed=5,
        epochs=40,
        parent_dir=root / "1",
        out_dir=root / "2",
        version=2,
        source="history",
        window=(1_700_000_000_000_000, 1_700_003_600_000_000),
    )
    after, _ = WindowModel.load(root / "2").predict(probe)
    assert before < 65.0
    assert after - before > 15.0, (before, after)
    assert manifest.parent == 1
    assert manifest.features == read_manifest(root / "1").features
    assert manifest.training.window is not None
    assert manifest.training.examples == 12
    assert manifest.training.held_out == 2


def test_training_refuses_bad_requests(tmp_path: Path) -> None:
    """Too little data, bad labels, an existing or misnamed directory: refused, nothing written."""
    row = (22.0, 50.0, -30.0, 10.0)
    common: dict[str, Any] = {"seed": 1, "epochs": 1, "source": "synthetic", "window": None}
    with pytest.raises(Invalid, match="from scratch"):
        train([row] * 100, parent_dir=None, out_dir=tmp_path / "1", version=1, **common)
    with pytest.raises(Invalid, match="label"):
        train(
            [(22.0, 50.0, -30.0, 101.0)] * 5,
            parent_dir=SHIPPED_DEFAULT,
            out_dir=tmp_path / "2",
            version=2,
            **common,
        )
    with pytest.raises(Invalid, match="out_of_range:sound_volume"):
        train(
            [(22.0, 50.0, 30.0, 10.0)] * 5,
            parent_dir=SHIPPED_DEFAULT,
            out_dir=tmp_path / "2",
            version=2,
            **common,
        )
    with pytest.raises(Invalid, match="ending in /2"):
        train([row] * 5, parent_dir=SHIPPED_DEFAULT, out_dir=tmp_path, version=2, **common)
    (tmp_path / "3").mkdir()
    with pytest.raises(Conflict):
        train([row] * 5, parent_dir=SHIPPED_DEFAULT, out_dir=tmp_path / "3", version=3, **common)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3"]
