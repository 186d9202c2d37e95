"""Serving: a loaded version predicts bounded outputs from raw readings, single-threaded, and
refuses inputs and files it cannot trust."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from fieldhub.errors import Invalid, NotFound
from fieldhub.ml.policy import comfort_position
from fieldhub.ml.registry import DEFAULT_MODELS
from fieldhub.ml.runtime import GOLDEN_FILE, MODEL_FILE, WindowModel, read_manifest

SHIPPED_DEFAULT = DEFAULT_MODELS / "window" / "1"
# Hot with a street at -25 dBFS, inside the scaler's range: the policy says 65 % open.
LOUDISH = {"temperature": 33.0, "humidity": 50.0, "sound_volume": -25.0}


@pytest.fixture(scope="module")
def model() -> WindowModel:
    return WindowModel.load(SHIPPED_DEFAULT)


def test_load_reads_manifest_and_scaler(model: WindowModel) -> None:
    """The loaded model carries its manifest and the scaler it was trained with."""
    assert model.version == 1
    assert model.manifest.name == "window"
    assert model.scaler == read_manifest(SHIPPED_DEFAULT).scaler


def test_session_is_single_threaded(model: WindowModel) -> None:
    """One intra-op and one inter-op thread: predictions do not fight ingest for cores."""
    options = model._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


def test_predict_is_bounded_and_follows_the_policy(model: WindowModel) -> None:
    """Outputs stay in range over the whole input space, and the shipped model is within a few
    points of the policy where the policy is certain."""
    for t in range(-50, 61, 10):
        for h in range(0, 101, 25):
            for s in range(-120, 1, 30):
                position, confidence = model.predict(
                    {"temperature": t, "humidity": h, "sound_volume": s}
                )
                assert 0.0 <= position <= 100.0
                assert 0.0 <= confidence <= 1.0
    cold = model.predict({"temperature": 12.0, "humidity": 50.0, "sound_volume": -40.0})
    hot = model.predict({"temperature": 33.0, "humidity": 50.0, "sound_volume": -45.0})
    loud = model.predict({"temperature": 33.0, "humidity": 50.0, "sound_volume": -15.0})
    assert cold[0] < 5.0
    assert hot[0] > 92.0
    assert loud[0] < hot[0] - 40.0
    assert abs(model.predict(LOUDISH)[0] - comfort_position(**LOUDISH)) < 10.0
    assert cold[1] > 0.9


def test_blind_beyond_the_scalers_percentiles(model: WindowModel) -> None:
    """The contract's clip at p10/p90 (docs/ml-model.md, limitations): a street louder than
    the training data's 90th percentile looks like that percentile to the model."""
    p90 = model.scaler.p90[2]
    at_p90 = model.predict({"temperature": 33.0, "humidity": 50.0, "sound_volume": p90})
    louder = model.predict({"temperature": 33.0, "humidity": 50.0, "sound_volume": -5.0})
    assert at_p90 == louder
    assert comfort_position(33.0, 50.0, -5.0) < comfort_position(33.0, 50.0, p90) - 20.0


def test_predict_many_equals_predict(model: WindowModel) -> None:
    """The batch path gives what single predictions give."""
    rows = [
        {"temperature": 18.0 + i, "humidity": 40.0 + 2 * i, "sound_volume": -50.0 + 2 * i}
        for i in range(15)
    ]
    many = model.predict_many(rows)
    for row, (position, confidence) in zip(rows, many, strict=True):
        single = model.predict(row)
        assert single[0] == pytest.approx(position, abs=1e-4)
        assert single[1] == pytest.approx(confidence, abs=1e-6)
    assert model.predict_many([]) == []


def test_predict_refuses_unusable_inputs(model: WindowModel) -> None:
    """A missing, non-finite or out-of-range reading is Invalid with features.check's reason."""
    with pytest.raises(Invalid, match="missing:humidity") as caught:
        model.predict({"temperature": 20.0, "sound_volume": -30.0})
    assert caught.value.code == "invalid_model_input"
    with pytest.raises(Invalid, match="out_of_range:sound_volume"):
        model.predict({"temperature": 20.0, "humidity": 40.0, "sound_volume": 35.0})
    with pytest.raises(Invalid, match="row 1: non_finite:temperature"):
        model.predict_many(
            [
                {"temperature": 20.0, "humidity": 40.0, "sound_volume": -30.0},
                {"temperature": math.nan, "humidity": 40.0, "sound_volume": -30.0},
            ]
        )


def test_golden_reproduced(model: WindowModel) -> None:
    """The shipped graph reproduces its golden outputs."""
    assert model.check_golden() <= 1e-4


def test_load_refuses_tampered_or_missing_files(tmp_path: Path) -> None:
    """Changed bytes fail the checksum; a missing file or manifest is named."""
    directory = tmp_path / "1"
    shutil.copytree(SHIPPED_DEFAULT, directory)
    (directory / GOLDEN_FILE).write_text("{}")
    with pytest.raises(Invalid) as caught:
        WindowModel.load(directory)
    assert caught.value.code == "model_checksum_mismatch"
    shutil.copytree(SHIPPED_DEFAULT, directory, dirs_exist_ok=True)
    (directory / MODEL_FILE).unlink()
    with pytest.raises(Invalid) as caught:
        WindowModel.load(directory)
    assert caught.value.code == "model_file_missing"
    with pytest.raises(NotFound):
        WindowModel.load(tmp_path / "absent")


def test_load_refuses_a_graph_that_is_not_onnx(tmp_path: Path) -> None:
    """Bytes ONNX Runtime cannot read (checksums made to match) are model_load_failed."""
    from fieldhub.ml.runtime import MANIFEST_FILE, sha256_bytes

    directory = tmp_path / "1"
    shutil.copytree(SHIPPED_DEFAULT, directory)
    junk = b"not an onnx graph"
    (directory / MODEL_FILE).write_bytes(junk)
    manifest = read_manifest(directory)
    files = {**manifest.files, MODEL_FILE: sha256_bytes(junk)}
    (directory / MANIFEST_FILE).write_bytes(
        manifest.model_copy(update={"files": files}).to_json_bytes()
    )
    with pytest.raises(Invalid) as caught:
        WindowModel.load(directory)
    assert caught.value.code == "model_load_failed"
