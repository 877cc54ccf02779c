"""Stand-ins for the models, for tests that drive the app in-process through falcon's TestClient."""

import numpy as np

from serve.errors import PredictionFailed

LABELS = ("blue", "green", "yellow")


class FakeClassifier:
    """Returns a fixed probability row per input row, and records what it was given."""

    def __init__(self, rows: list[list[float]], input_dtype: type = np.float64):
        self.rows = np.array(rows)
        self.n_classes = self.rows.shape[1]
        self.input_dtype = self.output_dtype = np.dtype(input_dtype)
        self.version = "0123456789ab"
        self.batches: list[np.ndarray] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch)
        return self.rows[np.arange(len(batch)) % len(self.rows)]


class FailingClassifier(FakeClassifier):
    """Passes the one-row warm-up, then fails on batches."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > 1:
            raise PredictionFailed("model sklearn failed to predict") from RuntimeError("boom")
        return super().predict(batch)


class CrashingClassifier(FakeClassifier):
    def predict(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > 1:
            raise ZeroDivisionError("secret internal detail")
        return super().predict(batch)


SKLEARN_ROWS = [[0.9927769331813387, 0.007223053394387628, 1.3424273700413213e-08], [0.1, 0.7, 0.2]]
PYTORCH_ROWS = [[0.2, 0.3, 0.5]]
