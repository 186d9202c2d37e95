"""The registry activates only versions that validate, keeps the active one when a candidate
fails, rolls back to what was running before, and installs the shipped default once."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fieldhub.clock import ManualClock
from fieldhub.errors import Conflict, Invalid, NotFound
from fieldhub.ml.registry import (
    ACTIVE_FILE,
    DEFAULT_MODELS,
    HISTORY_FILE,
    Registry,
    install_default,
)
from fieldhub.ml.runtime import (
    GOLDEN_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    WindowModel,
    read_manifest,
    sha256_bytes,
)

PROBES = [
    {"temperature": t, "humidity": h, "sound_volume": s}
    for t in (15.0, 22.0, 26.0, 29.0, 34.0)
    for h in (40.0, 80.0)
    for s in (-50.0, -20.0)
]
CopyVersion = Callable[[Path, int], Path]


def outputs(directory: Path) -> list[tuple[float, float]]:
    return WindowModel.load(directory).predict_many(PROBES)


def test_versions_and_validate(registry_root: Path) -> None:
    """Both template versions are listed and validate; v2 records v1 as its parent."""
    registry = Registry(registry_root)
    manifests = registry.versions("window")
    assert [(m.version, m.parent) for m in manifests] == [(1, None), (2, 1)]
    assert registry.validate("window", 2).version == 2
    assert registry.active("window") is None
    assert registry.next_version("window") == 3
    assert registry.versions("other") == []


def test_activate_records_history(registry_root: Path) -> None:
    """Activation writes ACTIVE and a history line with the time and who asked."""
    clock = ManualClock()
    registry = Registry(registry_root, clock=clock)
    registry.activate("window", 1, by="test")
    clock.advance(60)
    registry.activate("window", 2, by="loop")
    assert registry.active("window") == 2
    assert (registry_root / "window" / ACTIVE_FILE).read_text() == "2\n"
    lines = (registry_root / "window" / HISTORY_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "version": 1,
            "at_us": clock.now_us() - 60_000_000,
            "by": "test",
            "action": "activate",
            "previous": None,
        },
        {"version": 2, "at_us": clock.now_us(), "by": "loop", "action": "activate", "previous": 1},
    ]
    assert registry.load_active("window") is not None


def test_checksum_tamper_refused_previous_stays(
    registry_root: Path, copy_version: CopyVersion
) -> None:
    """A version whose model.onnx changed after training is refused, naming the checksum, and
    the active version stays."""
    registry = Registry(registry_root)
    registry.activate("window", 2)
    tampered = copy_version(registry_root / "window" / "2", 3)
    data = bytearray((tampered / MODEL_FILE).read_bytes())
    data[-1] ^= 0x01
    (tampered / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(Invalid) as caught:
        registry.activate("window", 3)
    assert caught.value.code == "model_checksum_mismatch"
    assert "model.onnx" in caught.value.message
    assert registry.active("window") == 2
    assert len(registry.history("window")) == 1


def test_weights_tamper_refused(registry_root: Path, copy_version: CopyVersion) -> None:
    """Every listed file is checked, not only the graph."""
    registry = Registry(registry_root)
    tampered = copy_version(registry_root / "window" / "2", 3)
    (tampered / WEIGHTS_FILE).write_bytes((tampered / WEIGHTS_FILE).read_bytes() + b"\0")
    with pytest.raises(Invalid, match=r"weights\.pt"):
        registry.validate("window", 3)


def test_golden_mismatch_refused(registry_root: Path, copy_version: CopyVersion) -> None:
    """A version whose golden outputs are not what its graph computes (checksums made to match)
    is refused and never activated."""
    registry = Registry(registry_root)
    registry.activate("window", 1)
    candidate = copy_version(registry_root / "window" / "2", 3)
    golden = json.loads((candidate / GOLDEN_FILE).read_bytes())
    golden["position"][4] += 0.01
    data = json.dumps(golden).encode()
    (candidate / GOLDEN_FILE).write_bytes(data)
    manifest = read_manifest(candidate)
    files = {**manifest.files, GOLDEN_FILE: sha256_bytes(data)}
    (candidate / MANIFEST_FILE).write_bytes(
        manifest.model_copy(update={"files": files}).to_json_bytes()
    )
    with pytest.raises(Invalid) as caught:
        registry.activate("window", 3)
    assert caught.value.code == "model_golden_mismatch"
    assert registry.active("window") == 1


def test_another_models_graph_refused(registry_root: Path, copy_version: CopyVersion) -> None:
    """v1's graph under v2's golden outputs (checksums made to match): golden mismatch."""
    registry = Registry(registry_root)
    candidate = copy_version(registry_root / "window" / "2", 3)
    graph = (registry_root / "window" / "1" / MODEL_FILE).read_bytes()
    (candidate / MODEL_FILE).write_bytes(graph)
    manifest = read_manifest(candidate)
    files = {**manifest.files, MODEL_FILE: sha256_bytes(graph)}
    (candidate / MANIFEST_FILE).write_bytes(
        manifest.model_copy(update={"files": files}).to_json_bytes()
    )
    with pytest.raises(Invalid) as caught:
        registry.validate("window", 3)
    assert caught.value.code == "model_golden_mismatch"


def test_bad_manifest_and_missing_version(registry_root: Path) -> None:
    """A manifest that breaks the schema is Invalid naming the field; an absent version is
    NotFound; neither changes the active version."""
    registry = Registry(registry_root)
    registry.activate("window", 1)
    path = registry_root / "window" / "2" / MANIFEST_FILE
    data = json.loads(path.read_bytes())
    data["metrics"]["mae"] = "small"
    path.write_text(json.dumps(data))
    with pytest.raises(Invalid, match=r"metrics\.mae") as caught:
        registry.activate("window", 2)
    assert caught.value.code == "invalid_model_manifest"
    with pytest.raises(NotFound):
        registry.activate("window", 9)
    assert registry.active("window") == 1
    assert [m.version for m in registry.versions("window")] == [1]


def test_rollback_restores_previous_outputs_exactly(registry_root: Path) -> None:
    """Rollback activates the version active before, whose outputs are bit for bit what they
    were; a second rollback has nothing earlier to go to."""
    registry = Registry(registry_root)
    registry.activate("window", 1)
    before = outputs(registry_root / "window" / "1")
    registry.activate("window", 2)
    assert outputs(registry_root / "window" / "2") != before
    manifest = registry.rollback("window", by="operator")
    assert manifest.version == 1
    assert registry.active("window") == 1
    active = registry.load_active("window")
    assert active is not None
    assert active.predict_many(PROBES) == before
    entry = registry.history("window")[-1]
    assert (entry.action, entry.version, entry.previous, entry.by) == ("rollback", 1, 2, "operator")
    with pytest.raises(Conflict):
        registry.rollback("window")
    assert registry.active("window") == 1


def test_rollback_undoes_activations_in_order(
    registry_root: Path, copy_version: CopyVersion
) -> None:
    """1 -> 2 -> 3, rollback twice: 2 then 1."""
    registry = Registry(registry_root)
    copy_version(registry_root / "window" / "2", 3)
    for version in (1, 2, 3):
        registry.activate("window", version)
    assert registry.rollback("window").version == 2
    assert registry.rollback("window").version == 1
    with pytest.raises(Conflict):
        registry.rollback("window")


def test_rollback_refuses_a_tampered_target(registry_root: Path) -> None:
    """A previous version changed on disk since it served is not rolled back to."""
    registry = Registry(registry_root)
    registry.activate("window", 1)
    registry.activate("window", 2)
    weights = registry_root / "window" / "1" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(Invalid, match="sha256"):
        registry.rollback("window")
    assert registry.active("window") == 2


def test_install_default_into_an_empty_dir(tmp_path: Path) -> None:
    """First start: the shipped default is copied, validated and activated; a second start
    changes nothing."""
    registry = Registry(tmp_path / "models")
    assert install_default(registry) == 1
    assert registry.active("window") == 1
    assert [entry.action for entry in registry.history("window")] == ["default"]
    installed = registry_root_files(tmp_path / "models" / "window" / "1")
    shipped = registry_root_files(DEFAULT_MODELS / "window" / "1")
    assert installed == shipped
    assert install_default(registry) is None
    assert len(registry.history("window")) == 1


def test_install_default_leaves_a_non_empty_registry(tmp_path: Path) -> None:
    """Any version directory, even a broken one, means the registry is not empty."""
    root = tmp_path / "models"
    (root / "window" / "4").mkdir(parents=True)
    registry = Registry(root)
    assert install_default(registry) is None
    assert registry.active("window") is None


def test_install_default_refuses_a_broken_default(tmp_path: Path) -> None:
    """A default whose files do not match its manifest is not installed, and its copy removed."""
    source = tmp_path / "shipped"
    shutil.copytree(DEFAULT_MODELS / "window" / "1", source)
    (source / GOLDEN_FILE).write_text("{}")
    registry = Registry(tmp_path / "models")
    with pytest.raises(Invalid):
        install_default(registry, source=source)
    assert registry.active("window") is None
    assert not (tmp_path / "models" / "window" / "1").exists()


def registry_root_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}
