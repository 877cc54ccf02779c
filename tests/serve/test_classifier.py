"""The onnxruntime session wrapper, on small hand-built graphs."""

import json

import numpy as np
import pytest

from serve.classifier import OnnxClassifier
from serve.errors import InvalidCrystalData, PredictionFailed, StartupError
from support.onnx_builders import IDENTITY_WEIGHTS, softmax_model


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reads_input_dtype_and_width_from_the_model(dtype: type) -> None:
    model = OnnxClassifier("m", softmax_model(IDENTITY_WEIGHTS, dtype=dtype))
    assert model.input_dtype == np.dtype(dtype)
    assert model.n_classes == 3


def test_float64_model_computes_in_double_precision() -> None:
    batch = np.random.default_rng(0).uniform(-5, 5, size=(1000, 4))
    probabilities = OnnxClassifier("m", softmax_model(IDENTITY_WEIGHTS)).predict(batch)
    assert probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities, softmax(batch @ IDENTITY_WEIGHTS), rtol=1e-14)


def test_float32_model_output_is_widened_exactly() -> None:
    batch = np.random.default_rng(1).uniform(0, 1, size=(50, 4))
    model = OnnxClassifier("m", softmax_model(IDENTITY_WEIGHTS, dtype=np.float32))
    probabilities = model.predict(batch)
    assert probabilities.dtype == np.float64
    assert np.array_equal(probabilities.astype(np.float32).astype(np.float64), probabilities)


@pytest.mark.parametrize("rows", [1, 3, 10_000])
def test_dynamic_batch(rows: int) -> None:
    batch = np.zeros((rows, 4))
    probabilities = OnnxClassifier("m", softmax_model(IDENTITY_WEIGHTS)).predict(batch)
    assert probabilities.shape == (rows, 3)


def test_values_beyond_float32_range_are_invalid_data() -> None:
    model = OnnxClassifier("pytorch", softmax_model(IDENTITY_WEIGHTS, dtype=np.float32))
    batch = np.array([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 3.5e38, 0.4]])
    with pytest.raises(InvalidCrystalData, match=r"crystalData\[1\]\[2\].*float32"):
        model.predict(batch)


def test_largest_float32_is_accepted() -> None:
    model = OnnxClassifier("pytorch", softmax_model(IDENTITY_WEIGHTS * 0, dtype=np.float32))
    largest = float(np.finfo(np.float32).max)
    probabilities = model.predict(np.array([[largest, -largest, 0.0, 1.0]]))
    np.testing.assert_allclose(probabilities, [[1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_non_finite_output_is_a_prediction_failure() -> None:
    weights = IDENTITY_WEIGHTS.copy()
    weights[0, 0] = np.nan
    with pytest.raises(PredictionFailed, match="non-finite"):
        OnnxClassifier("m", softmax_model(weights)).predict(np.ones((2, 4)))


def test_onnxruntime_error_is_a_prediction_failure() -> None:
    # A [2, 3] bias broadcasts only against batches of 1 or 2 rows.
    model = OnnxClassifier("m", softmax_model(IDENTITY_WEIGHTS, bias=np.zeros((2, 3))))
    assert model.predict(np.ones((2, 4))).shape == (2, 3)
    with pytest.raises(PredictionFailed, match="failed to predict") as caught:
        model.predict(np.ones((3, 4)))
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (softmax_model(np.ones((5, 3))), r"input shape is \['batch', 5\]"),
        (softmax_model(IDENTITY_WEIGHTS, input_name="x"), "input named 'input'"),
        (softmax_model(IDENTITY_WEIGHTS, output_name="probs"), "output 'probabilities'"),
        (b"not an onnx model", "onnxruntime cannot load it"),
    ],
)
def test_refuses_models_that_break_the_contract(model: bytes, message: str) -> None:
    with pytest.raises(StartupError, match=message):
        OnnxClassifier("m", model)


def test_the_exported_models_follow_the_servers_contract() -> None:
    """The build step writes, and the manifest records, exactly the contract serve/ loads."""
    from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME
    from serve.manifest import read_manifest
    from serve.settings import PROJECT_ROOT

    manifest = json.loads((PROJECT_ROOT / "onnx_models" / "manifest.json").read_text())
    for model_file in read_manifest(PROJECT_ROOT / "onnx_models"):
        entry = manifest["models"][model_file.name]
        assert (entry["input_name"], entry["output_name"], entry["n_features"]) == (
            INPUT_NAME,
            OUTPUT_NAME,
            N_FEATURES,
        )
        model = OnnxClassifier(model_file.name, model_file.read_verified())
        assert model.predict(np.zeros((2, N_FEATURES))).shape == (2, model.n_classes)
