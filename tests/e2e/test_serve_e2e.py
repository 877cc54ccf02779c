"""The real server: `python -m serve` under gunicorn with 2 workers, on a free loopback port."""

import json
import signal
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from harness.server import REPO_ROOT, ServerProcess
from serve.manifest import read_manifest
from support.examples import ROWS
from support.served import in_flight, strict_json, wait_until

pytestmark = pytest.mark.e2e

LABELS = ["blue", "green", "yellow"]
MODELS = [model_file.name for model_file in read_manifest(REPO_ROOT / "onnx_models")]


@pytest.mark.parametrize("model", MODELS)
def test_model_endpoints(server: ServerProcess, model: str) -> None:
    response = requests.post(f"{server.url}/{model}", json={"crystalData": ROWS}, timeout=10)
    assert response.status_code == 200
    body = strict_json(response)
    assert len(body["prediction"]) == len(body["scores"]) == 3
    for label, scores in zip(body["prediction"], body["scores"], strict=True):
        assert list(scores) == LABELS
        assert label == max(scores, key=scores.get)
        assert abs(sum(scores.values()) - 1) < 1e-6


@pytest.mark.parametrize("model", MODELS)
def test_astromech_matches_direct_endpoint(server: ServerProcess, model: str) -> None:
    direct = requests.post(f"{server.url}/{model}", json={"crystalData": ROWS}, timeout=10)
    routed = requests.post(
        f"{server.url}/astromech", json={"crystalData": ROWS, "model": model}, timeout=10
    )
    assert routed.status_code == 200
    assert routed.content == direct.content


def test_body_without_content_type(server: ServerProcess) -> None:
    response = requests.post(
        server.url + "/sklearn", data=json.dumps({"crystalData": ROWS}).encode(), timeout=10
    )
    assert "Content-Type" not in response.request.headers
    assert response.status_code == 200


INVALID_DATA = "Invalid crystal data"
INVALID_MODEL = "Invalid model"


@pytest.mark.parametrize(
    ("path", "body", "status", "title", "description"),
    [
        (
            "/sklearn",
            b'{"crystalData": [[1, 2, 3]]}',
            422,
            INVALID_DATA,
            "Expected `array` of length 4 - at `$.crystalData[0]`",
        ),
        (
            "/pytorch",
            b'{"crystalData": [[1, 2, 3, 1e39]]}',
            422,
            INVALID_DATA,
            "Expected `float` <= 1000000000000.0 - at `$.crystalData[0][3]`",
        ),
        (
            "/pytorch",
            b'{"crystalData": [[1, 2, 3, NaN]]}',
            422,
            INVALID_DATA,
            "body is not valid JSON: JSON is malformed: invalid character (byte 27)",
        ),
        (
            "/sklearn",
            b'{"crystalData": [[1, 2, 3, 1e400]]}',
            422,
            INVALID_DATA,
            "Number out of range - at `$.crystalData[0][3]`",
        ),
        (
            "/sklearn",
            b'{"crystalData": ',
            422,
            INVALID_DATA,
            "body is not valid JSON: Input data was truncated",
        ),
        (
            "/astromech",
            b'{"crystalData": [[1, 2, 3]], "model": "Sklearn"}',
            400,
            INVALID_MODEL,
            'model must be "pytorch" or "sklearn", got "Sklearn"',
        ),
        (
            "/astromech",
            b'{"crystalData": [[1, 2, 3, 4]]}',
            400,
            INVALID_MODEL,
            'model is missing; expected "pytorch" or "sklearn"',
        ),
        (
            "/astromech",
            b'{"crystalData": [[1, 2, 3]], "model": "sklearn"}',
            422,
            INVALID_DATA,
            "Expected `array` of length 4 - at `$.crystalData[0]`",
        ),
        ("/keras", b'{"crystalData": [[1, 2, 3, 4]]}', 404, "404 Not Found", "no route /keras"),
    ],
)
def test_error_statuses(
    server: ServerProcess, path: str, body: bytes, status: int, title: str, description: str
) -> None:
    response = requests.post(server.url + path, data=body, timeout=10)
    assert response.status_code == status
    assert strict_json(response) == {"title": title, "description": description}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/astromech", "POST, OPTIONS"), ("POST", "/metrics", "GET, HEAD, OPTIONS")],
)
def test_wrong_method_is_405_naming_the_allowed_ones(
    server: ServerProcess, method: str, path: str, allowed: str
) -> None:
    """Through gunicorn as in-process (test_operate.py): the JSON answer and its Allow header."""
    response = requests.request(method, server.url + path, timeout=10)
    assert response.status_code == 405
    assert strict_json(response) == {
        "title": "405 Method Not Allowed",
        "description": f"{method} is not allowed on {path}; use {allowed}",
    }
    assert response.headers["Allow"] == allowed


