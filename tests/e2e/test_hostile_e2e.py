"""Hostile bodies against the live multi-worker server. The oversized bodies (declared and
chunked) are in test_operate_e2e.py."""

import json
import socket
import threading
import time

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


def test_a_million_tiny_rows(server: ServerProcess) -> None:
    body = b'{"crystalData": [' + b",".join([b"[0,0,0,0]"] * 1_000_000) + b"]}"
    response = post(server, "/sklearn", body)
    assert response.status_code == 413
    assert "1000000 rows, the limit is 100000" in response.json()["description"]
    assert_still_serving(server)


@pytest.mark.parametrize(
    "body", [b'{"crystalData": [[1, 2, 3, 4]], "model": "\xff\xfe"}', b"\xc3\x28", b"\xed\xa0\x80"]
)
def test_invalid_utf8(server: ServerProcess, body: bytes) -> None:
    assert post(server, "/astromech", body).status_code in (400, 422)
    assert_still_serving(server)


def test_slow_client_does_not_block_others(server: ServerProcess) -> None:
    body = json.dumps({"crystalData": [ROW]}).encode()
    head = f"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    slow_answer = []

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            for byte in head + body:
                sock.sendall(bytes([byte]))
                time.sleep(0.02)
            slow_answer.append(sock.recv(4096))

    slow = threading.Thread(target=trickle)
    slow.start()
    served = 0
    while slow.is_alive():
        started = time.monotonic()
        assert_still_serving(server)
        assert time.monotonic() - started < 1.0
        served += 1
    slow.join()
    assert served > 20
    assert slow_answer and slow_answer[0].startswith(b"HTTP/1.1 200")


def test_memory_plateaus_under_repeated_large_batches(one_worker_server: ServerProcess) -> None:
    """The allocator keeps the peak of a 100,000-row request (about 200 MiB, wobbling by up to
    ~16 MiB with fragmentation); repeating it must not grow it. A leak of even one 1.8 MB body
    per request would add 72 MiB over the 40 measured requests."""
    live = one_worker_server
    body = b'{"crystalData": [' + b",".join([b"[0.5,0.5,0.5,0.5]"] * 100_000) + b"]}"
    for _ in range(20):  # reach the worker's peak
        assert post(live, "/pytorch", body).status_code == 200
    (pid,) = live.worker_pids()
    plateau = rss_mb(pid)
    for _ in range(40):
        assert post(live, "/pytorch", body).status_code == 200
    assert rss_mb(pid) - plateau < 24, "the worker kept growing"
