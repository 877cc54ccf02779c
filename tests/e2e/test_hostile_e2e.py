"""Hostile bodies against the live multi-worker server. The oversized bodies (declared and
chunked) and batches beyond the row limit are in test_operate_e2e.py, invalid UTF-8 in
tests/serve/test_app.py, slow clients in test_transport_e2e.py."""

import json

import pytest
import requests

from harness.server import ServerProcess, rss_mb
from support.examples import ROW

pytestmark = pytest.mark.e2e


def post(server: ServerProcess, path: str, body: bytes) -> requests.Response:
    return requests.post(server.url + path, data=body, timeout=60)


def assert_still_serving(server: ServerProcess) -> None:
    response = requests.post(server.url + "/sklearn", json={"crystalData": [ROW]}, timeout=10)
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/sklearn", "/astromech"])
def test_deeply_nested_json(server: ServerProcess, path: str) -> None:
    depth = 100_000
    for body, description in (
        (b"[" * depth + b"]" * depth, "Expected `object`, got `array`"),
        (
            b'{"crystalData": ' + b"[" * depth + b"]" * depth + b"}",
            "Expected `float`, got `array` - at `$.crystalData[0][0]`",
        ),
        (
            b'{"x": ' + b"[" * depth + b"]" * depth + b', "crystalData": [[1, 2, 3, 4]]}',
            "JSON body is nested too deeply",
        ),
    ):
        response = post(server, path, body)
        assert response.status_code == 422
        assert response.json() == {"title": "Invalid crystal data", "description": description}
    assert "RecursionError" not in server.output
    assert "Traceback" not in server.output
    assert_still_serving(server)


def test_ten_megabyte_string(server: ServerProcess) -> None:
    body = json.dumps({"crystalData": [[0, 0, 0, "x" * (10 * 1024 * 1024)]]}).encode()
    response = post(server, "/pytorch", body)
    assert response.status_code == 422
    assert len(response.content) < 300  # the value is not echoed
    assert_still_serving(server)


def test_memory_plateaus_under_repeated_large_batches(one_worker_server: ServerProcess) -> None:
    """The allocator keeps the peak of a 100,000-row request (about 200 MiB, reached within ten
    of them, wobbling by up to ~16 MiB with fragmentation); repeating it must not grow it. A leak
    of even one 1.8 MB body per request would add 72 MiB over the 40 measured requests."""
    live = one_worker_server
    body = b'{"crystalData": [' + b",".join([b"[0.5,0.5,0.5,0.5]"] * 100_000) + b"]}"
    for _ in range(10):  # reach the worker's peak
        assert post(live, "/pytorch", body).status_code == 200
    (pid,) = live.worker_pids()
    plateau = rss_mb(pid)
    for _ in range(40):
        assert post(live, "/pytorch", body).status_code == 200
    assert rss_mb(pid) - plateau < 24, "the worker kept growing"
