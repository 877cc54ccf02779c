"""Probes, metadata, request ids, logs and limits, through falcon's TestClient."""

import asyncio
import io
import json
import logging
import re
import threading
from urllib.parse import urljoin

import numpy as np
import pytest
from falcon import testing
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from serve.app import create_app
from serve.body import read_body
from serve.errors import PayloadTooLarge, RequestTimeout
from serve.logs import AccessLog, JsonLineFormatter
from serve.metrics import Metrics
from serve.request import CrystalRequest
from serve.settings import Limits, Settings
from support.examples import ROWS
from support.fakes import LABELS, SKLEARN_ROWS, FakeClassifier


class BrokenClassifier(FakeClassifier):
    """Returns probabilities that do not sum to one: it fails its warm-up."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), 3))


def make_client(
    limits: Limits | None = None,
    pytorch: FakeClassifier | None = None,
    metrics: Metrics | None = None,
    access_log: AccessLog | None = None,
    settings: Settings | None = None,
) -> testing.TestClient:
    models = {
        "sklearn": FakeClassifier(SKLEARN_ROWS),
        "pytorch": pytorch or FakeClassifier([[0.2, 0.3, 0.5]], input_dtype=np.float32),
    }
    app = create_app(
        models,
        LABELS,
        limits=limits,
        metrics=metrics or Metrics(),
        access_log=access_log or AccessLog(lambda line: None),
        settings=settings,
    )
    return testing.TestClient(app)


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
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "labels": list(LABELS),
    }
    assert client.simulate_get("/v2/models/sklearn").json["inputs"][0]["datatype"] == "FP64"


@pytest.mark.parametrize("path", ["/v2/models/keras", "/v2/models/keras/ready"])
def test_unknown_model_is_404_in_the_protocols_shape(client: testing.TestClient, path: str) -> None:
    result = client.simulate_get(path)
    assert result.status_code == 404
    assert result.json == {"error": "no model named 'keras'"}
    assert client.simulate_head(path).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "GET",
            "/sklearn",
            {
                "title": "405 Method Not Allowed",
                "description": "GET is not allowed on /sklearn; use POST, OPTIONS",
            },
        ),
        *(
            (
                method,
                "/sklearn",
                {
                    "title": "405 Method Not Allowed",
                    "description": f"{method} is not allowed on /sklearn; use POST, OPTIONS",
                },
            )
            for method in ("DELETE", "PATCH")
        ),
        (
            "PUT",
            "/astromech",
            {
                "title": "405 Method Not Allowed",
                "description": "PUT is not allowed on /astromech; use POST, OPTIONS",
            },
        ),
        (
            "POST",
            "/v2/health/ready",
            {"error": "POST is not allowed on /v2/health/ready; use GET, HEAD, OPTIONS"},
        ),
        (
            "GET",
            "/v2/models/sklearn/infer",
            {"error": "GET is not allowed on /v2/models/sklearn/infer; use POST, OPTIONS"},
        ),
    ],
)
def test_405_names_the_allowed_methods_in_the_protocols_shape(
    client: testing.TestClient, method: str, path: str, body: dict
) -> None:
    """JSON whatever the client accepts."""
    result = client.simulate_request(method, path, headers={"Accept": "application/xml"})
    assert result.status_code == 405
    assert result.headers["content-type"] == "application/json"
    assert result.json == body
    assert result.headers["Allow"] == body.get("description", body.get("error")).split("use ")[1]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/sklearn",
            {
                "title": "501 Not Implemented",
                "description": "BREW is not a method this server implements",
            },
        ),
        (
            "/nowhere",
            {
                "title": "501 Not Implemented",
                "description": "BREW is not a method this server implements",
            },
        ),
        ("/v2/models/sklearn/infer", {"error": "BREW is not a method this server implements"}),
    ],
)
def test_an_unknown_method_is_501_in_the_protocols_shape(
    client: testing.TestClient, path: str, body: dict
) -> None:
    """RFC 9110 (9.1): a method the server does not know is 501, not Falcon's 400."""
    result = client.simulate_request("BREW", path)
    assert result.status_code == 501
    assert result.headers["content-type"] == "application/json"
    assert result.json == body


