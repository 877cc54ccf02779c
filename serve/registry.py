"""The model registry: the single inference path every endpoint goes through."""

import time
from collections.abc import Mapping, Sequence

import msgspec
import numpy as np

from serve.classifier import Classifier
from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME
from serve.errors import ModelNotReady, ServiceError, StartupError
from serve.metrics import Metrics

_encoder = msgspec.json.Encoder()
_V2_DATATYPES = {np.dtype(np.float64): "FP64", np.dtype(np.float32): "FP32"}
# The published example's first row: a warm-up must return finite probabilities summing to one.
WARM_UP_ROW = (0.92, 0.12, 0.31, 0.09)


class ModelRegistry:
    """Maps model names to classifiers; names classes with labels.txt, never with the models."""

    def __init__(self, models: Mapping[str, Classifier], labels: Sequence[str], metrics: Metrics):
        for name, model in models.items():
            if model.n_classes != len(labels):
                raise StartupError(
                    f"model {name} has {model.n_classes} outputs but there are {len(labels)} labels"
                )
        self._models = dict(models)
        self._labels = tuple(labels)
        # A struct per score row: lighter to build and to encode than a dict, same JSON.
        fields = [f"p{i}" for i in range(len(labels))]
        self._scores = msgspec.defstruct(
            "Scores", fields, rename=dict(zip(fields, labels, strict=True))
        )
        self._metrics = metrics
        self.names = frozenset(models)
        self._ready = {name: self._warm_up(model) for name, model in self._models.items()}

    @staticmethod
    def _warm_up(model: Classifier) -> bool:
        """One known row through the model in this worker: only then is the model ready."""
        try:
            probabilities = model.predict(np.array([WARM_UP_ROW]))
        except ServiceError:
            return False
        return bool(abs(probabilities.sum() - 1.0) < 1e-5)

    def is_ready(self, name: str) -> bool:
        return self._ready[name]

    @property
    def all_ready(self) -> bool:
        return all(self._ready.values())

    def run(self, name: str, batch: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Probabilities (float64) and the most probable label of every row."""
        if not self._ready[name]:
            raise ModelNotReady(f"model {name} failed its warm-up inference")
        self._metrics.rows.labels(name).observe(len(batch))
        started = time.perf_counter()
        probabilities = self._models[name].predict(batch)
        self._metrics.inference_seconds.labels(name).observe(time.perf_counter() - started)
        labels = self._labels
        return probabilities, [labels[i] for i in probabilities.argmax(axis=1).tolist()]

    def predict(self, name: str, batch: np.ndarray) -> bytes:
        """The droids' JSON answer: one label and one score object per row.

        Scores keep full float64 precision; float32 outputs are widened as `tolist()` widens them.
        """
        probabilities, prediction = self.run(name, batch)
        scores = self._scores
        return _encoder.encode(
            {"prediction": prediction, "scores": [scores(*row) for row in probabilities.tolist()]}
        )

    def version(self, name: str) -> str:
        return self._models[name].version

    def output_datatype(self, name: str) -> str:
        return _V2_DATATYPES[self._models[name].output_dtype]

    def metadata(self, name: str) -> dict:
        """The model in the Open Inference Protocol's metadata shape, plus its labels."""
        model = self._models[name]
        return {
            "name": name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "datatype": _V2_DATATYPES[model.input_dtype],
                    "shape": [-1, N_FEATURES],
                }
            ],
            "outputs": [
                {
                    "name": OUTPUT_NAME,
                    "datatype": self.output_datatype(name),
                    "shape": [-1, model.n_classes],
                }
            ],
            "labels": list(self._labels),
        }
