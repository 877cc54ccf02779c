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
from dataclasses import dataclass

import pytest
import requests

from harness.server import ServerProcess
from support.examples import ROW
from support.served import in_flight, wait_until

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


def post_ok(server: ServerProcess) -> None:
    """One normal request, answered 200."""
    response = requests.post(server.url + "/sklearn", data=BODY, timeout=10)
    assert response.status_code == 200


def pending(sock: socket.socket) -> bool:
    """Whether the server has neither answered nor closed this connection yet."""
    sock.settimeout(0)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(10)
    return False


HEAD_1000 = b"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
# Twice the worker's cap of 4 in uploads that declare a body, send 4 bytes and stop.
UPLOADS = [f"upload {n}" for n in range(2 * int(SETTINGS["MAX_IN_FLIGHT"]))]
STOPPED = {
    "silent": b"",
    "mid-head": b"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Le",
    "no body": HEAD_1000,
    "body stops": HEAD_1000 + b" " * 10,
    **dict.fromkeys(UPLOADS, HEAD_1000 + b"[[1,"),
}


@dataclass(frozen=True)
class Stopped:
    """What the server sent on each connection of STOPPED before it closed it, and the statuses
    of 20 normal requests and a probe sent while the app held every one whose body had begun."""

    answers: dict[str, bytes]
    meanwhile: list[int]


@pytest.fixture(scope="module")
def stopped(server: ServerProcess) -> Stopped:
    """The connections of STOPPED, opened at once so that their timeouts run side by side. Each
    closes between 1.5 and 4 s: the timeouts are 2 s (HEADER_TIMEOUT, TIMEOUT), and the
    defaults (5 s, 10 s) would take longer."""
    with ExitStack() as stack:
        socks = {name: stack.enter_context(connect(server)) for name in STOPPED}
        started = time.monotonic()
        for name, sock in socks.items():
            sock.sendall(STOPPED[name])
        # The app takes a request on its first body bytes.
        begun = sum(bool(data.partition(b"\r\n\r\n")[2]) for data in STOPPED.values())
        wait_until(lambda: in_flight(server) == begun, "every begun body in the app")
        meanwhile = [
            *(requests.post(server.url + "/sklearn", data=BODY, timeout=10) for _ in range(20)),
            requests.get(server.url + "/v2/health/ready", timeout=10),
        ]
        answers = {}
        for name, sock in socks.items():
            answers[name] = read_until_closed(sock)
            assert 1.5 < time.monotonic() - started < 4, name
    return Stopped(answers, [response.status_code for response in meanwhile])


def test_a_connection_without_a_request_head_gets_408_and_is_closed(stopped: Stopped) -> None:
    """Silent, or stopped midway through the head."""
    for name in ("silent", "mid-head"):
        status, headers, body = answer(stopped.answers[name])
        assert (status, headers["content-type"]) == (408, "application/json")
        assert body == {
            "title": "Request Timeout",
            "description": "no complete request head within 2 s",
        }


def test_a_body_that_stops_gets_408_and_is_closed(server: ServerProcess, stopped: Stopped) -> None:
    """Before its first byte, or after ten of the thousand it declares."""
    for name in ("no body", "body stops"):
        status, headers, body = answer(stopped.answers[name])
        assert (status, headers["content-type"]) == (408, "application/json")
        assert body["description"] == "the request body stopped before its end"
    post_ok(server)


def test_stalled_uploads_hold_no_work_slot(server: ServerProcess, stopped: Stopped) -> None:
    """Twice the worker's cap in uploads that stop: while the app holds all of them, normal
    requests and the probe are all answered 200 (once, the uploads filled the cap and every
    other request got 503 until they timed out), and the uploads end in 408."""
    assert stopped.meanwhile == [200] * 21
    assert [answer(stopped.answers[name])[0] for name in UPLOADS] == [408] * len(UPLOADS)
    post_ok(server)


def test_an_idle_keep_alive_connection_is_closed(server: ServerProcess) -> None:
    request = b"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    with connect(server) as sock:
        sock.sendall(request + BODY)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert read_until_closed(sock) == b""
    # KEEPALIVE is 1 s here; the default (5 s) would take longer.
    assert time.monotonic() - started < 3