NO_SLASH = "(without the trailing slash)?"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/sklearn/",
            {
                "title": "404 Not Found",
                "description": f"no route /sklearn/; did you mean /sklearn {NO_SLASH}",
            },
        ),
        (
            "/v2/health/ready/",
            {"error": f"no route /v2/health/ready/; did you mean /v2/health/ready {NO_SLASH}"},
        ),
        ("/keras", {"title": "404 Not Found", "description": "no route /keras"}),
        ("/v2/nothing", {"error": "no route /v2/nothing"}),
    ],
)
def test_404_says_when_a_trailing_slash_is_the_cause(
    client: testing.TestClient, path: str, body: dict
) -> None:
    result = client.simulate_post(path, json={"crystalData": ROWS})
    assert (result.status_code, result.json) == (404, body)


@pytest.mark.parametrize(
    "path", ["/v2/health/live", "/v2/health/ready", "/v2/models/sklearn/ready"]
)
def test_probes_answer_head(client: testing.TestClient, path: str) -> None:
    result = client.simulate_head(path)
    assert result.status_code == 200
    assert result.content == b""


def test_server_metadata(client: testing.TestClient) -> None:
    assert client.simulate_get("/v2").json == {
        "name": "crystal-serving",
        "version": "1.0.0",
        "extensions": [
            "binary_tensor_data",
            "classification",
            "statistics",
            "model_configuration",
            "model_repository",
        ],
    }


def test_openapi_spec_is_served(client: testing.TestClient) -> None:
    spec = client.simulate_get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    assert {"/sklearn", "/pytorch", "/astromech", "/metrics"} <= set(spec["paths"])
    # Relative to the document: right on any port, and behind a proxy under any path prefix.
    (server,) = spec["servers"]
    for document, base in (
        ("http://localhost:3000/openapi.json", "http://localhost:3000/"),
        ("https://droids.example/crystal/openapi.json", "https://droids.example/crystal/"),
    ):
        assert urljoin(document, server["url"]) == base


def test_request_id_is_kept_when_safe_and_replaced_otherwise(client: testing.TestClient) -> None:
    kept = client.simulate_get("/v2/health/live", headers={"X-Request-ID": "droid-7:42"})
    assert kept.headers["X-Request-ID"] == "droid-7:42"
    for hostile in ["x" * 65, "a b", "id\u00e9", '"}{"level"']:
        replaced = client.simulate_get("/v2/health/live", headers={"X-Request-ID": hostile})
        assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", replaced.headers["X-Request-ID"])
    generated = {client.simulate_get("/v2/health/live").headers["X-Request-ID"] for _ in range(3)}
    assert len(generated) == 3


