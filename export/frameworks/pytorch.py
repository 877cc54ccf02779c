"""PyTorch: a network from any of the three files torch saves one in, told apart by their contents.

- a torch.export program (torch.export.save, usually .pt2): any architecture, its graph and
  weights in the file; converted by torch's exporter for programs (onnxscript), which keeps the
  program's dynamic batch dimension;
- TorchScript (torch.jit.save): any architecture, its code and weights in the file; converted by
  the TorchScript exporter;
- a state_dict of the crystal network (export/network.py), saved with torch.save: weights only,
  the architecture is CrystalNet's.

A network takes [batch, 4] rows of float32 (or float64) and returns [batch, 3] probabilities.
"""

import io
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from export.classes import N_CLASSES
from export.errors import SourceModelError, first_line, shortened
from export.network import CrystalNet
from export.parity import FLOAT32, FLOAT64, Tolerance
from export.warned import kept_logs, logged_exception
from serve.contract import BATCH_DIM, INPUT_NAME, N_FEATURES, OUTPUT_NAME
from serve.settings import Limits

NAME = "pytorch"
FILES = "a PyTorch file (torch.save, torch.jit.save or torch.export.save)"
# The TorchScript exporter's opset (state_dicts and TorchScript files).
OPSET = 17
# The lowest opset torch's exporter for programs writes.
PROGRAM_OPSET = 18
# torch.save writes a zip archive (since torch 1.6), and so do torch.jit.save and
# torch.export.save; what the archive holds tells them apart.
ZIP_MAGIC = b"PK\x03\x04"
# torch.save before 1.6 wrote a pickle that starts with this magic number.
LEGACY_TORCH_SAVE = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
# A torch.export archive holds `archive_format`; a TorchScript archive holds its code.
PROGRAM_MARK = "archive_format"
TORCHSCRIPT_MARK = "/code/"
# The rows the service sends a model: one request's batch, at most MAX_ROWS (default 100,000).
MAX_ROWS = Limits.max_rows
DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
DYNAMIC_BATCH_FIX = (
    "export it with a dynamic batch: torch.export.export(network, (rows,), "
    "dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)) with 2 or more example rows"
)
# torch.export specialises a batch of 0 or 1 rows, so a dynamic batch starts at 2 (Dim.DYNAMIC,
# Dim.AUTO); the probe proves that the converted graph answers one row alone as in a batch.
LOWEST_DYNAMIC_BATCH = 2


@dataclass(frozen=True)
class Network:
    """A loaded network: `module` runs it in torch, `source` is what the ONNX exporter takes (the
    module itself, or the torch.export program)."""

    family: str
    dtype: type[np.floating]
    module: Callable[[torch.Tensor], Any]
    source: nn.Module | torch.jit.ScriptModule | torch.export.ExportedProgram

    def __call__(self, rows: torch.Tensor) -> Any:
        return self.module(rows)


def recognises(data: bytes) -> bool:
    return data.startswith(ZIP_MAGIC) or data.startswith(LEGACY_TORCH_SAVE)


def load(data: bytes) -> Network:
    """The network in the file, in eval mode, checked to take [batch, 4] and return [batch, 3]."""
    members = _members(data)
    if any(name.rpartition("/")[2] == PROGRAM_MARK for name in members):
        network = _load_program(data)
    elif any(TORCHSCRIPT_MARK in name for name in members):
        network = _load_torchscript(data)
    else:
        return _load_state_dict(data)
    _check_runs(network)
    return network


def _members(data: bytes) -> list[str]:
    """The archive's file names; none for a file that is no readable zip archive."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return []


def _load_state_dict(data: bytes) -> Network:
    """A CrystalNet with the file's state_dict, which must fit it exactly."""
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
    return Network(type(network).__name__, np.float32, network, network)