def test_a_client_that_leaves_mid_body_costs_nothing(server: ServerProcess) -> None:
    logged = len(server.output)
    for _ in range(5):
        with connect(server) as sock:
            sock.sendall(b"POST /pytorch HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n[[1,")
    post_ok(server)
    stopped = "the request body stopped before its end"
    wait_until(
        lambda: server.output[logged:].count(stopped) >= 5,
        "an access line for each of the 5 abandoned requests",
    )
    assert server.output[logged:].count(stopped) == 5
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


def test_work_beyond_the_cap_is_shed_with_503_and_probes_answer_while_batches_compute(
    server: ServerProcess,
) -> None:
    """Four 100,000-row batches, their last bytes sent together, fill the worker's cap of 4 at
    work. A small request is then shed at once with 503 and Retry-After, the probes are
    answered, and a second small request is shed too: the batches were at work on the worker's
    inference thread from before the probes to after them, so the probes did not queue behind
    them (run inline on the event loop, no request could find the cap full)."""
    cap = int(SETTINGS["MAX_IN_FLIGHT"])
    body = b'{"crystalData": [' + b",".join([b"[0.5,0.5,0.5,0.5]"] * 100_000) + b"]}"
    request = b"POST /pytorch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)

    def shed() -> bool:
        response = requests.post(server.url + "/sklearn", data=BODY, timeout=10)
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            assert response.json() == {
                "title": "Overloaded",
                "description": "more than 4 requests at work in this worker; retry",
            }
            return True
        assert response.status_code == 200
        return False

    with ExitStack() as stack:
        batches = [stack.enter_context(connect(server)) for _ in range(cap)]
        for sock in batches:
            sock.sendall(request[:-1])
        wait_until(lambda: in_flight(server) == cap, "every batch in the app, awaiting its end")
        for sock in batches:
            sock.sendall(request[-1:])
        while not shed():
            assert all(pending(sock) for sock in batches), "the cap was never full"
        for probe in ("/v2/health/ready", "/v2/health/live"):
            assert requests.get(server.url + probe, timeout=10).status_code == 200
        assert shed(), "a batch was done before the probes were answered"
        for sock in batches:
            assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
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


def test_silent_and_slow_clients_do_not_delay_others(server: ServerProcess) -> None:
    """300 connections that send nothing, 50 that send their head a byte at a time, and one that
    sends a whole request a byte at a time, all on the one worker: a normal client's requests
    are each answered while the first silent and the first slow connection are still open and
    unanswered (a worker held by them would answer only as they time out) and while the slow
    request is unfinished; that one, once whole, is answered 200."""
    silent = [connect(server) for _ in range(300)]
    slow = [connect(server) for _ in range(50)]
    whole = connect(server)
    head = b"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
    request = b"POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    stop, begun, finish = threading.Event(), threading.Event(), threading.Event()
    whole_answer: list[bytes] = []

    def trickle_heads() -> None:
        for byte in head:
            for sock in slow:
                with suppress(OSError):
                    sock.send(bytes([byte]))
            if stop.wait(0.05):
                return

    def trickle_request() -> None:
        """Every byte but the last, one at a time, then the last once the others are served."""
        for byte in (request + BODY)[:-1]:
            whole.sendall(bytes([byte]))
            begun.set()
            time.sleep(0.005)
        if finish.wait(10):
            whole.sendall(BODY[-1:])
            whole_answer.append(whole.recv(65536))

    senders = [threading.Thread(target=trickle_heads), threading.Thread(target=trickle_request)]
    for sender in senders:
        sender.start()
    try:
        assert begun.wait(10)
        for _ in range(20):
            post_ok(server)
            assert pending(silent[0]) and pending(slow[0]) and pending(whole)
        finish.set()
    finally:
        stop.set()
        finish.set()
        for sender in senders:
            sender.join()
        for sock in [*silent, *slow, whole]:
            sock.close()
    assert whole_answer and whole_answer[0].startswith(b"HTTP/1.1 200")


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
