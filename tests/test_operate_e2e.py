"""Operations through the real multi-worker server: metrics, logs, spec, limits."""

import json
import os
import re
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from live_server import REPO_ROOT, LiveServer
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_spec_validator import validate

pytestmark = pytest.mark.e2e

ROWS = [[0.92, 0.12, 0.31, 0.09], [0.31, 0.54, 0.78, 0.17], [0.38, 0.04, 0.21, 0.98]]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    live = LiveServer({"MAX_BODY_BYTES": str(16 * 1024 * 1024)}).wait_ready()
    yield live
    live.stop()


def worker_pids(live: LiveServer) -> list[int]:
    pid = live.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(int(child) for child in children)


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def counter(metrics: str, endpoint: str, model: str, status: int) -> float:
    pattern = (
        rf'^crystal_requests_total\{{endpoint="{re.escape(endpoint)}",model="{model}",'
        rf'status="{status}"\}} (\S+)$'
    )
    match = re.search(pattern, metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_exactly_across_workers_and_worker_deaths() -> None:
    live = LiveServer().wait_ready()
    try:
        for _ in range(30):
            assert requests.post(live.url + "/sklearn", json={"crystalData": ROWS}, timeout=10).ok
        for _ in range(7):
            requests.post(live.url + "/pytorch", json={"crystalData": [[1]]}, timeout=10)
        before = worker_pids(live)
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids = worker_pids(live)
            if len(pids) == 2 and before[0] not in pids:
                break
            time.sleep(0.1)
        for _ in range(20):
            assert requests.post(live.url + "/sklearn", json={"crystalData": ROWS}, timeout=10).ok
        text = requests.get(live.url + "/metrics", timeout=10).text
        assert counter(text, "/sklearn", "sklearn", 200) == 50
        assert counter(text, "/pytorch", "pytorch", 422) == 7
        assert re.search(r'^crystal_request_rows_sum\{model="sklearn"\} 150\.0$', text, re.M)
        assert re.search(r"^crystal_requests_in_flight 1\.0$", text, re.M)
    finally:
        assert live.stop() == 0


def test_own_metrics_folder_is_made_at_start_and_removed_at_exit() -> None:
    def folders() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob("crystal-metrics-*"))

    existing = folders()
    live = LiveServer().wait_ready()
    (made,) = folders() - existing
    assert any(made.iterdir())
    assert live.stop() == 0
    assert not made.exists()


def test_configured_metrics_folder_is_emptied_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"stale samples of a previous run")
    live = LiveServer({"PROMETHEUS_MULTIPROC_DIR": str(folder)}).wait_ready()
    try:
        assert not (folder / "counter_999999.db").exists()
        requests.post(live.url + "/sklearn", json={"crystalData": ROWS}, timeout=10)
        text = requests.get(live.url + "/metrics", timeout=10).text
        assert counter(text, "/sklearn", "sklearn", 200) == 1
        assert any(folder.glob("counter_*.db"))
    finally:
        assert live.stop() == 0


