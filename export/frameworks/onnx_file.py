"""ONNX: a graph converted elsewhere (by the team's own tools, or from a framework the export does
not read), taken as it is and brought to the service's contract.

The file must pass onnx.checker and load in onnxruntime; it must take one input [batch, 4] of
float32 or float64 and give [batch, 3] probabilities, as an output named `probabilities` or as
its only float output of that shape. The export renames the input and that output to the
contract's names and drops the other outputs. With no framework to compare it with, its parity is
proved against the graph itself unless a reference is given (export/reference.py).
"""

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from export.classes import N_CLASSES, class_problem
from export.errors import SourceModelError, first_line
from export.frameworks import sklearn as sklearn_framework
from export.parity import FLOAT32, Tolerance
from serve.contract import BATCH_DIM, INPUT_NAME, N_FEATURES, OUTPUT_NAME

NAME = "onnx"
FILES = "an ONNX graph"
# The original model is not here: `predict` runs the graph as given (see Framework.runs_original).
RUNS_ORIGINAL = False
DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
# ai.onnx.ml classifiers (and ZipMap) name their classes in one of these attributes.
CLASS_LABELS = ("classlabels_strings", "classlabels_int64s")


@dataclass(frozen=True)
class Graph:
    """A ready-made graph as given, the names of its input and of its probabilities output, and
    an onnxruntime session that runs it unchanged (the reference for parity against itself)."""

    model: onnx.ModelProto
    input_name: str
    output_name: str
    dtype: type[np.floating]
    session: ort.InferenceSession


def recognises(data: bytes) -> bool:
    """An ONNX ModelProto: protobuf that parses as one, with a graph and an IR version."""
    try:
        model = onnx.load_from_string(data)
    except Exception:
        return False
    return model.ir_version > 0 and model.HasField("graph") and len(model.graph.node) > 0


def load(data: bytes) -> Graph:
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError):
        raise SourceModelError("not an ONNX file (it does not parse as an ONNX model)") from None
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer):
        raise SourceModelError(
            "keeps its weights in external data files; save it as one file "
            "(onnx.save_model(model, path, save_as_external_data=False))"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise SourceModelError(f"onnx.checker refuses it: {first_line(exc)}") from None
    input_name, dtype = _check_input(model.graph)
    output_name = _pick_output(model.graph)
    _check_class_labels(model.graph)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures raise, with their message; nothing to print
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise SourceModelError(
            f"onnxruntime {ort.__version__} cannot load it: {first_line(exc)}"
        ) from None
    return Graph(model, input_name, output_name, dtype, session)


def _check_input(graph: onnx.GraphProto) -> tuple[str, type[np.floating]]:
    """The one input (initializers that old files list as inputs aside): [batch, 4], float32 or
    float64, with a batch dimension of any size."""
    initialized = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initialized]
    if len(inputs) != 1:
        raise SourceModelError(
            f"has inputs {[value.name for value in inputs]}, "
            f"expected one input [{BATCH_DIM}, {N_FEATURES}]"
        )
    (value,) = inputs
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type not in DTYPES:
        raise SourceModelError(
            f"its input {value.name} is {_describe(value)}, expected float or double "
            f"[{BATCH_DIM}, {N_FEATURES}]"
        )
    dims = tensor.shape.dim
    if len(dims) != 2 or dims[1].dim_value != N_FEATURES:
        raise SourceModelError(
            f"its input {value.name} is {_describe(value)}, expected [{BATCH_DIM}, {N_FEATURES}]"
        )
    if dims[0].dim_value:
        raise SourceModelError(
            f"its input {value.name} has a fixed batch size ({dims[0].dim_value}); convert it "
            "with a dynamic batch dimension (a name instead of a number)"
        )
    _check_free(graph, value.name, INPUT_NAME)
    return value.name, DTYPES[tensor.elem_type]


