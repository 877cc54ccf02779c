"""The native baseline: the service's HTTP contract in the usual design, to show what the
service's (msgspec, numpy, one onnxruntime path) is worth: stdlib `json`, validation value by
value, the scikit-learn pickle and the torch network in-process, loaded by each gunicorn worker
from BENCH_SKLEARN_MODEL (joblib), BENCH_PYTORCH_MODEL (CrystalNet state_dict) and LABELS_FILE."""

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import falcon
import joblib
import torch

from export.network import CrystalNet

DEFAULT_LABELS = Path(__file__).resolve().parent.parent / "labels.txt"
Rows = list[list[float]]


def invalid(description: str, error: type = falcon.HTTPUnprocessableEntity) -> falcon.HTTPError:
    """422 for bad crystalData, 400 for bad JSON or model, in the service's error shape."""
    return error(title="Invalid request", description=description)


def parse_rows(document: object) -> Rows:
    """crystalData checked value by value: a non-empty list of rows of four finite numbers."""
    if not isinstance(document, dict):
        raise invalid("body must be a JSON object")
    rows = document.get("crystalData")
    if not isinstance(rows, list) or not rows:
        raise invalid("crystalData must be a non-empty list")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 4:
            raise invalid(f"crystalData[{i}] must hold 4 numbers")
        for j, value in enumerate(row):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value):
                raise invalid(f"crystalData[{i}][{j}] must be a number")
    return rows


def load_predictors() -> dict[str, Callable[[Rows], Rows]]:
    """Both source models, each behind `rows -> probabilities` as plain Python lists."""
    # One intra-op thread per worker, as the service gives onnxruntime: two workers on two cores
    # then never oversubscribe, so the comparison is of design and not of thread contention.
    torch.set_num_threads(1)
    sklearn_model = joblib.load(os.environ["BENCH_SKLEARN_MODEL"])
    network = CrystalNet()
    network.load_state_dict(torch.load(os.environ["BENCH_PYTORCH_MODEL"], weights_only=True))
    network.eval()

    def pytorch(rows: Rows) -> Rows:
        with torch.no_grad():
            return network(torch.tensor(rows, dtype=torch.float32)).tolist()

    return {"sklearn": lambda rows: sklearn_model.predict_proba(rows).tolist(), "pytorch": pytorch}


class Predict:
    """A fixed model, or for /astromech the body's `model`."""

    def __init__(self, predictors: dict, labels: list[str], model: str | None):
        self._predictors, self._labels, self._model = predictors, labels, model

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            document = json.loads(req.bounded_stream.read())
        except ValueError as exc:
            raise invalid(f"body is not valid JSON: {exc}", falcon.HTTPBadRequest) from None
        rows = parse_rows(document)
        model = self._model or document.get("model")
        if model not in self._predictors:
            raise invalid('model must be "sklearn" or "pytorch"', falcon.HTTPBadRequest)
        probabilities = self._predictors[model](rows)
        prediction = [self._labels[row.index(max(row))] for row in probabilities]
        scores = [dict(zip(self._labels, row, strict=True)) for row in probabilities]
        resp.content_type = falcon.MEDIA_JSON
        resp.text = json.dumps({"prediction": prediction, "scores": scores})


def application() -> falcon.App:
    labels_file = Path(os.environ.get("LABELS_FILE") or DEFAULT_LABELS)
    labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    predictors, app = load_predictors(), falcon.App()
    for route, model in (("sklearn", "sklearn"), ("pytorch", "pytorch"), ("astromech", None)):
        app.add_route(f"/{route}", Predict(predictors, labels, model))
    return app