def test_one_access_log_line_per_request() -> None:
    lines = io.BytesIO()
    models = {"sklearn": FakeClassifier(SKLEARN_ROWS), "pytorch": FakeClassifier(SKLEARN_ROWS)}
    client = testing.TestClient(create_app(models, LABELS, access_log=AccessLog(lines.write)))
    answer = client.simulate_post(
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
    assert (first["version"], first["bytes"], first["client"]) == (
        "0123456789ab",
        len(answer.content),
        "127.0.0.1",
    )
    assert first["user_agent"].startswith("falcon-client")
    assert "error" not in first
    assert (second["model"], second["status"]) == ("pytorch", 422)
    assert "$.crystalData[0]" in second["error"]


def test_an_astromech_error_logs_the_model_the_body_named() -> None:
    lines = io.BytesIO()
    client = make_client(access_log=AccessLog(lines.write))
    client.simulate_post("/astromech", json={"crystalData": [[1, 2]], "model": "pytorch"})
    client.simulate_post("/astromech", json={"crystalData": [[1, 2]], "model": "keras"})
    first, second = (json.loads(line) for line in lines.getvalue().splitlines())
    assert (first["status"], first["model"], first["version"]) == (422, "pytorch", "0123456789ab")
    assert (second["status"], second["model"]) == (400, "")


def test_probes_and_scrapes_stay_out_of_the_access_log_unless_asked() -> None:
    for log_probes, expected in (
        (False, ["/sklearn"]),
        (True, ["/v2/health/live", "/v2/health/ready", "/metrics", "/sklearn"]),
    ):
        lines = io.BytesIO()
        client = make_client(
            access_log=AccessLog(lines.write),
            settings=Settings.from_env({"LOG_PROBES": str(log_probes).lower()}),
        )
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert client.simulate_get(path).status_code == 200
        client.simulate_post("/sklearn", json={"crystalData": ROWS})
        assert [json.loads(line)["path"] for line in lines.getvalue().splitlines()] == expected


class GatedClassifier(FakeClassifier):
    """Batches of more than one row wait for `gate`, on the worker's inference thread."""

    def __init__(self, rows: list[list[float]]):
        super().__init__(rows)
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > 1:
            self.entered.release()
            assert self.gate.wait(10)
        return super().predict(batch)


def test_work_beyond_the_cap_is_shed_with_503_while_probes_answer() -> None:
    """Two batches at work fill a cap of 2: a third request is refused at once, in each
    protocol's shape, probes and scrapes are answered, and once the work is done it serves."""
    model = GatedClassifier(SKLEARN_ROWS)
    metrics = Metrics()
    app = create_app(
        {"sklearn": model},
        LABELS,
        metrics=metrics,
        access_log=AccessLog(lambda line: None),
        settings=Settings.from_env({"MAX_IN_FLIGHT": "2", "OFFLOAD_BYTES": "0"}),
    )
    body = {"crystalData": ROWS}

    async def scenario() -> None:
        async with testing.ASGIConductor(app) as conductor:
            working = [
                asyncio.create_task(conductor.simulate_post("/sklearn", json=body))
                for _ in range(2)
            ]
            # The first computes on the worker's one inference thread, the second waits for it:
            # both are at work once both are in progress (their bodies came whole).
            assert await asyncio.to_thread(model.entered.acquire, timeout=10)
            while metrics.in_flight < 2:
                await asyncio.sleep(0.001)
            shed = await conductor.simulate_post("/sklearn", json=body)
            assert shed.status_code == 503
            assert shed.headers["Retry-After"] == "1"
            assert shed.json == {
                "title": "Overloaded",
                "description": "more than 2 requests at work in this worker; retry",
            }
            v2 = await conductor.simulate_post("/v2/models/sklearn/infer", json={})
            assert v2.json == {"error": "more than 2 requests at work in this worker; retry"}
            for probe in ("/v2/health/ready", "/v2/health/live", "/metrics"):
                assert (await conductor.simulate_get(probe)).status_code == 200
            model.gate.set()
            assert [(await task).status_code for task in working] == [200, 200]
            assert model.entered.acquire(timeout=10)
            assert (await conductor.simulate_post("/sklearn", json=body)).status_code == 200

    asyncio.run(scenario())
    text = testing.TestClient(app).simulate_get("/metrics").text
    assert "crystal_requests_shed_total 2.0" in text
    assert (
        'crystal_requests_total{endpoint="/sklearn",method="POST",model="sklearn",'
        'protocol="droid",status="503"} 1.0' in text
    )
    # Every request counted out as it was counted in; probes and scrapes are not counted.
    assert "crystal_requests_in_flight 0.0" in text


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
    client.simulate_options("/sklearn")
    text = client.simulate_get("/metrics").text
    sklearn = 'endpoint="/sklearn",method="{}",model="sklearn",protocol="droid",status="{}"'
    assert f"crystal_requests_total{{{sklearn.format('POST', 200)}}} 3.0" in text
    assert f"crystal_requests_total{{{sklearn.format('POST', 422)}}} 1.0" in text
    options = (
        'crystal_requests_total{endpoint="/sklearn",method="OPTIONS",model="",protocol="droid",'
        'status="200"}'
    )
    assert f"{options} 1.0" in text
    # The service's own routes belong to no protocol.
    scrape = 'endpoint="/metrics",method="GET",model="",protocol="none",status="200"'
    assert f"crystal_requests_total{{{scrape}}} 1.0" in text
    assert 'crystal_inference_duration_seconds_count{model="sklearn"} 3.0' in text
    assert 'crystal_request_rows_sum{model="sklearn"} 9.0' in text
    # SKLEARN_ROWS cycle over the 3 rows: blue, green, blue, three times.
    assert 'crystal_predictions_total{label="blue",model="sklearn"} 6.0' in text
    assert 'crystal_predictions_total{label="green",model="sklearn"} 3.0' in text
    assert 'crystal_prediction_confidence_count{model="sklearn"} 9.0' in text
    for bound, rows in (("0.6", 0), ("0.7", 3), ("0.99", 3), ("0.999", 9)):
        assert (
            f'crystal_prediction_confidence_bucket{{le="{bound}",model="sklearn"}} {rows}.0' in text
        )
    assert "crystal_requests_in_flight 0.0" in text  # a scrape does not count itself
    assert re.search(r'crystal_worker_resident_memory_bytes\{worker="\d+"\} [1-9]', text)


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


def _request(events: list[dict], content_length: int | None = None) -> CrystalRequest:
    """A request whose body arrives as these ASGI events, as gunicorn hands them to the app."""
    headers = {} if content_length is None else {"Content-Length": str(content_length)}
    pending = iter(events[1:])

    async def receive() -> dict:
        return next(pending)

    scope = testing.create_scope(method="POST", path="/sklearn", headers=headers)
    return CrystalRequest(scope, receive, first_event=events[0])


def _pieces(body: bytes, size: int) -> list[dict]:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]


