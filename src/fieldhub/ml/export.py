"""A trained torch model -> an ONNX graph, and the check that both compute the same thing.

torch is imported inside the functions only: `fieldhub.ml.train` is the one module that imports
it at load time, so importing this module costs a server nothing (docs/ml-model.md).
"""

from __future__ import annotations

import itertools
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from fieldhub.errors import Invalid
from fieldhub.ml.features import FEATURES
from fieldhub.ml.runtime import (
    CONFIDENCE_OUTPUT,
    INPUT_NAME,
    POSITION_OUTPUT,
    new_session,
    run_session,
)

if TYPE_CHECKING:
    import torch

# ONNX opset 17 (2022): every onnxruntime of the last years runs it, and the graph needs only
# Gemm, Relu, Sigmoid, Mul and Add.
OPSET = 17
# The agreement check: this many uniform random scaled inputs (plus the cube's 8 corners), and
# the largest gap allowed between torch's and ONNX Runtime's outputs, in output units.
AGREEMENT_SAMPLES = 1_000
AGREEMENT_TOLERANCE = 1e-4
AGREEMENT_SEED = 20_240_517


def to_onnx(model: torch.nn.Module) -> bytes:
    """The model (eval mode, `forward(features) -> (position, confidence)`) as a serialized ONNX
    graph with a dynamic batch dimension, weights inside the one file."""
    import torch

    model.eval()
    example = torch.zeros(1, len(FEATURES), dtype=torch.float32)
    with tempfile.TemporaryDirectory() as scratch, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter: the dynamo one needs onnxscript and writes the weights to a
        # second file unless external_data=False; this graph is a few Gemm nodes either way.
        # torch 2.13 still ships it and warns that it is deprecated (silenced here: known, and
        # check_agreement proves each export). When it goes: dynamo=True, external_data=False
        # and onnxscript in the train extra.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"fieldhub\.ml")
        # The exporter writes to a path (the dynamo one to a path only).
        path = Path(scratch) / "model.onnx"
        torch.onnx.export(
            model,
            (example,),
            path,
            input_names=[INPUT_NAME],
            output_names=[POSITION_OUTPUT, CONFIDENCE_OUTPUT],
            dynamic_axes={
                INPUT_NAME: {0: "n"},
                POSITION_OUTPUT: {0: "n"},
                CONFIDENCE_OUTPUT: {0: "n"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
        return path.read_bytes()


def check_agreement(
    model: torch.nn.Module,
    onnx_model: bytes,
    *,
    samples: int = AGREEMENT_SAMPLES,
    seed: int = AGREEMENT_SEED,
    tolerance: float = AGREEMENT_TOLERANCE,
) -> float:
    """Runs `samples` random scaled inputs and the unit cube's corners through torch and ONNX
    Runtime and returns the largest gap between their outputs; Invalid
    (`model_export_mismatch`) when it is above `tolerance`."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    random_rows = torch.rand(samples, len(FEATURES), generator=generator, dtype=torch.float32)
    corners = torch.tensor(
        list(itertools.product((0.0, 1.0), repeat=len(FEATURES))), dtype=torch.float32
    )
    inputs = torch.cat([random_rows, corners])
    model.eval()
    with torch.no_grad():
        torch_position, torch_confidence = model(inputs)
    session = new_session(onnx_model, where="the exported graph")
    onnx_position, onnx_confidence = run_session(session, inputs.tolist())
    worst = 0.0
    for expected, got in (
        (torch_position.reshape(-1).tolist(), onnx_position),
        (torch_confidence.reshape(-1).tolist(), onnx_confidence),
    ):
        for a, b in zip(expected, got, strict=True):
            gap = abs(a - b)
            if not gap <= tolerance:  # also catches NaN
                raise Invalid(
                    f"ONNX Runtime gives {b} where torch gives {a} (tolerance {tolerance})",
                    code="model_export_mismatch",
                )
            worst = max(worst, gap)
    return worst
