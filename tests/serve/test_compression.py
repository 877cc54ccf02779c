"""gzip both ways: answers above GZIP_MIN_BYTES for clients that accept gzip, and request bodies
bounded as sent and as inflated; any other content encoding is refused."""

import asyncio
import gzip
import json
import zlib

import falcon.asgi
import pytest
from falcon import testing

from serve.app import create_app
from serve.compression import ResponseCompression, accepts_gzip
from serve.metrics import Metrics
from serve.runner import BatchRunner
from serve.settings import Limits, Settings
from support.examples import ROW
from support.fakes import LABELS, SKLEARN_ROWS, FakeClassifier


@pytest.fixture
def client() -> testing.TestClient:
    models = {"sklearn": FakeClassifier(SKLEARN_ROWS), "pytorch": FakeClassifier(SKLEARN_ROWS)}
    app = create_app(
        models,
        LABELS,
        limits=Limits(max_body_bytes=10_000, max_rows=1000),
        settings=Settings.from_env({"GZIP_MIN_BYTES": "1000"}),
    )
    return testing.TestClient(app)


def post(client: testing.TestClient, rows: int, **headers: str) -> testing.Result:
    return client.simulate_post("/sklearn", json={"crystalData": [ROW] * rows}, headers=headers)


def test_large_answers_are_gzipped_for_clients_that_accept_it(client: testing.TestClient) -> None:
    plain = post(client, 50)
    assert len(plain.content) > 1000
    assert "Content-Encoding" not in plain.headers
    assert plain.headers["Vary"] == "Accept-Encoding"
    packed = post(client, 50, **{"Accept-Encoding": "br;q=1.0, gzip;q=0.5"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert len(packed.content) < len(plain.content) / 4
    assert gzip.decompress(packed.content) == plain.content


def test_an_answer_is_compressed_even_when_the_cap_on_work_is_full() -> None:
    """Compressing an answer is the end of work already admitted: it never answers 503."""
    runner = BatchRunner(0, 1, Metrics())
    runner.working = 1  # another request holds the only slot
    compression = ResponseCompression(1000, runner)
    resp = falcon.asgi.Response()
    resp.data = json.dumps({"scores": [ROW] * 100}).encode()
    request = testing.create_asgi_req(headers={"Accept-Encoding": "gzip"})
    asyncio.run(compression.process_response(request, resp, None, True))
    assert gzip.decompress(resp.data) == json.dumps({"scores": [ROW] * 100}).encode()


def test_small_answers_are_sent_as_they_are(client: testing.TestClient) -> None:
    small = post(client, 1, **{"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers
    assert "Vary" not in small.headers
    assert json.loads(small.content)["prediction"] == ["blue"]


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("deflate, gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("*;q=0.1, gzip;q=0", False),
        ("br", False),
        ("", False),
        (None, False),
        ("gzip;q=nonsense", False),
    ],
)
def test_accept_encoding(header: str | None, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


@pytest.mark.parametrize("path", ["/sklearn", "/v2/models/sklearn/infer"])
def test_gzip_request_bodies_are_inflated(client: testing.TestClient, path: str) -> None:
    if path == "/sklearn":
        document = {"crystalData": [ROW] * 3}
    else:
        document = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
    result = client.simulate_post(
        path,
        body=gzip.compress(json.dumps(document).encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert result.status_code == 200


def test_a_small_body_that_inflates_past_the_limit_is_413_unread(
    client: testing.TestClient,
) -> None:
    bomb = gzip.compress(b" " * 10_000_000)  # 10 MB of spaces in about 10 KB... within the limit
    assert len(bomb) < 10_000
    result = client.simulate_post("/sklearn", body=bomb, headers={"Content-Encoding": "gzip"})
    assert result.status_code == 413
    assert result.json["description"] == "body inflates past the limit of 10000 bytes"


def test_a_compressed_body_over_the_limit_is_413(client: testing.TestClient) -> None:
    noise = bytes(range(256)) * 100
    result = client.simulate_post(
        "/sklearn", body=zlib.compress(noise) * 5, headers={"Content-Encoding": "gzip"}
    )
    assert result.status_code in (413, 422)


@pytest.mark.parametrize(
    ("path", "status", "key"),
    [("/sklearn", 422, "description"), ("/v2/models/sklearn/infer", 400, "error")],
)
@pytest.mark.parametrize(
    "body",
    [
        b"not gzip at all",
        gzip.compress(b'{"crystalData": []}', mtime=0)[:-6],
        gzip.compress(b"{}", mtime=0) + b"x",
    ],
)
def test_corrupt_gzip_is_corrupt_data(
    client: testing.TestClient, path: str, status: int, key: str, body: bytes
) -> None:
    result = client.simulate_post(path, body=body, headers={"Content-Encoding": "gzip"})
    assert result.status_code == status
    assert result.json[key].startswith("body is not valid gzip")


@pytest.mark.parametrize("encoding", ["br", "deflate", "compress", "gzip, br"])
def test_other_content_encodings_are_415(client: testing.TestClient, encoding: str) -> None:
    body = json.dumps({"crystalData": [ROW]}).encode()
    result = client.simulate_post("/sklearn", body=body, headers={"Content-Encoding": encoding})
    assert result.status_code == 415
    assert result.json["title"] == "Unsupported content encoding"
    v2 = client.simulate_post(
        "/v2/models/sklearn/infer", body=body, headers={"Content-Encoding": encoding}
    )
    assert v2.status_code == 415
    assert "is not supported; send gzip or identity" in v2.json["error"]
