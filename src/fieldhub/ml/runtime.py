"""Serving a model version: its manifest, its checked files, and predictions with ONNX Runtime.

No torch here: the server runs the exported ONNX graph (onnxruntime, ~tens of MB) and never
loads torch (~1 GB installed, docs/ml-model.md). A version directory holds:

  model.onnx     the graph: input `features` float32 [N, 3], already scaled 0..1 in FEATURES
                 order; outputs `position` float32 [N, 1] in 0..100 and `confidence` [N, 1] in 0..1
  weights.pt     the torch state dict, the starting point of incremental training
  golden.json    ~16 raw inputs and the outputs ONNX Runtime gave for them when trained
  manifest.json  what the version is (schema below, `Manifest`), with every file's sha256

`WindowModel.load` refuses a directory whose files do not match the manifest's checksums, so a
model that runs is exactly the model that was trained, validated and recorded.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]  # 1.32 ships no py.typed
from onnxruntime.capi.onnxruntime_pybind11_state import (  # type: ignore[import-untyped]
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    NotImplemented,
    RuntimeException,
)
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from fieldhub.errors import Invalid, NotFound
from fieldhub.ml.features import FEATURES, Scaler, check

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.pt"
GOLDEN_FILE = "golden.json"
MANIFEST_FILE = "manifest.json"
# The files a manifest's `files` lists (the manifest itself cannot hold its own checksum).
CHECKED_FILES = (MODEL_FILE, WEIGHTS_FILE, GOLDEN_FILE)
INPUT_NAME = "features"
POSITION_OUTPUT = "position"
CONFIDENCE_OUTPUT = "confidence"
# How far a reloaded model's outputs may drift from its golden ones, in output units (position
# points and confidence). float32 rounding of this graph is ~1e-5 at 100; a different onnxruntime
# build or CPU may reorder sums. A larger gap means a different model, not rounding.
GOLDEN_TOLERANCE = 1e-4
# What onnxruntime raises for bytes it cannot load as a graph (each a plain Exception subclass).
ORT_LOAD_ERRORS = (
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    NotImplemented,
    RuntimeException,
)
# A model name is a directory name in the registry: keep it to a safe alphabet.
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Strict(BaseModel):
    """Every manifest part: unknown keys refused, no string-to-number coercion, frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FeatureEntry(_Strict):
    """One input as the manifest records it: its spec and the scaler's percentiles."""

    name: str
    unit: str
    low: Finite
    high: Finite
    p10: Finite
    p90: Finite


class OutputRange(_Strict):
    """The range an output is bounded to inside the graph."""

    low: Finite
    high: Finite


class TrainingWindow(_Strict):
    """The stored history a version was trained on, epoch microseconds, end exclusive."""

    start_us: StrictInt
    end_us: StrictInt


class Training(_Strict):
    """How a version was trained."""

    source: Literal["synthetic", "history"]
    seed: StrictInt
    examples: Annotated[StrictInt, Field(ge=0)]
    held_out: Annotated[StrictInt, Field(ge=0)]
    epochs: Annotated[StrictInt, Field(ge=0)]
    window: TrainingWindow | None
    torch: str


class CalibrationRow(_Strict):
    """Of the held-out decisions with confidence >= `c`, how many (`n`) and which fraction
    landed within 10 points of the label (None when `n` is 0)."""

    c: Fraction
    n: Annotated[StrictInt, Field(ge=0)]
    within_10: Fraction | None


class Metrics(_Strict):
    """Held-out quality: mean absolute error in position points, the fraction within 10 points,
    and the confidence's calibration table."""

    mae: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    within_10: Fraction
    calibration: list[CalibrationRow]


EXPECTED_OUTPUTS = {
    POSITION_OUTPUT: OutputRange(low=0.0, high=100.0),
    CONFIDENCE_OUTPUT: OutputRange(low=0.0, high=1.0),
}


