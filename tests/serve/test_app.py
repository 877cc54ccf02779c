"""The HTTP contract, through falcon's TestClient with fake models."""

import json

import falcon.asgi
import msgspec
import numpy as np
import pytest
from falcon import testing

import serve.app
from serve.app import create_app
from serve.errors import StartupError
from serve.protocol import AddRoute, Examples, InferencePath
from serve.registry import ModelRegistry
from support.examples import ROWS
from support.fakes import (
    LABELS,
    PYTORCH_ROWS,
    SKLEARN_ROWS,
    CrashingClassifier,
    FailingClassifier,
    FakeClassifier,
)


@pytest.fixture
def models() -> dict[str, FakeClassifier]:
    return {"sklearn": FakeClassifier(SKLEARN_ROWS), "pytorch": FakeClassifier(PYTORCH_ROWS)}


@pytest.fixture
def client(models: dict[str, FakeClassifier]) -> testing.TestClient:
    return testing.TestClient(create_app(models, LABELS))


def strict_json(result: testing.Result) -> object:
    """Parses with a parser that refuses NaN and Infinity, as a strict client would."""
    assert result.headers["content-type"] == "application/json"
    return msgspec.json.decode(result.content)


@pytest.mark.parametrize(("path", "rows"), [("/sklearn", SKLEARN_ROWS), ("/pytorch", PYTORCH_ROWS)])
def test_model_endpoints(client: testing.TestClient, path: str, rows: list) -> None:
    result = client.simulate_post(path, json={"crystalData": ROWS})
    assert result.status_code == 200
    expected = [rows[i % len(rows)] for i in range(3)]
    assert strict_json(result) == {
        "prediction": [LABELS[int(np.argmax(r))] for r in expected],
        "scores": [dict(zip(LABELS, r, strict=True)) for r in expected],
    }


def test_scores_keep_full_float64_precision(client: testing.TestClient) -> None:
    result = client.simulate_post("/sklearn", json={"crystalData": ROWS[:1]})
    assert result.json["scores"][0]["yellow"] == 1.3424273700413213e-08
    assert result.json["scores"][0]["green"] == 0.007223053394387628


def test_rows_reach_the_model_in_order_as_float64(
    client: testing.TestClient, models: dict[str, FakeClassifier]
) -> None:
    made = {name: len(model.batches) for name, model in models.items()}  # at the app's creation
    client.simulate_post("/pytorch", json={"crystalData": ROWS})
    (batch,) = models["pytorch"].batches[made["pytorch"] :]
    assert batch.dtype == np.float64
    assert batch.tolist() == ROWS
    assert len(models["sklearn"].batches) == made["sklearn"]


@pytest.mark.parametrize("model", ["sklearn", "pytorch"])
def test_astromech_picks_the_model(
    client: testing.TestClient, models: dict[str, FakeClassifier], model: str
) -> None:
    made = len(models[model].batches)  # at the app's creation: warm-up, the spec's example
    result = client.simulate_post("/astromech", json={"crystalData": ROWS, "model": model})
    direct = client.simulate_post(f"/{model}", json={"crystalData": ROWS})
    assert result.status_code == 200
    assert result.content == direct.content
    assert len(models[model].batches) == made + 2  # /astromech, direct


def test_no_content_type_is_read_as_json(client: testing.TestClient) -> None:
    result = client.simulate_post("/sklearn", body=json.dumps({"crystalData": ROWS}))
    assert result.status_code == 200
    assert len(result.json["prediction"]) == 3


def test_corrupt_data_is_422_with_json_path(client: testing.TestClient) -> None:
    result = client.simulate_post("/sklearn", json={"crystalData": [ROWS[0], ROWS[1], [1, 2, 3]]})
    assert result.status_code == 422
    body = strict_json(result)
    assert body["title"] == "Invalid crystal data"
    assert "$.crystalData[2]" in body["description"]


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"[1, 2]", b"null", b'{"crystalData": [[NaN, 1, 2, 3]]}']
)
@pytest.mark.parametrize("path", ["/sklearn", "/pytorch"])
def test_bad_bodies_are_422(client: testing.TestClient, path: str, raw: bytes) -> None:
    result = client.simulate_post(path, body=raw, content_type="application/json")
    assert result.status_code == 422
    assert "description" in strict_json(result)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"crystalData": [[1, 2, 3, 4]], "model": "\xff\xfe"}',
        b'{"crystalData": [[1, 2, 3, 4]], "\xc3\x28": 1, "model": "sklearn"}',
        b'{"crystalData": [[1, 2, 3, "\xed\xa0\x80"]], "model": "sklearn"}',
        b"\xff\xfe{}",
        b"\xff",
        b"\xc3\x28",
        b"\xed\xa0\x80",
    ],
)
@pytest.mark.parametrize("path", ["/sklearn", "/pytorch", "/astromech"])
def test_invalid_utf8_anywhere_is_corrupt_data(
    client: testing.TestClient, path: str, raw: bytes
) -> None:
    """Wherever it stands, even where the model is named: the body is refused as a whole."""
    result = client.simulate_post(path, body=raw, content_type="application/json")
    assert result.status_code == 422
    body = strict_json(result)
    assert body["title"] == "Invalid crystal data"
    assert "not valid UTF-8" in body["description"]


