"""A converted graph brought to the service's contract: one input, one output, fixed bytes.

Whatever the converter wrote, the file has the single input `input` [batch, 4] and the single
output `probabilities` [batch, classes], both of the framework's type. Opsets are pinned by each
framework so that a newer converter does not silently change the files; the bytes are
deterministic, so the same sources always give the same files.
"""

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from export.classes import N_CLASSES
from export.errors import SourceModelError, first_line
from serve.contract import BATCH_DIM, INPUT_NAME, N_FEATURES, OUTPUT_NAME

_ONNX_TYPES = {
    "tensor(float)": onnx.TensorProto.FLOAT,
    "tensor(double)": onnx.TensorProto.DOUBLE,
}


def to_contract(model: onnx.ModelProto, name: str, dtype: type[np.floating]) -> bytes:
    """Keep only `probabilities` (and what computes it), of type `dtype`, name the batch dimension,
    serialize.

    `name` names the graph: a fixed name keeps the bytes the same from run to run.
    """
    graph = model.graph
    inputs = [value.name for value in graph.input]
    outputs = [value for value in graph.output if value.name == OUTPUT_NAME]
    if inputs != [INPUT_NAME] or len(outputs) != 1:
        raise SourceModelError(
            f"the converted graph has inputs {inputs} and outputs "
            f"{[value.name for value in graph.output]}, expected {INPUT_NAME!r} and {OUTPUT_NAME!r}"
        )
    needed = {OUTPUT_NAME}
    nodes = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(node.input)
    nodes.reverse()
    pruned = helper.make_graph(
        nodes,
        name,
        list(graph.input),
        outputs,
        initializer=[tensor for tensor in graph.initializer if tensor.name in needed],
        value_info=[info for info in graph.value_info if info.name in needed],
    )
    model.graph.CopyFrom(pruned)
    _cast_output(model, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    # skl2onnx lists the opsets in the order of a Python set, which changes with the string hash
    # seed of the process: sorted, the same model always gives the same bytes.
    opsets = sorted(
        (copy.deepcopy(entry) for entry in model.opset_import), key=lambda entry: entry.domain
    )
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    for value, width in ((model.graph.input[0], N_FEATURES), (model.graph.output[0], N_CLASSES)):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 2 or dims[1].dim_value != width:
            shape = [dim.dim_param or dim.dim_value for dim in dims]
            raise SourceModelError(
                f"the converted {value.name} has shape {shape}, expected [{BATCH_DIM}, {width}]"
            )
        dims[0].dim_param = BATCH_DIM
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise SourceModelError(
            f"the converted graph is not valid ONNX: {first_line(exc)}"
        ) from None
    return model.SerializeToString(deterministic=True)


def _cast_output(model: onnx.ModelProto, wanted: int) -> None:
    """Make `probabilities` of type `wanted`, with a Cast where the graph computes another.

    A converter may declare an output type that its ops do not produce: skl2onnx declares
    float64 probabilities for a tree ensemble, whose TreeEnsembleClassifier computes float32, and
    onnxruntime then refuses the file. The type that onnxruntime itself infers is the truth.
    """
    computed = _computed_type(model)
    output = model.graph.output[0]
    if computed != wanted:
        # Pruned, the graph has no consumer of `probabilities`: renaming its producer's output
        # and appending the Cast keeps the nodes in order.
        computed_name = f"{OUTPUT_NAME}_{onnx.TensorProto.DataType.Name(computed).lower()}"
        for node in model.graph.node:
            node.output[:] = [computed_name if out == OUTPUT_NAME else out for out in node.output]
        model.graph.node.append(helper.make_node("Cast", [computed_name], [OUTPUT_NAME], to=wanted))
    output.type.tensor_type.elem_type = wanted


def _computed_type(model: onnx.ModelProto) -> int:
    """The type onnxruntime infers for `probabilities` when the graph declares none."""
    probe = copy.deepcopy(model)
    probe.graph.output[0].ClearField("type")
    del probe.graph.value_info[:]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # failures raise; warnings would only clutter stderr
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise SourceModelError(
            f"onnxruntime {ort.__version__} cannot load the converted graph: {first_line(exc)}"
        ) from None
    (output,) = session.get_outputs()
    if output.type not in _ONNX_TYPES:
        raise SourceModelError(f"the converted graph computes {OUTPUT_NAME} as {output.type}")
    return _ONNX_TYPES[output.type]
