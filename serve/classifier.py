"""One onnxruntime session wrapper serves every model: the only inference path of the service."""

import hashlib
from typing import Protocol

import numpy as np
import onnxruntime as ort

from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME
from serve.errors import InvalidCrystalData, PredictionFailed, StartupError
from serve.manifest import VERSION_DIGITS

_ONNX_DTYPES = {"tensor(double)": np.dtype(np.float64), "tensor(float)": np.dtype(np.float32)}


class Classifier(Protocol):
    """What the app needs of a model: class probabilities for a float64 batch."""

    n_classes: int
    input_dtype: np.dtype
    output_dtype: np.dtype
    version: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxClassifier:
    """An exported ONNX classifier: input `input` [batch, 4], output `probabilities` [batch, n]."""

    def __init__(
        self, name: str, model: bytes, intra_op_threads: int = 1, inter_op_threads: int = 1
    ):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                model, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise StartupError(f"model {name}: onnxruntime cannot load it: {exc}") from None
        self.name = name
        self.version = hashlib.sha256(model).hexdigest()[:VERSION_DIGITS]
        self.input_dtype, self.output_dtype, self.n_classes = self._check_contract()
        self._output_names = [OUTPUT_NAME]
        self._run_options = ort.RunOptions()  # built once: run() would build one per call

    def _check_contract(self) -> tuple[np.dtype, np.dtype, int]:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or inputs[0].type not in _ONNX_DTYPES:
            raise StartupError(
                f"model {self.name}: expected one float or double input named {INPUT_NAME!r}"
            )
        if len(inputs[0].shape) != 2 or inputs[0].shape[1] != N_FEATURES:
            raise StartupError(
                f"model {self.name}: input shape is {inputs[0].shape}, "
                f"expected [batch, {N_FEATURES}]"
            )
        output = next((o for o in outputs if o.name == OUTPUT_NAME), None)
        if (
            output is None
            or output.type not in _ONNX_DTYPES
            or len(output.shape) != 2
            or not isinstance(output.shape[1], int)
        ):
            raise StartupError(
                f"model {self.name}: expected a float or double output {OUTPUT_NAME!r} "
                "of shape [batch, classes]"
            )
        return _ONNX_DTYPES[inputs[0].type], _ONNX_DTYPES[output.type], output.shape[1]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities as float64, one row per row of `batch` (finite float64 values: the
        decoders guarantee it, so only narrowing to a float32 input can overflow).

        Raises InvalidCrystalData when a value does not fit the model's input type (beyond the
        float32 range), PredictionFailed when onnxruntime fails or returns a non-finite value.
        """
        model_input = batch
        if batch.dtype != self.input_dtype:
            with np.errstate(over="ignore"):
                model_input = batch.astype(self.input_dtype)
            if not np.isfinite(model_input).all():
                row, column = np.argwhere(~np.isfinite(model_input))[0]
                raise InvalidCrystalData(
                    f"crystalData[{row}][{column}] is outside the range of the {self.name} "
                    f"model's {self.input_dtype.name} input"
                )
        try:
            (probabilities,) = self._session.run(
                self._output_names, {INPUT_NAME: model_input}, self._run_options
            )
        except Exception as exc:
            raise PredictionFailed(f"model {self.name} failed to predict") from exc
        if probabilities.shape != (len(batch), self.n_classes):
            raise PredictionFailed(
                f"model {self.name} returned shape {probabilities.shape}, "
                f"expected {(len(batch), self.n_classes)}"
            )
        if not np.isfinite(probabilities).all():
            raise PredictionFailed(f"model {self.name} returned a non-finite probability")
        return probabilities.astype(np.float64, copy=False)
