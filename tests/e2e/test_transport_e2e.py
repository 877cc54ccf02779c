"""Slow, silent and malformed clients against the live server, at the socket level: they are
timed out, answered in JSON, and cost the other clients nothing; overload is shed, not queued."""

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress

import pytest
import requests

from harness.server import ServerProcess
from support.examples import ROW

pytestmark = pytest.mark.e2e
BODY = json.dumps({"crystalData": [ROW]}).encode()
# Short timeouts so each case runs in seconds; one worker so the cap on work is deterministic.
SETTINGS = {
    "WORKERS": "1",
    "HEADER_TIMEOUT": "2",
    "TIMEOUT": "2",
    "KEEPALIVE": "1",
    "MAX_IN_FLIGHT": "4",
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    live = ServerProcess(SETTINGS).wait_ready()
    yield live
    live.stop()
    assert "Traceback" not in live.output


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def answer(raw: bytes) -> tuple[int, dict[str, str], object]:
    """Status, headers and JSON body of one raw HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def post_ok(server: ServerProcess) -> float:
    """One normal request; its latency in seconds."""
    started = time.monotonic()
    response = requests.post(server.url + "/sklearn", data=BODY, timeout=10)
    assert response.status_code == 200
    return time.monotonic() - started


def answers_when_closed(server: ServerProcess, sent: list[bytes]) -> list[bytes]:
    """Opens a connection per item, sends it, and reads each until the server closes it; all at
    once, so their timeouts run side by side. Each must close between 1.5 and 4 s."""
    with ExitStack() as stack:
        socks = [stack.enter_context(connect(server)) for _ in sent]
        started = time.monotonic()
        for sock, data in zip(socks, sent, strict=True):
            sock.sendall(data)
        answers = []
        for sock in socks:
            answers.append(read_until_closed(sock))
            assert 1.5 < time.monotonic() - started < 4
    return answers


def test_a_connection_without_a_request_head_gets_408_and_is_closed(
    server: ServerProcess,
) -> None:
    """Silent, or stopped midway through the head."""
    sent = [b"", b"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Le"]
    for raw in answers_when_closed(server, sent):
        status, headers, body = answer(raw)
        assert (status, headers["content-type"]) == (408, "application/json")
        assert body == {
            "title": "Request Timeout",
            "description": "no complete request head within 2 s",
        }


def test_a_body_that_stops_gets_408_and_is_closed(server: ServerProcess) -> None:
    """Before its first byte, or after ten of the thousand it declares."""
    head = b"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    for raw in answers_when_closed(server, [head, head + b" " * 10]):
        status, headers, body = answer(raw)
        assert (status, headers["content-type"]) == (408, "application/json")
        assert body["description"] == "the request body stopped before its end"
    post_ok(server)


def test_an_idle_keep_alive_connection_is_closed(server: ServerProcess) -> None:
    request = b"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    with connect(server) as sock:
        sock.sendall(request + BODY)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert read_until_closed(sock) == b""
    assert time.monotonic() - started < 3


def test_a_client_that_leaves_mid_body_costs_nothing(server: ServerProcess) -> None:
    for _ in range(5):
        with connect(server) as sock:
            sock.sendall(b"POST /pytorch HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n[[1,")
    post_ok(server)
    time.sleep(0.5)
    assert "Traceback" not in server.output


CHUNKED_HEAD = b"POST /sklearn HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("framing", "expected"),
    [
        (b"0x5\r\nhello\r\n0\r\n\r\n", 400),
        (b"g\r\nhello\r\n0\r\n\r\n", 400),
        (b"-5\r\nhello\r\n0\r\n\r\n", 400),
        (b"+5\r\nhello\r\n0\r\n\r\n", 400),
        (b"5\nhello\n0\n\n", 400),
        (b"5\r\nhelloXX0\r\n\r\n", 400),
        (b"ffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400),
    ],
)
def test_malformed_chunked_framing_is_answered_in_json(
    server: ServerProcess, framing: bytes, expected: int
) -> None:
    with connect(server) as sock:
        sock.sendall(CHUNKED_HEAD + framing)
        raw = read_until_closed(sock)
    status, headers, body = answer(raw)
    assert (status, headers["content-type"]) == (expected, "application/json")
    assert body["title"] and body["description"]
    post_ok(server)


def test_a_chunked_body_cut_short_is_closed_without_an_error(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(CHUNKED_HEAD + b'10\r\n{"crystalData"')
        sock.shutdown(socket.SHUT_WR)
        raw = read_until_closed(sock)
    assert raw == b"" or answer(raw)[0] in (400, 408)
    post_ok(server)


@pytest.mark.parametrize(
    ("request_bytes", "status", "title"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI Too Long"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "Request Header Fields Too Large",
        ),
        (b"BREW /pot HTCPCP/1.0\r\n\r\n", 400, "Bad Request"),
        (
            b"POST /sklearn HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
            "Bad Request",
        ),
    ],
)
def test_answers_the_server_writes_itself_are_json(
    server: ServerProcess, request_bytes: bytes, status: int, title: str
) -> None:
    """Titled with gunicorn's own reason phrase (Python's HTTPStatus says "Request-URI Too Long"
    before 3.13)."""
    with connect(server) as sock:
        sock.sendall(request_bytes)
        raw = read_until_closed(sock)
    got, headers, body = answer(raw)
    assert (got, headers["content-type"]) == (status, "application/json")
    assert set(body) == {"title", "description"}
    assert body["title"] == title


def test_stalled_uploads_hold_no_work_slot(server: ServerProcess) -> None:
    """Twice the worker's cap of 4 in uploads that declare a body, send 10 bytes and stop:
    normal requests are all answered 200 meanwhile (once, they filled the cap and every other
    request got 503 until the uploads timed out), and the uploads end in 408."""
    head = b"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[[1,"
    uploads = [connect(server) for _ in range(2 * int(SETTINGS["MAX_IN_FLIGHT"]))]
    try:
        for sock in uploads:
            sock.sendall(head)
        time.sleep(0.3)
        for _ in range(20):
            post_ok(server)
        assert requests.get(server.url + "/v2/health/ready", timeout=10).status_code == 200
        for sock in uploads:
            assert answer(read_until_closed(sock))[0] == 408
    finally:
        for sock in uploads:
            sock.close()
    post_ok(server)


def test_work_beyond_the_cap_is_shed_with_503_and_probes_still_answer(
    server: ServerProcess,
) -> None:
    """Twelve large batches at once against a cap of 4 at work: some are refused at once with
    503 and Retry-After, the others answered, probes answered throughout; none fails otherwise."""
    rows = [ROW] * 50_000
    body = json.dumps({"crystalData": rows}).encode()
    statuses: list[int] = []

    def post() -> None:
        response = requests.post(server.url + "/sklearn", data=body, timeout=30)
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            assert response.json()["title"] == "Overloaded"
        statuses.append(response.status_code)

    threads = [threading.Thread(target=post) for _ in range(12)]
    for thread in threads:
        thread.start()
    assert requests.get(server.url + "/v2/health/live", timeout=10).status_code == 200
    for thread in threads:
        thread.join()
    assert set(statuses) == {200, 503}
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert re.search(r"^crystal_requests_shed_total [1-9]", metrics, re.M)


def test_expect_continue_over_the_limit_gets_413_without_100_continue(
    server: ServerProcess,
) -> None:
    """A declared Content-Length over MAX_BODY_BYTES is refused on the head alone: the client
    is not invited to send the body (once it got 100 Continue, then 408 after TIMEOUT)."""
    with connect(server) as sock:
        sock.sendall(
            b"POST /sklearn HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        sock.settimeout(1.5)  # well within TIMEOUT (2 s): the answer must not wait for it
        raw = read_until_closed(sock)
    assert not raw.startswith(b"HTTP/1.1 100")
    status, _, body = answer(raw)
    assert status == 413
    assert body == {
        "title": "Request too large",
        "description": "body of 100000000 bytes exceeds the limit of 16777216",
    }


def test_expect_continue_within_the_limit_is_invited_and_answered(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /sklearn HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(BODY)
        status, _, body = answer(read_until_closed(sock))
    assert status == 200
    assert body["prediction"] == ["blue"]


def test_silent_and_slow_header_connections_do_not_delay_others(server: ServerProcess) -> None:
    """300 connections that send nothing and 50 that send their head a byte at a time, while a
    normal client keeps posting: its requests are answered as if they were alone."""
    silent = [connect(server) for _ in range(300)]
    slow = [connect(server) for _ in range(50)]
    head = b"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
    stop = threading.Event()

    def trickle() -> None:
        for byte in head:
            for sock in slow:
                with suppress(OSError):
                    sock.send(bytes([byte]))
            if stop.wait(0.05):
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        latencies = []
        deadline = time.monotonic() + 1.5  # within HEADER_TIMEOUT: all of them still open
        while time.monotonic() < deadline:
            latencies.append(post_ok(server))
    finally:
        stop.set()
        sender.join()
        for sock in silent + slow:
            sock.close()
    assert len(latencies) > 20
    # A worker held by them would answer only as they time out (HEADER_TIMEOUT, 2 s); make bench
    # measures the latency itself.
    assert max(latencies) < 1.0, f"slowest normal request {max(latencies):.3f} s"


def test_probes_are_answered_while_large_batches_compute(
    one_worker_server: ServerProcess,
) -> None:
    """Six clients keep one worker busy with 100,000-row batches; the probes do not queue
    behind them (large batches run on the worker's inference thread; run inline, the probes
    measured here waited up to three batches)."""
    live = one_worker_server
    body = b'{"crystalData": [' + b",".join([b"[0.5,0.5,0.5,0.5]"] * 100_000) + b"]}"
    started = time.monotonic()
    assert requests.post(live.url + "/pytorch", data=body, timeout=60).status_code == 200
    one_batch = time.monotonic() - started
    stop = threading.Event()

    def batches() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                assert session.post(live.url + "/pytorch", data=body, timeout=60).ok

    clients = [threading.Thread(target=batches) for _ in range(6)]
    for client in clients:
        client.start()
    probes = []
    try:
        time.sleep(4 * one_batch)
        for _ in range(20):
            started = time.monotonic()
            assert requests.get(live.url + "/v2/health/ready", timeout=10).ok
            probes.append(time.monotonic() - started)
            time.sleep(0.05)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert max(probes) < one_batch, (probes, one_batch)


def test_large_answers_are_gzipped_on_the_wire(server: ServerProcess) -> None:
    rows = {"crystalData": [ROW] * 1000}
    packed = requests.post(
        server.url + "/pytorch", json=rows, headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    plain = requests.post(
        server.url + "/pytorch", json=rows, headers={"Accept-Encoding": "identity"}, timeout=10
    )
    assert (packed.headers["Content-Encoding"], packed.headers["Vary"]) == (
        "gzip",
        "Accept-Encoding",
    )
    assert "Content-Encoding" not in plain.headers
    assert int(packed.headers["Content-Length"]) < int(plain.headers["Content-Length"]) / 10
    assert packed.json() == plain.json()


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_the_listen_backlog_is_gunicorns(server: ServerProcess) -> None:
    """asyncio's create_server would re-listen with 100: bursts overflowed the accept queue."""
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing[0] == "LISTEN"
    assert int(listing[2]) == 2048  # Send-Q of a listening socket: its backlog