class Manifest(_Strict):
    """A version's `manifest.json` (docs/ml-model.md has an example)."""

    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
    version: Annotated[StrictInt, Field(ge=1)]
    parent: Annotated[StrictInt, Field(ge=1)] | None
    created_us: StrictInt
    format: Literal["onnx"]
    features: list[FeatureEntry]
    outputs: dict[str, OutputRange]
    training: Training
    metrics: Metrics
    files: dict[str, Sha256]

    @field_validator("features")
    @classmethod
    def _features_match_spec(cls, value: list[FeatureEntry]) -> list[FeatureEntry]:
        try:
            Scaler.from_json([entry.model_dump() for entry in value])
        except Invalid as error:
            raise ValueError(error.message) from None
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs_bounded(cls, value: dict[str, OutputRange]) -> dict[str, OutputRange]:
        if value != EXPECTED_OUTPUTS:
            raise ValueError("outputs must be position 0..100 and confidence 0..1")
        return value

    @field_validator("files")
    @classmethod
    def _files_listed(cls, value: dict[str, str]) -> dict[str, str]:
        if set(value) != set(CHECKED_FILES):
            raise ValueError(f"files must list exactly {list(CHECKED_FILES)}")
        return value

    @property
    def scaler(self) -> Scaler:
        """The feature scaling this version was trained with."""
        return Scaler.from_json([entry.model_dump() for entry in self.features])

    def to_json_bytes(self) -> bytes:
        """The manifest as written to `manifest.json`: indented, keys in schema order."""
        return (json.dumps(self.model_dump(mode="json"), indent=2) + "\n").encode()


def parse_manifest(data: bytes, *, where: str = MANIFEST_FILE) -> Manifest:
    """A manifest from its JSON bytes; Invalid (`invalid_model_manifest`) naming the field."""
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise Invalid(
            f"{where}: {location}: {first['msg']}", code="invalid_model_manifest"
        ) from None


def read_manifest(version_dir: Path) -> Manifest:
    """The manifest of a version directory; NotFound when it has none."""
    path = version_dir / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no model version at {version_dir} ({MANIFEST_FILE} missing)") from None
    return parse_manifest(data, where=str(path))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def read_checked(version_dir: Path, manifest: Manifest, file: str) -> bytes:
    """The bytes of one of the manifest's files, refused (`model_checksum_mismatch`) unless
    their sha256 is the manifest's. Read once: the bytes checked are the bytes used."""
    path = version_dir / file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Invalid(f"{path} is missing", code="model_file_missing") from None
    actual = sha256_bytes(data)
    if actual != manifest.files[file]:
        raise Invalid(
            f"{path}: sha256 {actual} is not the manifest's {manifest.files[file]}",
            code="model_checksum_mismatch",
        )
    return data


def verify_files(version_dir: Path, manifest: Manifest) -> None:
    """Every file the manifest lists has the manifest's sha256 (Invalid naming the first that
    does not)."""
    for file in CHECKED_FILES:
        read_checked(version_dir, manifest, file)


class Golden(_Strict):
    """`golden.json`: raw inputs and the outputs ONNX Runtime gave for them at training."""

    inputs: list[Annotated[list[Finite], Field(min_length=3, max_length=3)]]
    position: list[Finite]
    confidence: list[Finite]


