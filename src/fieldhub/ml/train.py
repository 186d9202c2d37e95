"""Training a window model version: a small MLP with a position head and a confidence head.

The one module of fieldhub that imports torch at load time (the `train` extra); the server only
runs the exported graph (`fieldhub.ml.runtime`). `train` is deterministic for a seed: one
thread, seeded initialisation, splits and batches. Regenerate the shipped default with
`python -m fieldhub.ml.train --default src/fieldhub/ml/default_models/window/1`.

The model (docs/ml-model.md): scaled features [N, 3] -> Linear(3, 32) -> ReLU -> Linear(32, 32)
-> ReLU, then two linear heads. `position = 100 * sigmoid(head_p)`; `confidence =
sigmoid(scale * head_c + bias)`, where the head learns P(|position - label| <= 10) and
`scale`/`bias` (buffers, so they are in weights.pt and in the graph) are fitted afterwards on a
calibration split the network never trained on (Platt scaling), then lowered until every
calibration level holds on that split.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fieldhub.clock import SystemClock
from fieldhub.errors import Conflict, Invalid
from fieldhub.ml import export
from fieldhub.ml.features import FEATURES, Scaler, check
from fieldhub.ml.policy import synthetic_dataset
from fieldhub.ml.runtime import (
    EXPECTED_OUTPUTS,
    GOLDEN_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    CalibrationRow,
    FeatureEntry,
    Manifest,
    Metrics,
    Training,
    TrainingWindow,
    WindowModel,
    golden_json,
    new_session,
    read_checked,
    read_manifest,
    run_session,
    sha256_bytes,
)

HIDDEN = 32
# Split of the examples: held out for the reported metrics (never trained or calibrated on),
# calibration (Platt scaling of the confidence), the rest trains.
HELD_OUT_FRACTION = 0.2
CALIBRATION_FRACTION = 0.1
# Fewer calibration examples than this fit the two calibration numbers to noise: an incremental
# run on less keeps its parent's calibration (and trains on those examples instead).
MIN_CALIBRATION_EXAMPLES = 200
# Training from scratch needs enough examples for the scaler's percentiles and a calibration
# split of MIN_CALIBRATION_EXAMPLES.
MIN_EXAMPLES_FROM_SCRATCH = 2_000
# An incremental run needs one example to train on and one to hold out.
MIN_EXAMPLES_INCREMENTAL = 2
BATCH_SIZE = 128
# Adam's step size: 3e-3 trains the default in ~30 epochs; higher makes the confidence head
# (which chases the position head's errors) oscillate.
LEARNING_RATE = 3e-3
# The confidence's "right": within this many position points of the label.
WITHIN_PCT = 10.0
# Huber's switch from quadratic to linear, in position/100 units: an L1 loss (a median: robust to
# the labels of someone overriding the window) with a smooth minimum.
HUBER_BETA = 0.02
# The confidence loss shares the hidden layers with the position: weight it low enough not to
# pull them off the position task.
CONFIDENCE_LOSS_WEIGHT = 0.2
# The calibration table's levels (docs/ml-model.md): for each c, decisions with confidence >= c
# must be within 10 points at least c of the time.
CALIBRATION_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# After Platt scaling the bias is lowered by this step until the table holds on the calibration
# split at every level with at least CALIBRATION_MIN_ROWS decisions (fewer: too noisy to judge).
CALIBRATION_SHIFT_STEP = 0.05
CALIBRATION_MAX_SHIFT = 3.0
CALIBRATION_MIN_ROWS = 30
PLATT_ITERATIONS = 200

# The shipped default (src/fieldhub/ml/default_models/window/1): ~12 s on one core.
DEFAULT_NAME = "window"
DEFAULT_VERSION = 1
DEFAULT_SEED = 17
DEFAULT_EXAMPLES = 20_000
DEFAULT_EPOCHS = 60

# Raw inputs of golden.json: the features' range ends, the comfort band's corners, loud and
# humid cases and a few ordinary readings.
GOLDEN_INPUTS: tuple[tuple[float, float, float], ...] = (
    (-50.0, 0.0, -120.0),
    (60.0, 100.0, 0.0),
    (-50.0, 100.0, 0.0),
    (60.0, 0.0, -120.0),
    (10.0, 50.0, -30.0),
    (19.5, 70.0, -40.0),
    (20.0, 50.0, -30.0),
    (22.0, 80.0, -30.0),
    (24.0, 50.0, -30.0),
    (26.0, 50.0, -30.0),
    (27.0, 65.0, -25.0),
    (28.0, 50.0, -40.0),
    (30.0, 50.0, -10.0),
    (32.0, 40.0, -35.0),
    (35.0, 90.0, -60.0),
    (21.5, 45.2, -33.3),
)

Example = tuple[float, float, float, float]


class WindowNet(nn.Module):
    """The MLP: scaled features [N, 3] -> (position [N, 1] 0..100, confidence [N, 1] 0..1)."""

    calibration_scale: torch.Tensor
    calibration_bias: torch.Tensor

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(len(FEATURES), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.position_head = nn.Linear(hidden, 1)
        self.confidence_head = nn.Linear(hidden, 1)
        # Platt scaling of the confidence logit, fitted after training (buffers: saved in the
        # state dict and exported as constants, never touched by the optimiser).
        self.register_buffer("calibration_scale", torch.ones(1))
        self.register_buffer("calibration_bias", torch.zeros(1))

    def logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' raw outputs: position logit, uncalibrated confidence logit."""
        hidden = self.body(features)
        return self.position_head(hidden), self.confidence_head(hidden)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(position 0..100, calibrated confidence 0..1)."""
        position_logit, confidence_logit = self.logits(features)
        position = 100.0 * torch.sigmoid(position_logit)
        calibrated = confidence_logit * self.calibration_scale + self.calibration_bias
        return position, torch.sigmoid(calibrated)


def load_weights(version_dir: Path) -> tuple[WindowNet, Manifest]:
    """A version's torch model from its checked weights.pt, with its manifest."""
    manifest = read_manifest(version_dir)
    data = read_checked(version_dir, manifest, WEIGHTS_FILE)
    # weights_only: a state dict of tensors, never arbitrary pickled objects.
    state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    model = WindowNet()
    model.load_state_dict(state)
    model.eval()
    return model, manifest


