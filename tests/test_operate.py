"""Probes, metadata, request ids, logs and limits, through falcon's TestClient."""

import io
import json
import logging

import falcon
import numpy as np
import pytest
from falcon import testing
from test_app import LABELS, ROWS, SKLEARN_ROWS, FakeClassifier

from serve.app import create_app
from serve.body import read_body
from serve.errors import PayloadTooLarge
from serve.logs import AccessLog, JsonLineFormatter
from serve.metrics import Metrics
from serve.settings import Limits


class BrokenClassifier(FakeClassifier):
    """Returns probabilities that do not sum to one: it fails its warm-up."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), 3))


def make_client(limits: Limits | None = None, pytorch: FakeClassifier | None = None):
    models = {
        "sklearn": FakeClassifier(SKLEARN_ROWS),
        "pytorch": pytorch or FakeClassifier([[0.2, 0.3, 0.5]], input_dtype=np.float32),
    }
    return testing.TestClient(create_app(models, LABELS, limits=limits, metrics=Metrics()))


@pytest.fixture
def client() -> testing.TestClient:
    return make_client()


def test_live_and_ready(client: testing.TestClient) -> None:
    assert client.simulate_get("/v2/health/live").json == {"live": True}
    ready = client.simulate_get("/v2/health/ready")
    assert (ready.status_code, ready.json) == (200, {"ready": True})
    model = client.simulate_get("/v2/models/pytorch/ready")
    assert (model.status_code, model.json) == (200, {"name": "pytorch", "ready": True})


def test_a_model_that_fails_its_warm_up_is_not_ready() -> None:
    client = make_client(pytorch=BrokenClassifier([[0.2, 0.3, 0.5]]))
    assert client.simulate_get("/v2/health/ready").status_code == 503
    assert client.simulate_get("/v2/models/pytorch/ready").status_code == 503
    assert client.simulate_get("/v2/models/sklearn/ready").status_code == 200
    result = client.simulate_post("/pytorch", json={"crystalData": ROWS})
    assert result.status_code == 503
    assert result.json["title"] == "Model not ready"
    assert client.simulate_post("/sklearn", json={"crystalData": ROWS}).status_code == 200


def test_model_metadata(client: testing.TestClient) -> None:
    result = client.simulate_get("/v2/models/pytorch")
    assert result.status_code == 200
    assert result.json == {
        "name": "pytorch",
        "versions": ["0123456789ab"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
        "labels": list(LABELS),
    }
    assert client.simulate_get("/v2/models/sklearn").json["inputs"][0]["datatype"] == "FP64"


@pytest.mark.parametrize("path", ["/v2/models/keras", "/v2/models/keras/ready"])
def test_unknown_model_is_404_json(client: testing.TestClient, path: str) -> None:
    result = client.simulate_get(path)
    assert result.status_code == 404
    assert result.json["title"] == "Unknown model"


def test_server_metadata(client: testing.TestClient) -> None:
    assert client.simulate_get("/v2").json == {
        "name": "crystal-serving",
        "version": "1.0.0",
        "extensions": [],
    }


def test_openapi_spec_is_served(client: testing.TestClient) -> None:
    spec = client.simulate_get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    assert {"/sklearn", "/pytorch", "/astromech", "/metrics"} <= set(spec["paths"])


def test_request_id_is_kept_when_safe_and_replaced_otherwise(client: testing.TestClient) -> None:
    kept = client.simulate_get("/v2/health/live", headers={"X-Request-ID": "droid-7:42"})
    assert kept.headers["X-Request-ID"] == "droid-7:42"
    for hostile in ["x" * 65, "a b", "id\u00e9", '"}{"level"']:
        replaced = client.simulate_get("/v2/health/live", headers={"X-Request-ID": hostile})
        assert replaced.headers["X-Request-ID"] != hostile
        assert len(replaced.headers["X-Request-ID"]) == 32
    generated = client.simulate_get("/v2/health/live").headers["X-Request-ID"]
    assert len(generated) == 32


def test_one_access_log_line_per_request() -> None:
    lines = io.BytesIO()
    models = {"sklearn": FakeClassifier(SKLEARN_ROWS), "pytorch": FakeClassifier(SKLEARN_ROWS)}
    client = testing.TestClient(create_app(models, LABELS, access_log=AccessLog(lines.write)))
    client.simulate_post(
        "/astromech", json={"crystalData": ROWS, "model": "sklearn"}, headers={"X-Request-ID": "r1"}
    )
    client.simulate_post("/pytorch", json={"crystalData": [[1, 2]]}, headers={"X-Request-ID": "r2"})
    first, second = (json.loads(line) for line in lines.getvalue().splitlines())
    assert (first["logger"], first["message"], first["level"]) == (
        "serve.access",
        "request",
        "info",
    )
    assert first["ts"].endswith("Z")
    assert first["request_id"] == "r1"
    assert (first["method"], first["path"], first["model"], first["rows"], first["status"]) == (
        "POST",
        "/astromech",
        "sklearn",
        3,
        200,
    )
    assert first["duration_ms"] > 0
    assert "error" not in first
    assert (second["model"], second["status"]) == ("pytorch", 422)
    assert "$.crystalData[0]" in second["error"]


def test_json_log_formatter_writes_one_parsable_line() -> None:
    record = logging.LogRecord("serve.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"request_id": "r1", "path": '/x\n{"forged": 1}'}
    line = JsonLineFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["request_id"] == "r1"
    assert parsed["level"] == "info"
    assert parsed["ts"].endswith("Z")


def test_metrics_count_requests(client: testing.TestClient) -> None:
    for _ in range(3):
        client.simulate_post("/sklearn", json={"crystalData": ROWS})
    client.simulate_post("/sklearn", json={"crystalData": []})
    text = client.simulate_get("/metrics").text
    assert 'crystal_requests_total{endpoint="/sklearn",model="sklearn",status="200"} 3.0' in text
    assert 'crystal_requests_total{endpoint="/sklearn",model="sklearn",status="422"} 1.0' in text
    assert 'crystal_inference_duration_seconds_count{model="sklearn"} 3.0' in text
    assert 'crystal_request_rows_sum{model="sklearn"} 9.0' in text
    assert "crystal_requests_in_flight 1.0" in text  # this very request


def test_declared_body_over_the_limit_is_413_unread() -> None:
    client = make_client(Limits(max_body_bytes=100, max_rows=10))
    stream = io.BytesIO(b"x" * 1000)
    result = client.simulate_post(
        "/sklearn", body=stream.getvalue(), headers={"Content-Type": "application/json"}
    )
    assert result.status_code == 413
    assert "1000 bytes exceeds the limit of 100" in result.json["description"]


def test_rows_over_the_limit_is_413() -> None:
    client = make_client(Limits(max_body_bytes=10_000, max_rows=2))
    assert client.simulate_post("/sklearn", json={"crystalData": ROWS[:2]}).status_code == 200
    result = client.simulate_post("/astromech", json={"crystalData": ROWS, "model": "pytorch"})
    assert result.status_code == 413
    assert result.json["description"] == "crystalData has 3 rows, the limit is 2"


def _request_without_length(body: bytes) -> falcon.Request:
    env = testing.create_environ(method="POST", path="/sklearn", body=body)
    del env["CONTENT_LENGTH"]
    return falcon.Request(env)


def test_body_without_length_is_read_to_the_end() -> None:
    body = json.dumps({"crystalData": ROWS * 10_000}).encode()
    assert read_body(_request_without_length(body), max_bytes=len(body)) == body


def test_body_without_length_over_the_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 1000 bytes"):
        read_body(_request_without_length(b"x" * 200_000), max_bytes=1000)
