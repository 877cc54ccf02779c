"""The two loads beyond throughput that the service must withstand, run on the service alone.

- overload: OVERLOAD_CONNECTIONS keep-alive clients posting 1-row bodies, far beyond what two
  workers answer at once, on the service while a separate client probes readiness as a kubelet
  would, and on the ASGI floor (no probe: it has none) for its tail in the same round. Every
  answer must be 200 or 503 (shed by the per-worker cap on work), and probes must pass.
- slow clients: SILENT connections that send nothing, SLOW ones that send a request head one
  byte at a time and STALLED uploads that declare a body, send a few bytes of it and stop, all
  opened first and held while one normal client posts 1-row requests. The held connections must
  not slow it down nor get it refused. A run of the default length ends within the service's
  HEADER_TIMEOUT (5 s) and TIMEOUT (10 s), which would close them; the run reports how they
  stood at its end.
"""

import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadResult, run_load
from harness.server import request

OVERLOAD_CONNECTIONS = 256
PROBE_PATH = "/v2/health/ready"
PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 5.0
SILENT_CONNECTIONS = 300
SLOW_CONNECTIONS = 50
# Twice what the default per-worker cap (MAX_IN_FLIGHT, 16) of two workers would hold.
STALLED_UPLOADS = 32
STALLED_BODY_BYTES = 1000
SLOW_BYTE_INTERVAL_S = 0.1


@dataclass(frozen=True)
class ProbeResult:
    count: int
    failed: int  # not 200, or no answer within PROBE_TIMEOUT_S
    max_ms: float  # the slowest answered one


class Prober:
    """Probes readiness on a fresh connection every PROBE_INTERVAL_S until stopped."""

    def __init__(self, port: int):
        self._port = port
        self._stop = threading.Event()
        self._latencies: list[float] = []
        self._failed = 0
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                status, _ = request(self._port, "GET", PROBE_PATH, timeout=PROBE_TIMEOUT_S)
            except OSError:
                status = 0
            if status == 200:
                self._latencies.append((time.perf_counter() - started) * 1000)
            else:
                self._failed += 1
            self._stop.wait(PROBE_INTERVAL_S)

    def __enter__(self) -> "Prober":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> ProbeResult:
        return ProbeResult(
            count=len(self._latencies) + self._failed,
            failed=self._failed,
            max_ms=max(self._latencies, default=0.0),
        )


def overload(
    wrk: str | None,
    port: int,
    path: str,
    bodies: list[Path],
    threads: int,
    seconds: float,
    probe: bool,
) -> tuple[LoadResult, ProbeResult | None]:
    """The load at OVERLOAD_CONNECTIONS, with readiness probed all along when `probe`."""
    url = f"http://127.0.0.1:{port}{path}"
    if not probe:
        return run_load(wrk, url, bodies, OVERLOAD_CONNECTIONS, threads, seconds, True), None
    with Prober(port) as prober:
        result = run_load(wrk, url, bodies, OVERLOAD_CONNECTIONS, threads, seconds, True)
    return result, prober.result()


def slow_clients(
    wrk: str | None, port: int, path: str, body: Path, seconds: float
) -> tuple[LoadResult, dict[str, int]]:
    """One normal keep-alive client while the held connections are open; returns its figures
    and how the held connections stood at the end (see HeldConnections.close)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {body.stat().st_size}\r\n\r\n"
    ).encode()
    stalled = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {STALLED_BODY_BYTES}\r\n\r\n"
        '{"crystalData": [[1,'
    ).encode()
    held = HeldConnections(port, head, stalled)
    try:
        result = run_load(wrk, f"http://127.0.0.1:{port}{path}", [body], 1, 1, seconds, True)
    finally:
        states = held.close()
    return result, states


def _state(sock: socket.socket) -> str:
    """open (nothing from the server yet), answered (it sent something, such as a 408) or
    closed (end of stream or reset)."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"
    return "answered" if data else "closed"


class HeldConnections:
    """Silent connections, slow-header ones and stalled uploads, open from creation until
    `close()`."""

    def __init__(self, port: int, head: bytes, stalled_upload: bytes):
        self._head = head
        address = ("127.0.0.1", port)
        self.silent = [socket.create_connection(address) for _ in range(SILENT_CONNECTIONS)]
        self.slow = [socket.create_connection(address) for _ in range(SLOW_CONNECTIONS)]
        self.stalled = [socket.create_connection(address) for _ in range(STALLED_UPLOADS)]
        for sock in self.stalled:
            sock.sendall(stalled_upload)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send_slowly)
        self._thread.start()

    def _send_slowly(self) -> None:
        """One more byte of the head on every slow connection each SLOW_BYTE_INTERVAL_S."""
        sent = 0
        while not self._stop.wait(SLOW_BYTE_INTERVAL_S) and sent < len(self._head):
            for sock in self.slow:
                with suppress(OSError):  # closed by the server: counted by close()
                    sock.send(self._head[sent : sent + 1])
            sent += 1

    def close(self) -> dict[str, int]:
        """Stops sending, closes every connection; returns how many were in each state first."""
        self._stop.set()
        self._thread.join()
        sockets = self.silent + self.slow + self.stalled
        states = {"open": 0, "answered": 0, "closed": 0}
        for sock in sockets:
            states[_state(sock)] += 1
            sock.close()
        return states