def test_body_without_length_is_read_to_the_end() -> None:
    body = json.dumps({"crystalData": ROWS * 10_000}).encode()
    request = _request(_pieces(body, 65_536))
    assert asyncio.run(read_body(request, Limits(max_body_bytes=len(body)))) == body


def test_body_without_length_over_the_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 1000 bytes"):
        asyncio.run(read_body(_request(_pieces(b"x" * 200_000, 600)), Limits(max_body_bytes=1000)))


@pytest.mark.parametrize("content_length", [None, 1000])
def test_a_body_cut_short_is_a_timeout_not_a_whole_body(content_length: int | None) -> None:
    """gunicorn ends a stalled or abandoned body with http.disconnect; it must not be decoded."""
    events = [*_pieces(b"x" * 10, 5)[:1], {"type": "http.disconnect"}]
    events[0]["more_body"] = True
    with pytest.raises(RequestTimeout, match="the request body stopped before its end"):
        asyncio.run(read_body(_request(events, content_length), Limits(max_body_bytes=10_000)))


def test_a_body_dripped_past_body_timeout_is_a_timeout() -> None:
    """A byte every few milliseconds never trips TIMEOUT (a pause), but BODY_TIMEOUT bounds the
    whole body: without it such a client held its connection for as long as it pleased."""
    drip = {"type": "http.request", "body": b"x", "more_body": True}

    async def receive() -> dict:
        await asyncio.sleep(0.01)
        return drip

    scope = testing.create_scope(method="POST", path="/sklearn")
    request = CrystalRequest(scope, receive, first_event=drip)
    with pytest.raises(RequestTimeout, match=r"did not arrive whole within 0\.2 s"):
        asyncio.run(read_body(request, Limits(body_timeout=0.2)))


# --- /metrics: formats, HEAD, the model of metadata requests ------------------------------------

# What Prometheus 2 asks a target for.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def test_metrics_answer_in_openmetrics_when_asked_and_in_text_by_default(
    client: testing.TestClient,
) -> None:
    text = client.simulate_get("/metrics")
    assert text.headers["content-type"].startswith("text/plain;")
    assert "# EOF" not in text.text
    scrape = client.simulate_get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert scrape.text.endswith("# EOF\n")
    families = {family.name for family in text_string_to_metric_families(scrape.text)}
    assert {"crystal_requests", "crystal_worker_exits", "crystal_request_rows"} <= families


def test_metrics_answer_head(client: testing.TestClient) -> None:
    result = client.simulate_head("/metrics")
    assert result.status_code == 200
    assert result.content == b""
    assert result.headers["content-type"].startswith("text/plain;")


def test_model_metadata_and_readiness_are_counted_under_their_model(
    client: testing.TestClient,
) -> None:
    client.simulate_get("/v2/models/sklearn")
    client.simulate_get("/v2/models/pytorch/ready")
    client.simulate_head("/v2/models/pytorch/ready")
    client.simulate_get("/v2/models/keras")
    text = client.simulate_get("/metrics").text
    labels = 'endpoint="{}",method="{}",model="{}",protocol="v2",status="{}"'
    series = f"crystal_requests_total{{{{{labels}}}}} 1.0"
    assert series.format("/v2/models/{name}", "GET", "sklearn", 200) in text
    assert series.format("/v2/models/{name}/ready", "GET", "pytorch", 200) in text
    assert series.format("/v2/models/{name}/ready", "HEAD", "pytorch", 200) in text
    assert series.format("/v2/models/{name}", "GET", "", 404) in text  # no such model
