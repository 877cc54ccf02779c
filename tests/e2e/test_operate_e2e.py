"""Operations through the real multi-worker server: metrics, logs, spec, limits."""

import json
import os
import re
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import validate

from harness.server import REPO_ROOT, ServerProcess, rss_mb
from serve.app import PROTOCOLS
from serve.classifier import OnnxClassifier
from serve.labels import load_labels
from serve.manifest import read_manifest
from serve.metrics import Metrics
from serve.openapi import build_spec
from serve.protocol import InferencePath
from serve.registry import ModelRegistry
from serve.runner import BatchRunner
from serve.settings import Limits
from support.examples import ROWS
from support.served import check_answers_against_the_served_spec

pytestmark = pytest.mark.e2e

COMMITTED_MODELS = REPO_ROOT / "onnx_models"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    live = ServerProcess({"MAX_BODY_BYTES": str(16 * 1024 * 1024)}).wait_ready()
    yield live
    live.stop()


def counter(metrics: str, endpoint: str, model: str, status: int) -> float:
    pattern = (
        rf'^crystal_requests_total\{{endpoint="{re.escape(endpoint)}",method="POST",'
        rf'model="{model}",protocol="droid",status="{status}"\}} (\S+)$'
    )
    match = re.search(pattern, metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def scrape_until(live: ServerProcess, done: Callable[[str], bool], seconds: float = 5.0) -> str:
    """A scrape shows other workers as of their last publication (METRICS_FLUSH_SECONDS)."""
    deadline = time.monotonic() + seconds
    while True:
        text = requests.get(live.url + "/metrics", timeout=10).text
        if done(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def live_workers(text: str) -> list[int]:
    """The workers a scrape reports as live (their resident memory gauge), sorted."""
    memory = re.findall(r'^crystal_worker_resident_memory_bytes\{worker="(\d+)"\}', text, re.M)
    return sorted(int(pid) for pid in memory)


def test_metrics_count_exactly_across_workers_and_worker_deaths() -> None:
    """A SIGKILLed worker keeps what it published; it loses at most METRICS_FLUSH_SECONDS."""
    live = ServerProcess({"METRICS_FLUSH_SECONDS": "0.1"}).wait_ready()
    try:
        for _ in range(30):
            assert requests.post(live.url + "/sklearn", json={"crystalData": ROWS}, timeout=10).ok
        for _ in range(7):
            requests.post(live.url + "/pytorch", json={"crystalData": [[1]]}, timeout=10)
        time.sleep(0.5)  # past the workers' next publication
        before = live.worker_pids()
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids = live.worker_pids()
            if len(pids) == 2 and before[0] not in pids:
                break
            time.sleep(0.1)
        for _ in range(20):
            assert requests.post(live.url + "/sklearn", json={"crystalData": ROWS}, timeout=10).ok
        # Until the replacement worker has published once (it may have served none of the 20).
        text = scrape_until(
            live,
            lambda text: (
                counter(text, "/sklearn", "sklearn", 200) == 50
                and live_workers(text) == live.worker_pids()
            ),
        )
        assert counter(text, "/sklearn", "sklearn", 200) == 50
        assert counter(text, "/pytorch", "pytorch", 422) == 7
        assert re.search(r'^crystal_worker_exits_total\{reason="crash"\} 1\.0$', text, re.M)
        assert live_workers(text) == live.worker_pids()
        assert re.search(r'^crystal_request_rows_sum\{model="sklearn"\} 150\.0$', text, re.M)
        assert re.search(r"^crystal_requests_in_flight 0\.0$", text, re.M)  # not the scrape
    finally:
        assert live.stop() == 0


def test_own_metrics_folder_is_made_at_start_and_removed_at_exit() -> None:
    live = ServerProcess().wait_ready()
    (made,) = Path(tempfile.gettempdir()).glob(f"crystal-metrics-{live.process.pid}-*")
    assert any(made.iterdir())
    assert live.stop() == 0
    assert not made.exists()


def test_metrics_dir_gets_a_private_folder_and_foreign_files_are_left_alone(
    tmp_path: Path,
) -> None:
    """Two replicas sharing METRICS_DIR (missing at first) each count their own requests."""
    parent = tmp_path / "not" / "made" / "yet"
    first = ServerProcess({"METRICS_DIR": str(parent)}).wait_ready()
    second = ServerProcess({"METRICS_DIR": str(parent)}).wait_ready()
    try:
        foreign = parent / "counter_999999.db"
        foreign.write_bytes(b"another program's file")
        for live, count in ((first, 2), (second, 3)):
            for _ in range(count):
                requests.post(live.url + "/sklearn", json={"crystalData": ROWS}, timeout=10)
        for live, count in ((first, 2), (second, 3)):
            text = scrape_until(
                live, lambda t, n=count: counter(t, "/sklearn", "sklearn", 200) == n
            )
            assert counter(text, "/sklearn", "sklearn", 200) == count
        assert len(list(parent.glob("crystal-metrics-*"))) == 2
    finally:
        assert first.stop() == 0
        assert second.stop() == 0
    assert sorted(parent.iterdir()) == [foreign]
    assert foreign.read_bytes() == b"another program's file"


def test_request_log_line(server: ServerProcess) -> None:
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


def test_every_response_validates_against_the_served_spec(server: ServerProcess) -> None:
    models = [model_file.name for model_file in read_manifest(COMMITTED_MODELS)]
    check_answers_against_the_served_spec(server, models)


def test_hundred_thousand_rows_pass_and_one_more_is_413(server: ServerProcess) -> None:
    rows = [[0.25, 0.5, 0.75, 1.0]] * 100_000
    response = requests.post(server.url + "/pytorch", json={"crystalData": rows}, timeout=60)
    assert response.status_code == 200
    assert len(response.json()["prediction"]) == 100_000
    too_many = requests.post(
        server.url + "/pytorch", json={"crystalData": [*rows, rows[0]]}, timeout=60
    )
    assert too_many.status_code == 413
    assert too_many.json()["description"] == "crystalData has 100001 rows, the limit is 100000"


def test_oversized_declared_body_is_refused_without_growing_memory(server: ServerProcess) -> None:
    rss_before = {pid: rss_mb(pid) for pid in server.worker_pids()}
    body = b" " * (100 * 1024 * 1024)
    for _ in range(2):  # both workers, most likely
        response = requests.post(server.url + "/sklearn", data=body, timeout=60)
        assert response.status_code == 413
        assert "exceeds the limit of 16777216" in response.json()["description"]
    for pid, before in rss_before.items():
        assert rss_mb(pid) - before < 10, "a worker grew by more than 10 MiB"


def test_chunked_body_is_read_and_bounded(server: ServerProcess) -> None:
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


def test_refuses_unknown_routes_as_json(server: ServerProcess) -> None:
    assert requests.get(server.url + "/v3", timeout=10).json() == {
        "title": "404 Not Found",
        "description": "no route /v3",
    }


def test_spec_for_the_committed_models_is_valid() -> None:
    model_files = read_manifest(COMMITTED_MODELS)
    models = {f.name: OnnxClassifier(f.name, f.read_verified()) for f in model_files}
    registry = ModelRegistry(models, load_labels(REPO_ROOT / "labels.txt"), Metrics())
    runner = BatchRunner(0, 1, Metrics())
    path = InferencePath(registry, Limits(), runner, Metrics())
    protocols = [protocol(path) for protocol in PROTOCOLS]
    spec = json.loads(build_spec(registry, protocols))
    validate(spec)
    assert {f"/{f.name}" for f in model_files} <= set(spec["paths"])
