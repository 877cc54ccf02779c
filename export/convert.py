"""A converted graph brought to the service's contract: one input, one output, fixed bytes.

Whatever the converter wrote, the file has the single input `input` [batch, 4] and the single
output `probabilities` [batch, classes], both of the model's type. Opsets are pinned by each
framework so that a newer converter does not silently change the files; the bytes are
deterministic, so the same sources always give the same files.

Converters may write a graph whose ops do not compute the types it declares (skl2onnx's tree
ensembles compute float32 where it assumed float64). The types the ops really compute are the
truth: where float32 meets float64, the float32 side is widened, exactly, by a Cast.
"""

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from export.classes import N_CLASSES
from export.errors import SourceModelError, first_line
from serve.contract import BATCH_DIM, INPUT_NAME, N_FEATURES, OUTPUT_NAME

FLOAT = onnx.TensorProto.FLOAT
DOUBLE = onnx.TensorProto.DOUBLE
_ONNX_TYPES = {"tensor(float)": FLOAT, "tensor(double)": DOUBLE}


def to_contract(
    model: onnx.ModelProto, name: str, dtype: type[np.floating], softmax: bool = False
) -> bytes:
    """Keep only `probabilities` (and what computes it), of type `dtype`, name the batch dimension,
    serialize.

    `name` names the graph: a fixed name keeps the bytes the same from run to run. `softmax`
    appends one to outputs that are logits (--softmax).
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
    _widen_mixed_inputs(model)
    if softmax:
        _append_softmax(model)
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


def _widen_mixed_inputs(model: onnx.ModelProto) -> None:
    """Cast float32 inputs to float64 wherever an op gets both for one type parameter.

    skl2onnx assumes that every part of an ensemble computes in float64; a tree ensemble inside a
    calibrated classifier computes float32, and the Mul that scales its output then gets one
    float32 and one float64 input, which onnxruntime refuses. Types are followed node by node, as
    the op schemas infer them; a graph that never mixes the two is left exactly as it is.
    """
    graph = model.graph
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    types = {value.name: value.type for value in graph.input}
    types |= {
        tensor.name: helper.make_tensor_type_proto(tensor.data_type, tensor.dims)
        for tensor in graph.initializer
    }
    widened: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        schema = _schema(node, opsets)
        if schema is not None:
            nodes += _widen(node, schema, types, widened)
            types |= _output_types(schema, node, types, model)
        nodes.append(node)
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)


def _schema(node: onnx.NodeProto, opsets: dict[str, int]) -> onnx.defs.OpSchema | None:
    domain = node.domain or "ai.onnx"
    try:
        return onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), node.domain)
    except onnx.defs.SchemaError:
        return None  # an op of a domain onnx does not know: its outputs' types stay unknown


def _widen(
    node: onnx.NodeProto,
    schema: onnx.defs.OpSchema,
    types: dict[str, onnx.TypeProto],
    widened: dict[str, str],
) -> list[onnx.NodeProto]:
    """The Casts that `node` needs, its inputs renamed to their outputs; one Cast per tensor."""
    parameters = {constraint.type_param_str for constraint in schema.type_constraints}
    formal = [parameter.type_str for parameter in schema.inputs]
    by_parameter: dict[str, list[int]] = {}
    for index, name in enumerate(node.input):
        parameter = formal[min(index, len(formal) - 1)] if formal else ""
        if name and parameter in parameters:
            by_parameter.setdefault(parameter, []).append(index)
    casts = []
    for indices in by_parameter.values():
        elements = {index: _element_type(types.get(node.input[index])) for index in indices}
        if {FLOAT, DOUBLE} <= set(elements.values()):
            for index in (index for index, element in elements.items() if element == FLOAT):
                name = node.input[index]
                if name not in widened:
                    widened[name] = f"{name}_as_double"
                    casts.append(helper.make_node("Cast", [name], [widened[name]], to=DOUBLE))
                    types[widened[name]] = helper.make_tensor_type_proto(DOUBLE, None)
                node.input[index] = widened[name]
    return casts


def _element_type(value: onnx.TypeProto | None) -> int | None:
    if value is None or not value.HasField("tensor_type"):
        return None
    return value.tensor_type.elem_type


def _output_types(
    schema: onnx.defs.OpSchema,
    node: onnx.NodeProto,
    types: dict[str, onnx.TypeProto],
    model: onnx.ModelProto,
) -> dict[str, onnx.TypeProto]:
    """The types `node` computes from its inputs' types; none where onnx cannot tell."""
    try:
        return onnx.shape_inference.infer_node_outputs(
            schema,
            node,
            {name: types[name] for name in node.input if name in types},
            opset_imports=list(model.opset_import),
            ir_version=model.ir_version,
        )
    except Exception:
        return {}


def _append_softmax(model: onnx.ModelProto) -> None:
    """`probabilities` = softmax(what the graph computed), over the classes."""
    logits = f"{OUTPUT_NAME}_logits"
    for node in model.graph.node:
        node.output[:] = [logits if out == OUTPUT_NAME else out for out in node.output]
    model.graph.node.append(helper.make_node("Softmax", [logits], [OUTPUT_NAME], axis=1))


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
    options.log_severity_level = 4  # failures raise, with their message; nothing to print
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