def calibration_table(
    confidences: Sequence[float], within: Sequence[bool], levels: Sequence[float]
) -> list[CalibrationRow]:
    """For each level c: how many decisions have confidence >= c, and which fraction of them
    was within 10 points (None for none)."""
    rows = []
    for level in levels:
        hits = [
            ok for confidence, ok in zip(confidences, within, strict=True) if confidence >= level
        ]
        fraction = sum(hits) / len(hits) if hits else None
        rows.append(CalibrationRow(c=level, n=len(hits), within_10=fraction))
    return rows


def table_holds(rows: Sequence[CalibrationRow], *, min_rows: int) -> bool:
    """Every level with at least `min_rows` decisions is within 10 points at least c of the time."""
    return all(row.within_10 is None or row.n < min_rows or row.within_10 >= row.c for row in rows)


def _validate_examples(examples: Sequence[Example]) -> None:
    for index, example in enumerate(examples):
        if len(example) != len(FEATURES) + 1:
            raise Invalid(
                f"example {index} must be (temperature, humidity, sound_volume, label)",
                code="invalid_training_data",
            )
        reason = check(dict(zip(FEATURES, example[:3], strict=True)))
        if reason is not None:
            raise Invalid(f"example {index}: {reason}", code="invalid_training_data")
        label = example[3]
        if not (isinstance(label, int | float) and 0.0 <= label <= 100.0):
            raise Invalid(
                f"example {index}: label {label!r} is not a position 0..100",
                code="invalid_training_data",
            )


def _fit_platt(logits: torch.Tensor, within: torch.Tensor) -> tuple[float, float]:
    """Scale and bias minimising the log loss of sigmoid(scale * logit + bias) on `within`."""
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [params], lr=1.0, max_iter=PLATT_ITERATIONS, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits * params[0] + params[1], within)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    scale, bias = params.detach().tolist()
    return float(scale), float(bias)