@pytest.mark.parametrize("model", ["SKLEARN", "", None, 3, ["pytorch"], "keras"])
def test_astromech_invalid_model_is_400(client: testing.TestClient, model: object) -> None:
    result = client.simulate_post("/astromech", json={"crystalData": ROWS, "model": model})
    assert result.status_code == 400
    assert strict_json(result)["title"] == "Invalid model"


def test_astromech_model_is_checked_before_data(client: testing.TestClient) -> None:
    result = client.simulate_post("/astromech", json={"crystalData": [[1, 2]], "model": "keras"})
    assert result.status_code == 400
    missing = client.simulate_post("/astromech", json={"crystalData": "junk"})
    assert missing.status_code == 400


def test_failed_prediction_is_500_without_trace(caplog: pytest.LogCaptureFixture) -> None:
    models = {"sklearn": FailingClassifier(SKLEARN_ROWS), "pytorch": FakeClassifier(PYTORCH_ROWS)}
    client = testing.TestClient(create_app(models, LABELS))
    result = client.simulate_post("/astromech", json={"crystalData": ROWS, "model": "sklearn"})
    assert result.status_code == 500
    body = strict_json(result)
    assert body["title"] == "Prediction failed"
    assert "boom" not in result.text and "Traceback" not in result.text
    assert "RuntimeError: boom" in caplog.text


def test_unexpected_error_is_500_json_without_detail() -> None:
    models = {"sklearn": CrashingClassifier(SKLEARN_ROWS), "pytorch": FakeClassifier(PYTORCH_ROWS)}
    client = testing.TestClient(create_app(models, LABELS))
    result = client.simulate_post("/sklearn", json={"crystalData": ROWS})
    assert result.status_code == 500
    assert strict_json(result) == {
        "title": "Internal Server Error",
        "description": "the server failed to answer",
    }


def test_unknown_path_is_404_json(client: testing.TestClient) -> None:
    result = client.simulate_post("/tensorflow", json={"crystalData": ROWS})
    assert result.status_code == 404
    strict_json(result)


def test_labels_must_match_model_width() -> None:
    with pytest.raises(StartupError, match="3 outputs but there are 2 labels"):
        create_app({"sklearn": FakeClassifier(SKLEARN_ROWS)}, ("blue", "green"))


class EchoProtocol:
    """A third front door, as a new protocol module would add one: its route, its error shape,
    its path item."""

    name = "echo"
    namespace = "/echo"

    def __init__(self, path: InferencePath):
        self._registry = path.registry

    def add_routes(self, add: AddRoute) -> None:
        add("/echo/{name}", EchoResource(self._registry))

    def error_body(self, title: str, description: str) -> bytes:
        return json.dumps({"echo_error": description}).encode()

    def openapi_paths(self, examples: Examples) -> dict:
        return {"/echo/{name}": {"get": {"responses": {"200": {"description": "the model"}}}}}


class EchoResource:
    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    async def on_get(self, req: object, resp: falcon.asgi.Response, name: str) -> None:
        resp.media = {"model": name, "version": self._registry.model(name).version}


def test_a_protocol_is_one_entry_in_protocols(
    models: dict[str, FakeClassifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its routes, its error shape (for its routes, whatever the error, and for unmatched paths
    under its namespace) and its OpenAPI paths, from one entry; the others keep theirs."""
    monkeypatch.setattr(serve.app, "PROTOCOLS", (*serve.app.PROTOCOLS, EchoProtocol))
    client = testing.TestClient(create_app(models, LABELS))
    assert client.simulate_get("/echo/sklearn").json == {
        "model": "sklearn",
        "version": "0123456789ab",
    }
    assert client.simulate_get("/echo/keras").json == {"echo_error": "no model named 'keras'"}
    assert client.simulate_post("/echo/sklearn").json == {
        "echo_error": "POST is not allowed on /echo/sklearn; use GET, OPTIONS"
    }
    assert client.simulate_get("/echo").json == {"echo_error": "no route /echo"}
    assert client.simulate_get("/echo/a/b").json == {"echo_error": "no route /echo/a/b"}
    assert client.simulate_get("/echoes").json == {
        "title": "404 Not Found",
        "description": "no route /echoes",
    }
    assert client.simulate_get("/v2/nothing").json == {"error": "no route /v2/nothing"}
    assert "/echo/{name}" in client.simulate_get("/openapi.json").json["paths"]
    scraped = client.simulate_get("/metrics").text
    assert 'endpoint="/echo/{name}",method="GET",model="",protocol="echo",status="200"' in scraped
