"""Helpers for the end-to-end tests: models folders to serve, checks of a running server's
answers, and waits for what a server or its clients do."""

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin

import numpy as np
import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_spec_validator import validate

from harness.bodies import COMMITTED_MODELS
from harness.server import ServerProcess
from support.examples import ROWS
from support.onnx_builders import IDENTITY_WEIGHTS, softmax_model, write_models_dir

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    what: str | Callable[[], str],
    seconds: float = 30.0,
    every: float = 0.05,
) -> T:
    """The first truthy result of `check`, tried every `every` s. Past `seconds` without one, an
    AssertionError says what did not happen (`what`, or what it returns then)."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not within {seconds} s: {what if isinstance(what, str) else what()}"
            )
        time.sleep(every)
    return result


def in_flight(live: ServerProcess) -> float:
    """crystal_requests_in_flight in a scrape: the requests in the app, their bodies whole or
    not, from the answering worker now and from the others as of their last publication
    (METRICS_FLUSH_SECONDS); the scrape does not count itself."""
    text = requests.get(live.url + "/metrics", timeout=10).text
    return float(re.search(r"^crystal_requests_in_flight (\S+)$", text, re.M).group(1))


def strict_json(response: requests.Response) -> object:
    assert response.headers["Content-Type"] == "application/json"
    return json.loads(response.content, parse_constant=lambda c: pytest.fail(f"{c} in body"))


def copy_models(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    target.mkdir()
    for path in COMMITTED_MODELS.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def exported_models(tmp_path: Path) -> Path:
    """The folder `make export` writes: this checkout's, once it holds exported models; before
    that, a stand-in with small hand-built models of the same contract."""
    exported = COMMITTED_MODELS
    if (exported / "manifest.json").is_file():
        return exported
    return write_models_dir(
        tmp_path / "build-stage" / "onnx_models",
        {
            "sklearn": softmax_model(IDENTITY_WEIGHTS),
            "pytorch": softmax_model(IDENTITY_WEIGHTS, dtype=np.float32),
        },
    )


def spec_calls(models: list[str]) -> list[tuple[str, str, dict | None, int]]:
    """(method, path, body, status): every answer of every served model, and the errors."""
    one_row = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROWS[0]}]}
    calls = []
    for name in models:
        calls += [
            ("post", f"/{name}", {"crystalData": ROWS}, 200),
            ("post", f"/{name}", {"crystalData": [[1, 2, 3, 1e39]]}, 422),
            ("post", "/astromech", {"crystalData": ROWS, "model": name}, 200),
            ("post", f"/v2/models/{name}/infer", one_row, 200),
            ("get", f"/v2/models/{name}", None, 200),
            ("get", f"/v2/models/{name}/ready", None, 200),
        ]
    first = models[0]
    return [
        *calls,
        ("post", "/astromech", {"crystalData": ROWS, "model": "SKLEARN"}, 400),
        ("post", f"/{first}", {"crystalData": [[1, 2, 3]]}, 422),
        ("post", f"/{first}", {"crystalData": [[0.5] * 4] * 100_001}, 413),
        ("post", f"/v2/models/{first}/infer", {"inputs": []}, 400),
        ("post", "/v2/models/keras/infer", {"inputs": []}, 404),
        ("get", "/v2", None, 200),
        ("get", "/v2/health/live", None, 200),
        ("get", "/v2/health/ready", None, 200),
        ("get", "/v2/models/keras", None, 404),
        ("get", "/v2/models/keras/ready", None, 404),
        ("get", "/metrics", None, 200),
        ("get", "/openapi.json", None, 200),
    ]


def check_answers_against_the_served_spec(live: ServerProcess, models: list[str]) -> None:
    document = live.url + "/openapi.json"
    spec = requests.get(document, timeout=10).json()
    validate(spec)
    # The document names its server relative to where it was fetched from.
    (server,) = spec["servers"]
    spec["servers"] = [{"url": urljoin(document, server["url"]).rstrip("/")}]
    assert spec["servers"] == [{"url": live.url}]
    openapi = OpenAPI.from_dict(spec)
    for method, path, body, status in spec_calls(models):
        response = requests.request(method, live.url + path, json=body, timeout=30)
        assert response.status_code == status, (path, response.text[:200])
        openapi.validate_response(
            RequestsOpenAPIRequest(response.request), RequestsOpenAPIResponse(response)
        )