def _calibrate(model: WindowNet, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Platt-scales the confidence on a calibration split, then lowers the bias until the
    calibration table holds on that split."""
    with torch.no_grad():
        position_logit, confidence_logit = model.logits(features)
        position = 100.0 * torch.sigmoid(position_logit)
        within = ((position - labels).abs() <= WITHIN_PCT).float()
    scale, bias = _fit_platt(confidence_logit.detach(), within)
    hits = [bool(value) for value in within.reshape(-1).tolist()]
    shift = 0.0
    while True:
        calibrated = torch.sigmoid(confidence_logit * scale + bias - shift).reshape(-1).tolist()
        table = calibration_table(calibrated, hits, CALIBRATION_LEVELS)
        if table_holds(table, min_rows=CALIBRATION_MIN_ROWS) or shift >= CALIBRATION_MAX_SHIFT:
            break
        shift += CALIBRATION_SHIFT_STEP
    model.calibration_scale.fill_(scale)
    model.calibration_bias.fill_(bias - shift)


def _fit(
    model: WindowNet,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    generator: torch.Generator,
) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    count = features.shape[0]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            x, y = features[batch], labels[batch]
            position_logit, confidence_logit = model.logits(x)
            position = 100.0 * torch.sigmoid(position_logit)
            position_loss = F.smooth_l1_loss(position / 100.0, y / 100.0, beta=HUBER_BETA)
            within = ((position.detach() - y).abs() <= WITHIN_PCT).float()
            confidence_loss = F.binary_cross_entropy_with_logits(confidence_logit, within)
            loss = position_loss + CONFIDENCE_LOSS_WEIGHT * confidence_loss
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
    model.eval()


def _tensors(examples: Sequence[Example], scaler: Scaler) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.tensor(
        [scaler.scale_row(example[:3]) for example in examples], dtype=torch.float32
    ).reshape(-1, len(FEATURES))
    labels = torch.tensor([example[3] for example in examples], dtype=torch.float32).reshape(-1, 1)
    return features, labels


def train(
    examples: Sequence[Example],
    *,
    seed: int,
    epochs: int,
    parent_dir: Path | None,
    out_dir: Path,
    name: str = DEFAULT_NAME,
    version: int,
    source: Literal["synthetic", "history"],
    window: tuple[int, int] | None,
    created_us: int | None = None,
) -> Manifest:
    """Trains version `version` of model `name` on `examples` ((t, h, s, label) raw) and writes
    its version directory `out_dir` (whose last part must be the version number, e.g.
    `<root>/window/3`; it must not exist yet). Returns the manifest written.

    With `parent_dir` (a version directory) training starts from the parent's weights.pt and
    keeps its scaler, so the features mean what they meant; the calibration is refitted only
    when the calibration split has MIN_CALIBRATION_EXAMPLES, else the parent's is kept.

    The directory is built beside `out_dir` and renamed into place only after the ONNX graph
    agreed with torch (`export.check_agreement`) and reloaded with its golden outputs: a
    version that fails is never written. Invalid names what is wrong with the arguments or
    data; Conflict when `out_dir` exists."""
    if source not in ("synthetic", "history"):
        raise Invalid(f"source must be synthetic or history, got {source!r}", code="invalid_source")
    if epochs < 1:
        raise Invalid(f"epochs must be >= 1, got {epochs}", code="invalid_epochs")
    if out_dir.name != str(version):
        raise Invalid(
            f"out_dir {out_dir} must be the version directory, ending in /{version}",
            code="invalid_out_dir",
        )
    if out_dir.exists():
        raise Conflict(f"{out_dir} exists: versions are never overwritten", code="version_exists")
    if window is not None and not window[0] < window[1]:
        raise Invalid(
            f"window {window} must be (start_us, end_us), start < end", code="invalid_window"
        )
    rows = list(examples)
    _validate_examples(rows)
    parent: Manifest | None = None
    if parent_dir is not None:
        parent = read_manifest(parent_dir)
        if parent.name != name or parent.version >= version:
            raise Invalid(
                f"parent {parent.name} v{parent.version} cannot precede {name} v{version}",
                code="invalid_parent",
            )
        if len(rows) < MIN_EXAMPLES_INCREMENTAL:
            raise Invalid(
                f"{len(rows)} examples: incremental training needs {MIN_EXAMPLES_INCREMENTAL}",
                code="invalid_training_data",
            )
    elif len(rows) < MIN_EXAMPLES_FROM_SCRATCH:
        raise Invalid(
            f"{len(rows)} examples: training from scratch needs {MIN_EXAMPLES_FROM_SCRATCH}",
            code="invalid_training_data",
        )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        held_count = max(1, round(HELD_OUT_FRACTION * len(rows)))
        calibration_count = round(CALIBRATION_FRACTION * len(rows))
        if calibration_count < MIN_CALIBRATION_EXAMPLES:
            calibration_count = 0
        held = [rows[i] for i in order[:held_count]]
        calibration = [rows[i] for i in order[held_count : held_count + calibration_count]]
        training = [rows[i] for i in order[held_count + calibration_count :]]

        if parent is not None and parent_dir is not None:
            model, _ = load_weights(parent_dir)
            scaler = parent.scaler
        else:
            model = WindowNet()  # seeded above: the same initial weights for a seed
            scaler = Scaler.fit([example[:3] for example in training])
        train_x, train_y = _tensors(training, scaler)
        _fit(model, train_x, train_y, epochs=epochs, generator=generator)
        if calibration:
            _calibrate(model, *_tensors(calibration, scaler))

        onnx_model = export.to_onnx(model)
        export.check_agreement(model, onnx_model)
        weights = _state_bytes(model)
        session = new_session(onnx_model, where="the exported graph")
        golden_position, golden_confidence = run_session(
            session, [scaler.scale_row(row) for row in GOLDEN_INPUTS]
        )
        golden = golden_json(GOLDEN_INPUTS, golden_position, golden_confidence)
        held_position, held_confidence = run_session(
            session, [scaler.scale_row(example[:3]) for example in held]
        )
    finally:
        torch.set_num_threads(threads)

    errors = [abs(p - example[3]) for p, example in zip(held_position, held, strict=True)]
    hits = [error <= WITHIN_PCT for error in errors]
    manifest = Manifest(
        name=name,
        version=version,
        parent=parent.version if parent is not None else None,
        created_us=created_us if created_us is not None else SystemClock().now_us(),
        format="onnx",
        features=[FeatureEntry(**entry) for entry in scaler.to_json()],
        outputs=dict(EXPECTED_OUTPUTS),
        training=Training(
            source=source,
            seed=seed,
            examples=len(rows),
            held_out=len(held),
            epochs=epochs,
            window=TrainingWindow(start_us=window[0], end_us=window[1]) if window else None,
            torch=str(torch.__version__),
        ),
        metrics=Metrics(
            mae=sum(errors) / len(errors),
            within_10=sum(hits) / len(hits),
            calibration=calibration_table(held_confidence, hits, CALIBRATION_LEVELS),
        ),
        files={
            MODEL_FILE: sha256_bytes(onnx_model),
            WEIGHTS_FILE: sha256_bytes(weights),
            GOLDEN_FILE: sha256_bytes(golden),
        },
    )
    _write_version(
        out_dir, manifest, {MODEL_FILE: onnx_model, WEIGHTS_FILE: weights, GOLDEN_FILE: golden}
    )
    return manifest


def _state_bytes(model: WindowNet) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _write_version(out_dir: Path, manifest: Manifest, files: dict[str, bytes]) -> None:
    """Writes the files into a temporary sibling, reloads it as the server would (checksums,
    golden outputs) and renames it to `out_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        for file, data in files.items():
            (staging / file).write_bytes(data)
        (staging / MANIFEST_FILE).write_bytes(manifest.to_json_bytes())
        WindowModel.load(staging).check_golden()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def train_default(out_dir: Path, *, created_us: int | None = None) -> Manifest:
    """The shipped default: DEFAULT_EXAMPLES synthetic examples, DEFAULT_SEED, DEFAULT_EPOCHS."""
    return train(
        synthetic_dataset(DEFAULT_EXAMPLES, DEFAULT_SEED),
        seed=DEFAULT_SEED,
        epochs=DEFAULT_EPOCHS,
        parent_dir=None,
        out_dir=out_dir,
        name=DEFAULT_NAME,
        version=DEFAULT_VERSION,
        source="synthetic",
        window=None,
        created_us=created_us,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fieldhub.ml.train --default OUT_DIR`: writes the shipped default version."""
    parser = argparse.ArgumentParser(prog="python -m fieldhub.ml.train", description=main.__doc__)
    parser.add_argument("--default", type=Path, required=True, metavar="OUT_DIR")
    args = parser.parse_args(argv)
    manifest = train_default(args.default)
    json.dump(manifest.metrics.model_dump(mode="json"), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
