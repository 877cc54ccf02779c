"""Request bodies for the models a manifest lists: every prediction endpoint, seeded rows."""

import json
import random
from dataclasses import replace
from pathlib import Path

from harness.load import Call
from harness.server import REPO_ROOT, request
from serve.manifest import read_manifest

COMMITTED_MODELS = REPO_ROOT / "onnx_models"
ROUTER = "astromech"
# The published example's first row: a one-row body is a real droid's request.
EXAMPLE_ROW = (0.92, 0.12, 0.31, 0.09)


def model_names(models_dir: Path = COMMITTED_MODELS) -> list[str]:
    return [model.name for model in read_manifest(models_dir)]


def endpoints(models_dir: Path = COMMITTED_MODELS) -> list[str]:
    """Each model's own route, then the router that takes the model in the body."""
    return [*model_names(models_dir), ROUTER]


def crystal_rows(n: int, seed: int = 0) -> list[list[float]]:
    """n rows of four measurements in [0, 1), six decimals as instruments report them; the
    published example's row when n is 1."""
    if n == 1:
        return [list(EXAMPLE_ROW)]
    rng = random.Random(seed)
    return [[round(rng.random(), 6) for _ in range(4)] for _ in range(n)]


def documents(endpoint: str, n: int, models_dir: Path = COMMITTED_MODELS) -> list[dict]:
    """The JSON documents for one endpoint and row count; the router gets one per model."""
    rows = crystal_rows(n)
    if endpoint == ROUTER:
        return [{"crystalData": rows, "model": model} for model in model_names(models_dir)]
    return [{"crystalData": rows}]


def encode(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def prediction_calls(rows: tuple[int, ...], models_dir: Path = COMMITTED_MODELS) -> list[Call]:
    """Every endpoint with a body of each row count, answers not yet known."""
    return [
        Call(f"/{endpoint}", encode(document), rows=n)
        for n in rows
        for endpoint in endpoints(models_dir)
        for document in documents(endpoint, n, models_dir)
    ]


def with_answers(calls: list[Call], ports: list[int]) -> list[Call]:
    """The calls, each expecting the body every server gives it now; refused when the servers
    disagree, answer another status than the call's, or another number of rows."""
    answered = []
    for call in calls:
        answers = {
            request(port, "POST", call.path, call.body, timeout=30, headers=dict(call.headers))
            for port in ports
        }
        if len(answers) != 1:
            raise RuntimeError(f"{call.path}: the servers answer differently")
        ((status, body),) = answers
        if status != call.status:
            raise RuntimeError(f"{call.path}: answered {status}, not {call.status}: {body[:300]!r}")
        if status == 200 and len(json.loads(body)["prediction"]) != call.rows:
            raise RuntimeError(f"{call.path}: {call.rows} rows sent, another number answered")
        answered.append(replace(call, expected=body))
    return answered
