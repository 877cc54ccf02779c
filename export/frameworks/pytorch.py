"""PyTorch: a state_dict of the crystal network (export/network.py), saved with torch.save."""

import io
import math
import pickle
import warnings
import zipfile
from typing import Any

import numpy as np
import onnx
import torch

from export.errors import SourceModelError
from export.frameworks.base import Framework
from export.network import CrystalNet
from export.parity import Band, Tolerance
from serve.contract import BATCH_DIM, INPUT_NAME, N_FEATURES, OUTPUT_NAME

NAME = "pytorch"
OPSET = 17
# torch.save writes a zip archive (since torch 1.6).
ZIP_MAGIC = b"PK\x03\x04"
# float32: rounding error grows with the size of the inputs, hence a looser band beyond ±10.
FLOAT32 = Tolerance((Band("_within_10", 10.0, 1e-6), Band("_beyond_10", math.inf, 1e-4)))


def recognises(data: bytes) -> bool:
    return data.startswith(ZIP_MAGIC)


def load(data: bytes) -> CrystalNet:
    """A CrystalNet in eval mode with the file's state_dict, which must fit it exactly."""
    try:
        with warnings.catch_warnings():
            # Any pickle that is not torch's own protocol warns first; the error below says more.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        raise SourceModelError(_torch_load_failure(data, exc)) from None
    _check_state_dict(state)
    network = CrystalNet()
    network.load_state_dict(state, strict=True)
    network.eval()
    return network


def _torch_load_failure(data: bytes, exc: Exception) -> str:
    """Why torch.load refused the file, in words instead of torch's multi-paragraph messages."""
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
        return (
            "holds Python objects, not only tensors (torch.load with weights_only=True refuses "
            "them); save the network's state_dict() instead"
        )
    if isinstance(exc, EOFError) or (
        data.startswith(ZIP_MAGIC) and not zipfile.is_zipfile(io.BytesIO(data))
    ):
        return "truncated (the archive ends early)"
    return "not a file saved with torch.save"


def _check_state_dict(state: object) -> None:
    """Name every missing, extra and mis-shaped parameter in one line."""
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise SourceModelError(
            f"holds a {type(state).__name__}, "
            "not a state_dict (a mapping of parameter names to tensors)"
        )
    expected = {name: tuple(tensor.shape) for name, tensor in CrystalNet().state_dict().items()}
    problems = [f"missing {name}" for name in expected if name not in state]
    problems += [f"unexpected {name}" for name in state if name not in expected]
    problems += [
        f"{name} has shape {list(state[name].shape)}, expected {list(shape)}"
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != shape
    ]
    if problems:
        raise SourceModelError(
            "the state_dict does not fit the crystal network: " + "; ".join(problems)
        )


def family(model: Any) -> str:
    return type(model).__name__


def to_onnx(model: CrystalNet) -> onnx.ModelProto:
    """A float32 graph (the network's own precision) from the TorchScript exporter.

    The TorchScript exporter needs no onnxscript and writes the same bytes on every run.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch announces the deprecation of this exporter (and of its internals) on every call;
        # it is chosen on purpose, and the parity gate checks what it writes.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, N_FEATURES),),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            opset_version=OPSET,
        )
    return onnx.load_from_string(buffer.getvalue())


def predict(model: CrystalNet, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(rows)).numpy()


def tolerance(graph: onnx.ModelProto) -> Tolerance:
    return FLOAT32


FRAMEWORK = Framework(
    name=NAME,
    dtype=np.float32,
    versions={"torch": torch.__version__},
    recognises=recognises,
    load=load,
    family=family,
    to_onnx=to_onnx,
    predict=predict,
    tolerance=tolerance,
)
