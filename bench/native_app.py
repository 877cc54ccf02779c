"""The native baseline: the same HTTP contract in the design public solutions use.

stdlib `json` for bodies and answers, validation value by value in Python loops, and the source
models themselves in-process: the scikit-learn pickle's `predict_proba` and the torch network's
forward under `torch.no_grad`. It shows what the service's design (msgspec, numpy, one
onnxruntime path) is worth against the obvious way.

Settings from the environment: BENCH_SKLEARN_MODEL (a joblib pickle), BENCH_PYTORCH_MODEL (a
state_dict of export.network.CrystalNet), LABELS_FILE (one label per line).
gunicorn entry point: `bench.native_app:application()`, so each worker loads its own models.
"""

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import falcon
import joblib
import torch

from export.network import CrystalNet

N_FEATURES = 4
DEFAULT_LABELS = Path(__file__).resolve().parent.parent / "labels.txt"
Rows = list[list[float]]


class InvalidBody(Exception):
    """Answered 422 (bad crystalData) or 400 (bad JSON or model)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def parse_rows(document: object) -> Rows:
    """crystalData checked value by value: a non-empty list of rows of four finite numbers."""
    if not isinstance(document, dict):
        raise InvalidBody(falcon.HTTP_422, "body must be a JSON object")
    rows = document.get("crystalData")
    if not isinstance(rows, list) or not rows:
        raise InvalidBody(falcon.HTTP_422, "crystalData must be a non-empty list")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != N_FEATURES:
            raise InvalidBody(falcon.HTTP_422, f"crystalData[{i}] must hold {N_FEATURES} numbers")
        for j, value in enumerate(row):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InvalidBody(falcon.HTTP_422, f"crystalData[{i}][{j}] must be a number")
    return rows


def load_predictors() -> dict[str, Callable[[Rows], list[list[float]]]]:
    """Both source models, each behind `rows -> probabilities` as plain Python lists."""
    # One intra-op thread per worker, as the service gives onnxruntime: two workers on two cores
    # then never oversubscribe, so the comparison is of design and not of thread contention.
    torch.set_num_threads(1)
    sklearn_model = joblib.load(os.environ["BENCH_SKLEARN_MODEL"])
    network = CrystalNet()
    network.load_state_dict(torch.load(os.environ["BENCH_PYTORCH_MODEL"], weights_only=True))
    network.eval()

    def sklearn_predict(rows: Rows) -> list[list[float]]:
        return sklearn_model.predict_proba(rows).tolist()

    def pytorch_predict(rows: Rows) -> list[list[float]]:
        with torch.no_grad():
            return network(torch.tensor(rows, dtype=torch.float32)).tolist()

    return {"sklearn": sklearn_predict, "pytorch": pytorch_predict}


class Predict:
    """One resource for all three routes: a fixed model, or the body's `model` for /astromech."""

    def __init__(self, predictors: dict, labels: list[str], model: str | None):
        self._predictors = predictors
        self._labels = labels
        self._model = model

    def _answer(self, body: bytes) -> dict:
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise InvalidBody(falcon.HTTP_400, f"body is not valid JSON: {exc}") from None
        rows = parse_rows(document)
        model = self._model or document.get("model")
        if model not in self._predictors:
            raise InvalidBody(falcon.HTTP_400, 'model must be "sklearn" or "pytorch"')
        probabilities = self._predictors[model](rows)
        labels = self._labels
        return {
            "prediction": [labels[row.index(max(row))] for row in probabilities],
            "scores": [dict(zip(labels, row, strict=True)) for row in probabilities],
        }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        try:
            resp.text = json.dumps(self._answer(req.bounded_stream.read()))
        except InvalidBody as exc:
            resp.status = exc.status
            resp.text = json.dumps({"title": "Invalid request", "description": str(exc)})


def application() -> falcon.App:
    labels_file = Path(os.environ.get("LABELS_FILE") or DEFAULT_LABELS)
    labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    predictors = load_predictors()
    app = falcon.App()
    for model in ("sklearn", "pytorch"):
        app.add_route(f"/{model}", Predict(predictors, labels, model))
    app.add_route("/astromech", Predict(predictors, labels, None))
    return app