def _torch_load_failure(data: bytes, exc: Exception) -> str:
    """Why torch.load refused the file, in words instead of torch's multi-paragraph messages."""
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
        return (
            "holds Python objects, not only tensors (a whole module saved with torch.save needs "
            "its class to load, and torch.load with weights_only=True refuses it); save the "
            "network with torch.export.save or torch.jit.save, or save the crystal network's "
            "state_dict()"
        )
    if isinstance(exc, EOFError) or (
        data.startswith(ZIP_MAGIC) and not zipfile.is_zipfile(io.BytesIO(data))
    ):
        return "truncated (the archive ends early)"
    return "not a file saved with torch.save, torch.jit.save or torch.export.save"


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
            "the state_dict does not fit the crystal network: "
            + "; ".join(problems)
            + " (a network of another architecture is saved with torch.export.save or "
            "torch.jit.save)"
        )


def _load_torchscript(data: bytes) -> Network:
    try:
        with warnings.catch_warnings():
            # torch deprecates TorchScript in favour of torch.export; the files still load.
            warnings.filterwarnings("ignore", ".*torch.jit.load", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:
        raise SourceModelError(
            f"a TorchScript archive that torch {torch.__version__} cannot load: {first_line(exc)}"
        ) from None
    module.eval()
    floating = [
        tensor.dtype
        for tensor in (*module.parameters(), *module.buffers())
        if tensor.is_floating_point()
    ]
    dtype = _numpy_dtype(floating[0] if floating else torch.float32, "its parameters are")
    return Network(f"TorchScript({module.original_name})", dtype, module, module)


def _load_program(data: bytes) -> Network:
    # torch.export.load logs the cause of a failure, a traceback, and raises a vaguer error.
    with kept_logs(["torch.export"]) as records:
        try:
            with warnings.catch_warnings():
                # torch's own unpickling of the program's tree specs warns of a deprecation.
                warnings.filterwarnings("ignore", message=".*treespec", category=FutureWarning)
                program = torch.export.load(io.BytesIO(data))
        except Exception as exc:
            reason = logged_exception(records) or first_line(exc)
            raise SourceModelError(
                f"a torch.export archive that torch {torch.__version__} cannot load: "
                f"{shortened(reason)}"
            ) from None
    dtype = _program_input(program)
    return Network(f"ExportedProgram({_program_class(program)})", dtype, program.module(), program)


def _program_input(program: torch.export.ExportedProgram) -> type[np.floating]:
    """The dtype of the program's one input, which must be [batch, 4] with a dynamic batch that
    takes every request the service accepts (up to MAX_ROWS rows)."""
    names = list(program.graph_signature.user_inputs)
    values = [
        node.meta.get("val")
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in names
    ]
    if len(values) != 1 or not isinstance(values[0], torch.Tensor):
        raise SourceModelError(
            f"the program takes {len(names)} inputs ({', '.join(map(str, names))}), "
            f"expected one tensor [{BATCH_DIM}, {N_FEATURES}]"
        )
    (value,) = values
    shape = list(value.shape)
    if len(shape) != 2 or not isinstance(shape[1], int) or shape[1] != N_FEATURES:
        raise SourceModelError(
            f"the program takes input of shape {[str(dim) for dim in shape]}, "
            f"expected [{BATCH_DIM}, {N_FEATURES}]"
        )
    batch = shape[0]
    if isinstance(batch, int):
        raise SourceModelError(
            f"the program was exported for a fixed batch size ({batch}); {DYNAMIC_BATCH_FIX}"
        )
    allowed = program.range_constraints.get(batch.node.expr)
    if (
        allowed is None
        or bool(allowed.lower > LOWEST_DYNAMIC_BATCH)
        or bool(allowed.upper < MAX_ROWS)
    ):
        shown = "unknown" if allowed is None else f"{allowed.lower} to {allowed.upper}"
        raise SourceModelError(
            f"the program's batch dimension allows {shown.replace('int_oo', 'any number of')} "
            f"rows, and the service sends 1 to {MAX_ROWS} (MAX_ROWS); {DYNAMIC_BATCH_FIX}"
        )
    return _numpy_dtype(value.dtype, "the program's input is")


def _program_class(program: torch.export.ExportedProgram) -> str:
    """The class of the module the program was exported from, as torch recorded it."""
    for node in program.graph.nodes:
        for path, kind in (node.meta.get("nn_module_stack") or {}).values():
            if path == "":
                return str(kind).rpartition(".")[2]
    return "module"


def _numpy_dtype(dtype: torch.dtype, what: str) -> type[np.floating]:
    if dtype not in DTYPES:
        raise SourceModelError(
            f"{what} {str(dtype).removeprefix('torch.')}; the service sends float32 or float64 "
            "rows: convert the network with .float() before saving it"
        )
    return DTYPES[dtype]


def _check_runs(network: Network) -> None:
    """The network takes a [2, 4] batch of its dtype and returns one [2, 3] tensor."""
    rows = torch.zeros(2, N_FEATURES, dtype=_torch_dtype(network.dtype))
    try:
        with torch.no_grad():
            result = network(rows)
    except Exception as exc:
        raise SourceModelError(
            f"the network fails on a [2, {N_FEATURES}] batch: {first_line(exc)}"
        ) from None
    if not isinstance(result, torch.Tensor):
        raise SourceModelError(
            f"the network returns a {type(result).__name__}, "
            f"expected one tensor [{BATCH_DIM}, {N_CLASSES}]"
        )
    if tuple(result.shape) != (2, N_CLASSES):
        raise SourceModelError(
            f"the network returns shape {list(result.shape)} for 2 rows, expected [2, {N_CLASSES}]"
        )


def _torch_dtype(dtype: type[np.floating]) -> torch.dtype:
    return next(key for key, value in DTYPES.items() if value is dtype)


def family(network: Network) -> str:
    return network.family


def dtype(network: Network) -> type[np.floating]:
    return network.dtype


def versions(network: Network) -> dict[str, str]:
    """torch, and onnxscript where torch's exporter for programs converted the network."""
    found = {"torch": torch.__version__}
    if isinstance(network.source, torch.export.ExportedProgram):
        # Read from its metadata: torch imports onnxscript only when it converts a program.
        found["onnxscript"] = metadata.version("onnxscript")
    return found


def to_onnx(network: Network) -> onnx.ModelProto:
    try:
        if isinstance(network.source, torch.export.ExportedProgram):
            return _program_to_onnx(network.source)
        return _module_to_onnx(network.source, network.dtype)
    except Exception as exc:
        raise SourceModelError(
            f"torch {torch.__version__} cannot convert the {network.family}: {first_line(exc)}"
        ) from None


def _module_to_onnx(module: nn.Module, dtype: type[np.floating]) -> onnx.ModelProto:
    """A graph of the network's own precision from the TorchScript exporter.

    The TorchScript exporter needs no onnxscript and writes the same bytes on every run.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch announces the deprecation of this exporter (and of its internals) on every call;
        # it is chosen on purpose, and the parity gate checks what it writes.
        warnings.simplefilter("ignore", DeprecationWarning)
        # A TorchScript module has no Python signature for the exporter to read its inputs from;
        # it takes the one input it is given.
        warnings.filterwarnings("ignore", message="no signature found", category=UserWarning)
        torch.onnx.export(
            module,
            (torch.zeros(1, N_FEATURES, dtype=_torch_dtype(dtype)),),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            opset_version=OPSET,
        )
    return onnx.load_from_string(buffer.getvalue())


def _program_to_onnx(program: torch.export.ExportedProgram) -> onnx.ModelProto:
    """The graph from torch's exporter for programs, which keeps the program's symbolic batch
    (the TorchScript exporter would trace the program and freeze its batch size)."""
    # torch's exporter logs which optional libraries (torchvision) it did not find.
    with warnings.catch_warnings(), kept_logs(["torch.onnx"]):
        warnings.filterwarnings("ignore", message=".*treespec", category=FutureWarning)
        exported = torch.onnx.export(
            program,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=PROGRAM_OPSET,
            optimize=True,
            verbose=False,
        )
    return exported.model_proto


def predict(network: Network, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return network(torch.from_numpy(rows)).numpy()


def tolerance(graph: onnx.ModelProto) -> Tolerance:
    """By the graph's precision: float32 (the crystal networks measure at most 3.6e-7 within ±10
    and 1.1e-5 beyond) or float64 (the same operations as torch, in the same precision)."""
    double = graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    return FLOAT64 if double else FLOAT32