def parse_golden(data: bytes, *, where: str = GOLDEN_FILE) -> Golden:
    """golden.json's content; Invalid (`invalid_model_golden`) when malformed."""
    try:
        golden = Golden.model_validate_json(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise Invalid(f"{where}: {location}: {first['msg']}", code="invalid_model_golden") from None
    if not golden.inputs or not (
        len(golden.inputs) == len(golden.position) == len(golden.confidence)
    ):
        raise Invalid(
            f"{where}: inputs, position and confidence must be equally long and not empty",
            code="invalid_model_golden",
        )
    return golden


def session_options() -> ort.SessionOptions:
    """One thread, sequential: a prediction is ~16 µs of graph work, and fieldhub's ingest and API
    share the machine's cores; a thread pool would only add wake-ups and contention."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Warnings only: onnxruntime's info logs go to stderr, past fieldhub's logging.
    options.log_severity_level = 2
    return options


def new_session(model: bytes, *, where: str) -> ort.InferenceSession:
    """An ONNX Runtime session for a serialized model whose signature is the window model's;
    Invalid (`model_load_failed`, `model_signature_mismatch`) otherwise."""
    try:
        session = ort.InferenceSession(
            model, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
    except ORT_LOAD_ERRORS as error:
        raise Invalid(
            f"{where}: ONNX Runtime cannot load it: {error}", code="model_load_failed"
        ) from None
    inputs = [(arg.name, arg.shape) for arg in session.get_inputs()]
    outputs = sorted(arg.name for arg in session.get_outputs())
    if (
        len(inputs) != 1
        or inputs[0][0] != INPUT_NAME
        or len(inputs[0][1]) != 2
        or inputs[0][1][1] != len(FEATURES)
        or outputs != sorted((POSITION_OUTPUT, CONFIDENCE_OUTPUT))
    ):
        raise Invalid(
            f"{where}: the graph takes {inputs} and gives {outputs}, not "
            f"{INPUT_NAME} [N, {len(FEATURES)}] -> {POSITION_OUTPUT}, {CONFIDENCE_OUTPUT}",
            code="model_signature_mismatch",
        )
    return session


def run_session(
    session: ort.InferenceSession, scaled: Sequence[Sequence[float]]
) -> tuple[list[float], list[float]]:
    """Positions and confidences for rows already scaled 0..1."""
    matrix = np.asarray(scaled, dtype=np.float32).reshape(-1, len(FEATURES))
    position, confidence = session.run([POSITION_OUTPUT, CONFIDENCE_OUTPUT], {INPUT_NAME: matrix})
    return (
        [float(value) for value in np.asarray(position).reshape(-1)],
        [float(value) for value in np.asarray(confidence).reshape(-1)],
    )


class WindowModel:
    """One loaded, checked version: `predict` raw readings -> (position, confidence)."""

    def __init__(self, *, version_dir: Path, manifest: Manifest, session: ort.InferenceSession):
        self.version_dir = version_dir
        self.manifest = manifest
        self.scaler = manifest.scaler
        self._session = session
        self._outputs = [POSITION_OUTPUT, CONFIDENCE_OUTPUT]

    @classmethod
    def load(cls, version_dir: Path) -> WindowModel:
        """Reads the manifest, checks every file's sha256 and opens the graph. NotFound without
        a manifest; Invalid (`invalid_model_manifest`, `model_file_missing`,
        `model_checksum_mismatch`, `model_load_failed`, `model_signature_mismatch`) otherwise."""
        manifest = read_manifest(version_dir)
        for file in CHECKED_FILES:
            if file != MODEL_FILE:
                read_checked(version_dir, manifest, file)
        model = read_checked(version_dir, manifest, MODEL_FILE)
        session = new_session(model, where=str(version_dir / MODEL_FILE))
        return cls(version_dir=version_dir, manifest=manifest, session=session)

    @property
    def version(self) -> int:
        """The manifest's version number."""
        return self.manifest.version

    def predict(self, values: Mapping[str, float]) -> tuple[float, float]:
        """Raw readings by feature name -> (position 0..100, confidence 0..1). Invalid
        (`invalid_model_input`, the message holds `features.check`'s reason) when a reading is
        missing, not finite or out of its range."""
        reason = check(values)
        if reason is not None:
            raise Invalid(f"model input refused: {reason}", code="invalid_model_input")
        row = np.array([self.scaler.scale(values)], dtype=np.float32)
        position, confidence = self._session.run(self._outputs, {INPUT_NAME: row})
        return float(position[0, 0]), float(confidence[0, 0])

    def predict_many(self, rows: Sequence[Mapping[str, float]]) -> list[tuple[float, float]]:
        """`predict` for many rows in one graph run (Invalid naming the first bad row)."""
        if not rows:
            return []
        for index, values in enumerate(rows):
            reason = check(values)
            if reason is not None:
                raise Invalid(
                    f"model input refused at row {index}: {reason}", code="invalid_model_input"
                )
        positions, confidences = run_session(
            self._session, [self.scaler.scale(values) for values in rows]
        )
        return list(zip(positions, confidences, strict=True))

    def run_scaled(self, scaled: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
        """The graph on rows already scaled 0..1 (no range checks): positions, confidences."""
        return run_session(self._session, scaled)

    def check_golden(self) -> float:
        """Runs golden.json's inputs and returns the largest deviation from its outputs; Invalid
        (`model_golden_mismatch`) above `GOLDEN_TOLERANCE`."""
        data = read_checked(self.version_dir, self.manifest, GOLDEN_FILE)
        golden = parse_golden(data, where=str(self.version_dir / GOLDEN_FILE))
        positions, confidences = self.run_scaled(
            [self.scaler.scale_row(row) for row in golden.inputs]
        )
        worst = 0.0
        pairs = zip(positions + confidences, golden.position + golden.confidence, strict=True)
        for got, expected in pairs:
            gap = abs(got - expected)
            if not math.isfinite(got) or gap > GOLDEN_TOLERANCE:
                raise Invalid(
                    f"{self.version_dir}: output {got} where golden.json has {expected} "
                    f"(tolerance {GOLDEN_TOLERANCE})",
                    code="model_golden_mismatch",
                )
            worst = max(worst, gap)
        return worst


def golden_json(
    inputs: Sequence[Sequence[float]], positions: Sequence[float], confidences: Sequence[float]
) -> bytes:
    """golden.json's bytes for raw inputs and the outputs ONNX Runtime gave."""
    document: dict[str, Any] = {
        "inputs": [[float(value) for value in row] for row in inputs],
        "position": [float(value) for value in positions],
        "confidence": [float(value) for value in confidences],
    }
    return (json.dumps(document, indent=1) + "\n").encode()