def test_an_unknown_method_is_501(server: ServerProcess) -> None:
    """Through gunicorn's parser as in-process (test_operate.py)."""
    response = requests.request("BREW", server.url + "/sklearn", timeout=10)
    assert response.status_code == 501
    assert strict_json(response) == {
        "title": "501 Not Implemented",
        "description": "BREW is not a method this server implements",
    }


@dataclass(frozen=True)
class WholeRun:
    """One server from its start to its exit (see `whole_run`)."""

    live: ServerProcess
    metrics_folder: Path
    metrics_files_at_start: list[str]
    in_flight_answer: bytes
    fresh_answer: bytes
    exit_code: int


ONE_ROW = json.dumps({"crystalData": [[0.92, 0.12, 0.31, 0.09]]}).encode()


def read_all(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    return answer


@pytest.fixture(scope="module")
def whole_run() -> Iterator[WholeRun]:
    """The service as shipped, started, sent a prediction, a corrupt one and a probe, then a
    prediction whose body is still arriving when the server gets SIGTERM: the rest of the body
    is sent once every worker says it is shutting down. Then it exits."""
    live = ServerProcess().wait_ready()
    try:
        live.wait_idle()
        (folder,) = Path(tempfile.gettempdir()).glob(f"crystal-metrics-{live.process.pid}-*")
        files_at_start = sorted(path.name for path in folder.iterdir())
        requests.post(live.url + "/sklearn", json={"crystalData": [[1, 2, 3, 4]]}, timeout=10)
        requests.post(live.url + "/sklearn", json={"crystalData": [[1, 2]]}, timeout=10)
        requests.get(live.url + "/v2/health/ready", timeout=10)
        body = json.dumps({"crystalData": ROWS}).encode()
        head = (
            f"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        # Accepted before the SIGTERM, its request sent after it (as a reload's would be).
        fresh = socket.create_connection(("127.0.0.1", live.port), timeout=10)
        with fresh, socket.create_connection(("127.0.0.1", live.port), timeout=10) as client:
            client.sendall(head + body[:10])
            wait_until(lambda: in_flight(live) == 1, "the request in the app, awaiting its body")
            workers = len(live.worker_pids())
            live.process.send_signal(signal.SIGTERM)
            wait_until(
                lambda: live.output.count('"message":"Worker shutting down..."') == workers,
                "every worker shutting down, the request still in flight",
            )
            fresh.sendall(head.replace(b"%d" % len(body), b"%d" % len(ONE_ROW)) + ONE_ROW)
            client.sendall(body[10:])
            answer, fresh_answer = read_all(client), read_all(fresh)
        code = live.process.wait(timeout=30)  # already signalled: a second SIGTERM could end it
    except BaseException:
        live.stop()
        raise
    yield WholeRun(live, folder, files_at_start, answer, fresh_answer, code)


def test_sigterm_answers_a_request_on_a_connection_accepted_before_it(
    whole_run: WholeRun,
) -> None:
    """Closed as idle, it answered nothing: its request got no answer while the next workers
    (after a reload) or the next replica were ready to give one."""
    assert whole_run.fresh_answer.startswith(b"HTTP/1.1 200 "), whole_run.fresh_answer


def test_sigterm_finishes_in_flight_request(whole_run: WholeRun) -> None:
    assert whole_run.in_flight_answer.startswith(b"HTTP/1.1 200 "), whole_run.in_flight_answer
    assert whole_run.exit_code == 0
    assert "Shutting down: Master" in whole_run.live.output
    with pytest.raises(requests.ConnectionError):
        requests.post(whole_run.live.url + "/sklearn", json={"crystalData": ROWS}, timeout=2)


def test_own_metrics_folder_is_made_at_start_and_removed_at_exit(whole_run: WholeRun) -> None:
    assert whole_run.metrics_files_at_start
    assert whole_run.exit_code == 0
    assert not whole_run.metrics_folder.exists()


def test_every_line_of_a_full_run_is_json(whole_run: WholeRun) -> None:
    assert whole_run.exit_code == 0
    lines = [json.loads(line) for line in whole_run.live.output.splitlines()]
    loggers = {line["logger"] for line in lines}
    assert loggers == {"serve", "gunicorn.error", "serve.access"}
    assert {"ts", "level", "logger", "message", "pid"} <= set.intersection(*map(set, lines))
    messages = [line["message"] for line in lines]
    tokens_off = "bearer tokens off (AUTH_TOKENS_FILE unset): the models answer every caller"
    assert messages[:4] == ["model", "model", tokens_off, "Starting gunicorn 27.0.1"]
    assert messages[-1] == "Shutting down: Master"
    manifest = json.loads((REPO_ROOT / "onnx_models" / "manifest.json").read_text())["models"]
    for line in lines[:2]:
        entry = manifest[line["model"]]
        assert line["version"] == entry["sha256"][:12]
        assert line["source_sha256"] == entry["source_sha256"]
        assert (line["opsets"], line["parity"]) == (entry["opsets"], entry["parity"])
    # The four predictions; the probe and the scrapes are left out of the access log.
    assert messages.count("request") == 4


@pytest.fixture(scope="module")
def handout_server(handout_models: Path) -> Iterator[ServerProcess]:
    """The data team's own models, exported by the export's command line, served by the real
    server."""
    live = ServerProcess({"MODELS_DIR": str(handout_models)}).wait_ready()
    yield live
    live.stop()


# The handout README's published example, as predict_proba returns it in float64.
PUBLISHED = [
    [0.9927769331813387, 0.007223053394387628, 1.3424273700413213e-08],
    [0.9924667517303258, 0.007533175370560812, 7.28991131694263e-08],
    [0.9954911544544908, 0.004508736468972019, 1.0907653719137907e-07],
]


def test_handout_models_through_the_server_match_the_frameworks(
    handout_server: ServerProcess, handout_dir: Path
) -> None:
    import torch

    from export.sources import load_pytorch, load_sklearn

    rows = np.concatenate([np.array(ROWS), np.random.default_rng(11).uniform(0, 1, size=(500, 4))])
    payload = {"crystalData": rows.tolist()}
    sklearn_answer = requests.post(handout_server.url + "/sklearn", json=payload, timeout=30)
    pytorch_answer = requests.post(
        handout_server.url + "/astromech", json={**payload, "model": "pytorch"}, timeout=30
    )
    sklearn_scores = np.array([list(s.values()) for s in sklearn_answer.json()["scores"]])
    pytorch_scores = np.array([list(s.values()) for s in pytorch_answer.json()["scores"]])

    assert sklearn_scores[:3].tolist() == PUBLISHED  # to the last bit
    native_sklearn = load_sklearn(handout_dir / "sklearn.model").model.predict_proba(rows)
    assert np.abs(sklearn_scores - native_sklearn).max() <= 1e-12
    network = load_pytorch(handout_dir / "pytorch.model").model
    with torch.no_grad():
        native_pytorch = network(torch.tensor(rows, dtype=torch.float32)).numpy()
    assert np.abs(pytorch_scores - native_pytorch).max() <= 1e-6
    assert sklearn_answer.json()["prediction"] == [LABELS[i] for i in native_sklearn.argmax(axis=1)]
    assert pytorch_answer.json()["prediction"] == [LABELS[i] for i in native_pytorch.argmax(axis=1)]