def test_request_log_line(server: LiveServer) -> None:
    requests.post(
        server.url + "/astromech",
        json={"crystalData": ROWS, "model": "pytorch"},
        headers={"X-Request-ID": "droid-r2d2-0001"},
        timeout=10,
    )
    deadline = time.monotonic() + 5
    line = None
    while line is None and time.monotonic() < deadline:
        line = next((x for x in server.output.splitlines() if "droid-r2d2-0001" in x), None)
        time.sleep(0.05)
    entry = json.loads(line)
    assert entry["message"] == "request"
    assert entry["method"] == "POST" and entry["path"] == "/astromech"
    assert (entry["model"], entry["rows"], entry["status"]) == ("pytorch", 3, 200)
    assert entry["duration_ms"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


def test_every_response_validates_against_the_served_spec(server: LiveServer) -> None:
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    validate(spec)
    spec["servers"] = [{"url": server.url}]
    openapi = OpenAPI.from_dict(spec)
    calls = [
        ("post", "/sklearn", {"crystalData": ROWS}, 200),
        ("post", "/pytorch", {"crystalData": ROWS}, 200),
        ("post", "/astromech", {"crystalData": ROWS, "model": "sklearn"}, 200),
        ("post", "/astromech", {"crystalData": ROWS, "model": "SKLEARN"}, 400),
        ("post", "/sklearn", {"crystalData": [[1, 2, 3]]}, 422),
        ("post", "/pytorch", {"crystalData": [[1, 2, 3, 1e39]]}, 422),
        ("post", "/sklearn", {"crystalData": [[0.5] * 4] * 100_001}, 413),
        (
            "post",
            "/v2/models/pytorch/infer",
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROWS[0]}]},
            200,
        ),
        ("post", "/v2/models/sklearn/infer", {"inputs": []}, 400),
        ("post", "/v2/models/keras/infer", {"inputs": []}, 404),
        ("get", "/v2", None, 200),
        ("get", "/v2/health/live", None, 200),
        ("get", "/v2/health/ready", None, 200),
        ("get", "/v2/models/sklearn", None, 200),
        ("get", "/v2/models/pytorch/ready", None, 200),
        ("get", "/v2/models/keras", None, 404),
        ("get", "/v2/models/keras/ready", None, 404),
        ("get", "/metrics", None, 200),
        ("get", "/openapi.json", None, 200),
    ]
    for method, path, body, status in calls:
        response = requests.request(method, server.url + path, json=body, timeout=30)
        assert response.status_code == status, (path, response.text[:200])
        openapi.validate_response(
            RequestsOpenAPIRequest(response.request), RequestsOpenAPIResponse(response)
        )


def test_hundred_thousand_rows_pass_and_one_more_is_413(server: LiveServer) -> None:
    rows = [[0.25, 0.5, 0.75, 1.0]] * 100_000
    response = requests.post(server.url + "/pytorch", json={"crystalData": rows}, timeout=60)
    assert response.status_code == 200
    assert len(response.json()["prediction"]) == 100_000
    too_many = requests.post(
        server.url + "/pytorch", json={"crystalData": [*rows, rows[0]]}, timeout=60
    )
    assert too_many.status_code == 413
    assert too_many.json()["description"] == "crystalData has 100001 rows, the limit is 100000"


def test_oversized_declared_body_is_refused_without_growing_memory(server: LiveServer) -> None:
    rss_before = {pid: rss_kib(pid) for pid in worker_pids(server)}
    body = b" " * (100 * 1024 * 1024)
    for _ in range(2):  # both workers, most likely
        response = requests.post(server.url + "/sklearn", data=body, timeout=60)
        assert response.status_code == 413
        assert "exceeds the limit of 16777216" in response.json()["description"]
    for pid, before in rss_before.items():
        assert rss_kib(pid) - before < 10 * 1024, "a worker grew by more than 10 MiB"


def test_chunked_body_is_read_and_bounded(server: LiveServer) -> None:
    body = json.dumps({"crystalData": ROWS}).encode()
    response = requests.post(server.url + "/sklearn", data=iter([body[:10], body[10:]]), timeout=10)
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert response.status_code == 200
    assert len(response.json()["prediction"]) == 3

    def endless() -> Iterator[bytes]:
        for _ in range(40):  # 20 MiB, past the 16 MiB limit
            yield b" " * (512 * 1024)

    response = requests.post(server.url + "/sklearn", data=endless(), timeout=60)
    assert response.status_code == 413


def test_refuses_unknown_routes_and_methods_as_json(server: LiveServer) -> None:
    assert requests.get(server.url + "/v3", timeout=10).json()["title"] == "404 Not Found"
    assert requests.post(server.url + "/metrics", timeout=10).status_code == 405


def test_spec_file_is_valid() -> None:
    validate(json.loads((REPO_ROOT / "serve" / "openapi.json").read_text()))