def _pick_output(graph: onnx.GraphProto) -> str:
    """The output named `probabilities`, or else the only float output [batch, 3]."""
    named = [value for value in graph.output if value.name == OUTPUT_NAME]
    candidates = named or [value for value in graph.output if _is_probabilities(value)]
    if len(candidates) != 1 or not _is_probabilities(candidates[0]):
        found = ", ".join(f"{value.name} ({_describe(value)})" for value in graph.output)
        raise SourceModelError(
            f"has outputs {found}; expected one float or double output [{BATCH_DIM}, "
            f"{N_CLASSES}], or one named {OUTPUT_NAME!r} (a ZipMap's sequence of maps cannot be "
            "served: convert with it disabled)"
        )
    _check_free(graph, candidates[0].name, OUTPUT_NAME)
    return candidates[0].name


def _is_probabilities(value: onnx.ValueInfoProto) -> bool:
    tensor = value.type.tensor_type
    dims = tensor.shape.dim
    return (
        value.type.HasField("tensor_type")
        and tensor.elem_type in DTYPES
        and len(dims) == 2
        and dims[1].dim_value == N_CLASSES
    )


def _describe(value: onnx.ValueInfoProto) -> str:
    """A value's type as `float [batch, 3]`, or its kind when it is no tensor."""
    if not value.type.HasField("tensor_type"):
        return f"a {str(value.type.WhichOneof('value')).removesuffix('_type')}, no tensor"
    tensor = value.type.tensor_type
    kind = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    if not tensor.HasField("shape"):
        return f"{kind} of unknown shape"
    dims = [
        dim.dim_param or (str(dim.dim_value) if dim.dim_value else "?") for dim in tensor.shape.dim
    ]
    return f"{kind} [{', '.join(dims)}]"


def _check_free(graph: onnx.GraphProto, name: str, contract_name: str) -> None:
    """Renaming `name` to `contract_name` must not merge it with another tensor of that name."""
    if name == contract_name:
        return
    used = {
        *(value.name for value in (*graph.input, *graph.output, *graph.value_info)),
        *(tensor.name for tensor in graph.initializer),
        *(out for node in graph.node for out in (*node.input, *node.output)),
    }
    if contract_name in used:
        raise SourceModelError(
            f"names another tensor {contract_name!r}, the name its {name} must take; rename it"
        )


def _check_class_labels(graph: onnx.GraphProto) -> None:
    """A classifier node with one label per class must name the classes as labels.txt does
    (a node with two labels belongs to a one-against-the-rest part and is left alone)."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name not in CLASS_LABELS:
                continue
            found: list[object] = (
                [text.decode() for text in attribute.strings]
                if attribute.name == "classlabels_strings"
                else list(attribute.ints)
            )
            problem = class_problem(found) if len(found) == N_CLASSES else None
            if problem:
                raise SourceModelError(f"its {node.op_type} node {node.name!r} has {problem}")


def family(graph: Graph) -> str:
    """Who made the graph, as the file says."""
    producer = f"{graph.model.producer_name} {graph.model.producer_version}".strip()
    return f"ONNX({producer or 'unknown producer'})"


def dtype(graph: Graph) -> type[np.floating]:
    return graph.dtype


def versions(graph: Graph) -> dict[str, str]:
    """None: the graph was converted before it came here."""
    return {}


def to_onnx(graph: Graph) -> onnx.ModelProto:
    """The graph with its input and probabilities output under the contract's names."""
    model = copy.deepcopy(graph.model)
    initialized = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initialized]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    # IR 3 required every initializer among the inputs; from IR 4 on they need not be.
    model.ir_version = max(model.ir_version, 4)
    _rename(model.graph, graph.input_name, INPUT_NAME)
    _rename(model.graph, graph.output_name, OUTPUT_NAME)
    return model


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every use of tensor `old` renamed, in subgraphs too (they may read it from outside)."""
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for subgraph in (*subgraphs, *attribute.graphs):
                _rename(subgraph, old, new)
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if value.name == old:
            value.name = new


def predict(graph: Graph, rows: np.ndarray) -> np.ndarray:
    """What the given graph computes, unchanged."""
    (outputs,) = graph.session.run([graph.output_name], {graph.input_name: rows})
    return outputs


def tolerance(converted: onnx.ModelProto) -> Tolerance:
    """By the graph's precision and ops: float32 as a PyTorch network's, float64 as a
    scikit-learn graph's of the same ops (tree ensembles and SVMs compute in float32)."""
    if converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
        return FLOAT32
    return sklearn_framework.tolerance(converted)
