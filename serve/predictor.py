"""The single inference path: every endpoint runs a named model here and gets its JSON answer."""

from collections.abc import Mapping, Sequence

import msgspec
import numpy as np

from serve.classifier import Classifier
from serve.errors import StartupError

_encoder = msgspec.json.Encoder()


class CrystalPredictor:
    """Names the models, runs them, and renders predictions with labels from labels.txt."""

    def __init__(self, models: Mapping[str, Classifier], labels: Sequence[str]):
        for name, model in models.items():
            if model.n_classes != len(labels):
                raise StartupError(
                    f"model {name} has {model.n_classes} outputs but there are {len(labels)} labels"
                )
        self._models = dict(models)
        self._labels = tuple(labels)
        self.model_names = frozenset(models)

    def predict(self, model_name: str, batch: np.ndarray) -> bytes:
        """The JSON answer: one label (the most probable class) and one score object per row.

        Scores keep full float64 precision; float32 outputs are widened as `tolist()` widens them.
        """
        probabilities = self._models[model_name].predict(batch)
        labels = self._labels
        rows = probabilities.tolist()
        return _encoder.encode(
            {
                "prediction": [labels[i] for i in probabilities.argmax(axis=1).tolist()],
                "scores": [dict(zip(labels, row, strict=True)) for row in rows],
            }
        )
