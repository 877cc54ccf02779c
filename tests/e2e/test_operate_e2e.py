"""Operations through the real multi-worker server: metrics, logs, spec, limits."""

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from openapi_spec_validator import validate

from harness.server import REPO_ROOT, ServerProcess, rss_mb
from serve.app import PROTOCOLS
from serve.auth import TokenGate
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
from support.served import check_answers_against_the_served_spec, strict_json, wait_until

pytestmark = pytest.mark.e2e

COMMITTED_MODELS = REPO_ROOT / "onnx_models"


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
        published = scrape_until(
            live,
            lambda text: (
                counter(text, "/sklearn", "sklearn", 200) == 30
                and counter(text, "/pytorch", "pytorch", 422) == 7
            ),
        )
        assert counter(published, "/sklearn", "sklearn", 200) == 30, "never published"
        before = live.worker_pids()
        os.kill(before[0], signal.SIGKILL)
        wait_until(
            lambda: len(pids := live.worker_pids()) == 2 and before[0] not in pids,
            f"a worker forked in place of {before[0]}",
            20,
        )
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


def test_metrics_dir_gets_a_private_folder_and_foreign_files_are_left_alone(
    tmp_path: Path,
) -> None:
    """Two replicas started together, sharing METRICS_DIR (missing at first), each count their
    own requests."""
    parent = tmp_path / "not" / "made" / "yet"
    first = ServerProcess({"METRICS_DIR": str(parent)})
    second = ServerProcess({"METRICS_DIR": str(parent)})
    try:
        first.wait_ready()
        second.wait_ready()
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
        # Both stop side by side, each signalled once: a second SIGTERM that lands while the
        # master's interpreter is finishing would end it by the signal instead of exit 0.
        for live in (first, second):
            live.process.send_signal(signal.SIGTERM)
        exits = [live.process.wait(timeout=30) for live in (first, second)]
    assert exits == [0, 0]
    assert sorted(parent.iterdir()) == [foreign]
    assert foreign.read_bytes() == b"another program's file"


def test_request_log_line(server: ServerProcess) -> None:
    requests.post(
        server.url + "/astromech",
        json={"crystalData": ROWS, "model": "pytorch"},
        headers={"X-Request-ID": "droid-r2d2-0001"},
        timeout=10,
    )
    line = wait_until(
        lambda: next((x for x in server.output.splitlines() if "droid-r2d2-0001" in x), None),
        "the request's access line",
        5,
    )
    entry = json.loads(line)
    assert entry["message"] == "request"
    assert entry["method"] == "POST" and entry["path"] == "/astromech"
    assert (entry["model"], entry["rows"], entry["status"]) == ("pytorch", 3, 200)
    assert entry["duration_ms"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


def test_every_response_validates_against_the_served_spec(server: ServerProcess) -> None:
    models = [model_file.name for model_file in read_manifest(COMMITTED_MODELS)]
    check_answers_against_the_served_spec(server, models)


LIMIT = 100_000  # MAX_ROWS


def batch(count: int, model: str | None) -> bytes:
    """A body of `count` rows: seeded random ones up to 10,000, beyond that one short row
    repeated (a million of those still fit in MAX_BODY_BYTES, so the rows are what is refused)."""
    if count <= 10_000:
        rows = json.dumps(np.random.default_rng(7).uniform(0, 1, size=(count, 4)).tolist())
    else:
        rows = "[" + ",".join(["[1,0,0,1]"] * count) + "]"
    named = "" if model is None else f', "model": "{model}"'
    return f'{{"crystalData": {rows}{named}}}'.encode()


@pytest.mark.parametrize(
    ("path", "model", "count"),
    [
        ("/sklearn", None, 10_000),
        ("/astromech", "sklearn", 10_000),
        ("/astromech", "pytorch", 10_000),
        ("/pytorch", None, LIMIT),
        ("/pytorch", None, LIMIT + 1),
        ("/sklearn", None, 1_000_000),
    ],
)
def test_large_batches_are_answered_whole_up_to_the_row_limit(
    server: ServerProcess, path: str, model: str | None, count: int
) -> None:
    response = requests.post(server.url + path, data=batch(count, model), timeout=60)
    answer = strict_json(response)
    if count <= LIMIT:
        assert response.status_code == 200
        assert len(answer["prediction"]) == len(answer["scores"]) == count
    else:
        assert response.status_code == 413
        assert answer == {
            "title": "Request too large",
            "description": f"crystalData has {count} rows, the limit is {LIMIT}",
        }
        small = requests.post(server.url + path, data=batch(1, model), timeout=10)
        assert small.status_code == 200


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
    metrics = Metrics()
    path = InferencePath(
        registry, Limits(), BatchRunner(0, 1, metrics), metrics, TokenGate(None, metrics)
    )
    protocols = [protocol(path) for protocol in PROTOCOLS]
    spec = json.loads(build_spec(registry, protocols))
    validate(spec)
    assert {f"/{f.name}" for f in model_files} <= set(spec["paths"])
