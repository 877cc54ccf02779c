"""Tiny hand-built ONNX graphs for testing the session wrapper and start-up checks."""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_TENSOR_TYPES = {np.float64: TensorProto.DOUBLE, np.float32: TensorProto.FLOAT}


def softmax_model(
    weights: np.ndarray,
    *,
    dtype: type = np.float64,
    input_name: str = "input",
    output_name: str = "probabilities",
    bias: np.ndarray | None = None,
) -> bytes:
    """probabilities = softmax(input @ weights + bias), input [batch, weights.shape[0]]."""
    n_features, n_classes = weights.shape
    bias = np.zeros((n_classes,)) if bias is None else bias
    elem = _TENSOR_TYPES[dtype]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "W"], ["logits"]),
            helper.make_node("Add", ["logits", "B"], ["shifted"]),
            helper.make_node("Softmax", ["shifted"], [output_name], axis=1),
        ],
        "test_softmax",
        [helper.make_tensor_value_info(input_name, elem, ["batch", n_features])],
        [helper.make_tensor_value_info(output_name, elem, ["batch", n_classes])],
        initializer=[
            numpy_helper.from_array(weights.astype(dtype), "W"),
            numpy_helper.from_array(bias.astype(dtype), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_models_dir(directory: Path, models: dict[str, bytes]) -> Path:
    """A models folder with a manifest giving each file's sha256, as the export writes it."""
    import hashlib
    import json

    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, data in models.items():
        (directory / f"{name}.onnx").write_bytes(data)
        entries[name] = {"file": f"{name}.onnx", "sha256": hashlib.sha256(data).hexdigest()}
    (directory / "manifest.json").write_text(json.dumps({"format_version": 1, "models": entries}))
    return directory


IDENTITY_WEIGHTS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, -0.5, 0.25]])
