"""Both source models to ONNX bytes with the same single input and single output.

Opsets are pinned so that a newer converter does not silently change the files; the bytes are
deterministic, so the same sources always give the same files.
"""

import copy
import io
import warnings
from typing import Any

import onnx
import torch
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType

from export.classes import N_CLASSES
from export.errors import SourceModelError
from export.network import CrystalNet
from export.sources import Source
from serve.contract import BATCH_DIM, INPUT_NAME, N_FEATURES, OUTPUT_NAME

SKLEARN_TARGET_OPSETS = {"": 17, "ai.onnx.ml": 3}
PYTORCH_OPSET = 17


def sklearn_to_onnx(source: Source[Any]) -> bytes:
    """A float64 graph, so that onnxruntime reproduces predict_proba to the last bits."""
    model = source.model
    try:
        converted = convert_sklearn(
            model,
            name="sklearn",  # skl2onnx names the graph with a random UUID otherwise
            initial_types=[(INPUT_NAME, DoubleTensorType([None, N_FEATURES]))],
            options={id(model): {"zipmap": False}},
            target_opset=SKLEARN_TARGET_OPSETS,
        )
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceModelError(
            f"sklearn model {source.path}: skl2onnx cannot convert the "
            f"{type(model).__name__}: {reason}"
        ) from None
    return _with_contract(converted, "sklearn")


def pytorch_to_onnx(source: Source[CrystalNet]) -> bytes:
    """A float32 graph (the network's own precision) from the TorchScript exporter.

    The TorchScript exporter needs no onnxscript and writes the same bytes on every run.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch announces the deprecation of this exporter (and of its internals) on every call;
        # it is chosen on purpose, and the parity gate checks what it writes.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            source.model,
            (torch.zeros(1, N_FEATURES),),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            opset_version=PYTORCH_OPSET,
        )
    return _with_contract(onnx.load_from_string(buffer.getvalue()), "pytorch")


def _with_contract(model: onnx.ModelProto, name: str) -> bytes:
    """Keep only `probabilities` (and what computes it), name the batch dimension, serialize.

    `name` names the graph too: a fixed name keeps the bytes the same from run to run.
    """
    graph = model.graph
    inputs = [value.name for value in graph.input]
    outputs = [value for value in graph.output if value.name == OUTPUT_NAME]
    if inputs != [INPUT_NAME] or len(outputs) != 1:
        raise SourceModelError(
            f"{name} model: the converted graph has inputs {inputs} and outputs "
            f"{[value.name for value in graph.output]}, expected {INPUT_NAME!r} and {OUTPUT_NAME!r}"
        )
    needed = {OUTPUT_NAME}
    nodes = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(node.input)
    nodes.reverse()
    pruned = onnx.helper.make_graph(
        nodes,
        name,
        list(graph.input),
        outputs,
        initializer=[tensor for tensor in graph.initializer if tensor.name in needed],
        value_info=[info for info in graph.value_info if info.name in needed],
    )
    model.graph.CopyFrom(pruned)
    # skl2onnx lists the opsets in the order of a Python set, which changes with the string hash
    # seed of the process: sorted, the same model always gives the same bytes.
    opsets = sorted(
        (copy.deepcopy(entry) for entry in model.opset_import), key=lambda entry: entry.domain
    )
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    for value, width in ((model.graph.input[0], N_FEATURES), (model.graph.output[0], N_CLASSES)):
        batch, features = value.type.tensor_type.shape.dim
        batch.dim_param = BATCH_DIM
        if features.dim_value != width:
            raise SourceModelError(
                f"{name} model: the converted {value.name} has width "
                f"{features.dim_value}, expected {width}"
            )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)
