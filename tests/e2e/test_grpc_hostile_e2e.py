"""Hostile clients against the live server's gRPC port (serve/grpc_server.py's limits): no HTTP/2
preface, garbage instead of HTTP/2, idle connections, oversized metadata and messages, expired
deadlines and more streams than MAX_IN_FLIGHT on one connection. One worker, so every attack and
the normal call after it meet the same process; short timeouts, so the file runs in seconds."""

import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from harness.server import ServerProcess
from serve.grpc_server import MAX_METADATA_BYTES

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 1
KEEPALIVE = 3
MAX_IN_FLIGHT = 2
MAX_BODY_BYTES = 1024 * 1024
# A channel of its own per client: grpc shares connections between equal channels otherwise.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
GOAWAY = 0x7
CALL_TIMEOUT = 30


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    live = ServerProcess(
        {
            "WORKERS": "1",
            "HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "KEEPALIVE": str(KEEPALIVE),
            "MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
            "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        }
    ).wait_ready()
    yield live
    assert live.stop() == 0, live.output[-3000:]
    assert "Traceback" not in live.output


@pytest.fixture(scope="module")
def worker(server: ServerProcess) -> int:
    (pid,) = server.worker_pids()
    return pid


def rows(n: int) -> np.ndarray:
    generator = np.random.default_rng(n)
    return generator.uniform(0, 10, size=(n, 4)).astype(np.float32)


def infer_request(batch: np.ndarray, model: str = "pytorch") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
    request.raw_input_contents.append(batch.astype("<f4").tobytes())
    return request


def probabilities_of(response: service_pb2.ModelInferResponse) -> bytes:
    assert response.outputs[0].name == "probabilities"
    return response.raw_output_contents[0]


def stub_of(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def assert_still_serving(server: ServerProcess, worker: int) -> None:
    """A normal inference on a fresh connection is answered, by the same worker process."""
    batch = rows(3)
    with grpc.insecure_channel(server.grpc_url, options=OWN_CONNECTION) as channel:
        response = stub_of(channel).ModelInfer(infer_request(batch), timeout=CALL_TIMEOUT)
    assert len(probabilities_of(response)) == batch.shape[0] * 3 * 4  # 3 classes of float32
    assert server.worker_pids() == [worker]
    assert "Traceback" not in server.output


def until_closed(port: int, send: bytes = b"", limit: float = 20.0) -> tuple[float, bytes]:
    """Connects, sends `send`, reads until the server closes: (seconds to the close, bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        started = time.monotonic()
        if send:
            try:
                sock.sendall(send)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, b""
        received = b""
        while time.monotonic() - started < limit:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                pytest.fail(f"the connection was still open after {limit} s")
            if not chunk:
                break
            received += chunk
        else:
            pytest.fail(f"the connection was still open after {limit} s")
        return time.monotonic() - started, received


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """The HTTP/2 frames in `data`: (type, payload), a cut-off last frame left out."""
    found, at = [], 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at : at + 3], "big")
        kind = data[at + 3]
        found.append((kind, data[at + 9 : at + 9 + length]))
        at += 9 + length
    return found


def goaway_reason(data: bytes) -> str:
    """The debug data of the server's GOAWAY frame (after last stream id and error code)."""
    reasons = [
        payload[8:].decode(errors="replace") for kind, payload in frames(data) if kind == GOAWAY
    ]
    assert reasons, f"no GOAWAY among {[kind for kind, _ in frames(data)]}"
    return reasons[0]


@pytest.mark.parametrize("send", [b"", PREFACE[:10]], ids=["silent", "half-preface"])
def test_connection_without_preface_is_closed_after_header_timeout(
    server: ServerProcess, worker: int, send: bytes
) -> None:
    seconds, received = until_closed(server.grpc_port, send, limit=10 * HEADER_TIMEOUT)
    assert seconds < 3 * HEADER_TIMEOUT
    assert seconds >= 0.5 * HEADER_TIMEOUT  # the handshake timer, not an instant refusal
    assert "did not receive http/2 settings" in goaway_reason(received).lower()
    assert_still_serving(server, worker)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 500,  # a TLS ClientHello
        bytes(range(256)) * 256,  # 64 KiB of noise
        PREFACE + b"\xff" * 4096,  # a valid preface, then frames that are not
    ],
    ids=["http1", "tls", "noise", "bad-frames"],
)
def test_garbage_instead_of_http2_is_closed_and_harms_nothing(
    server: ServerProcess, worker: int, garbage: bytes
) -> None:
    seconds, _ = until_closed(server.grpc_port, garbage, limit=10 * HEADER_TIMEOUT)
    assert seconds < 3 * HEADER_TIMEOUT
    assert_still_serving(server, worker)


def test_idle_connection_is_closed_after_keepalive(server: ServerProcess, worker: int) -> None:
    """A raw HTTP/2 connection that finished its handshake and then sends nothing gets a GOAWAY
    and is closed after KEEPALIVE (not after HEADER_TIMEOUT: its handshake is done)."""
    seconds, received = until_closed(
        server.grpc_port, PREFACE + EMPTY_SETTINGS, limit=10 * KEEPALIVE
    )
    assert 1.5 * HEADER_TIMEOUT < seconds < 3 * KEEPALIVE
    assert goaway_reason(received) == "connection idle"
    assert_still_serving(server, worker)


def test_idle_channel_is_sent_away_and_reconnects(server: ServerProcess, worker: int) -> None:
    """A grpc channel left idle after a call sees its connection leave READY within about
    KEEPALIVE (the server's GOAWAY), and its next call reconnects and is answered."""
    states: list[grpc.ChannelConnectivity] = []
    left_ready = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if grpc.ChannelConnectivity.READY in states and state != grpc.ChannelConnectivity.READY:
            left_ready.set()

    with grpc.insecure_channel(server.grpc_url, options=OWN_CONNECTION) as channel:
        stub = stub_of(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=CALL_TIMEOUT).live
        channel.subscribe(watch, try_to_connect=False)
        try:
            assert left_ready.wait(3 * KEEPALIVE), f"still connected: {states}"
            assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=CALL_TIMEOUT).live
        finally:
            channel.unsubscribe(watch)
    assert_still_serving(server, worker)


@pytest.mark.parametrize("size", [MAX_METADATA_BYTES + 1024, 4 * MAX_METADATA_BYTES])
def test_metadata_over_the_cap_is_refused(server: ServerProcess, worker: int, size: int) -> None:
    """Always, not by chance: grpc's max_metadata_size alone is a soft limit, refusing metadata
    between it and 1.25 times it only at random."""
    codes = Counter()
    with grpc.insecure_channel(server.grpc_url, options=OWN_CONNECTION) as channel:
        stub = stub_of(channel)
        for _ in range(10):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ServerLive(
                    service_pb2.ServerLiveRequest(),
                    metadata=[("x-padding", "a" * size)],
                    timeout=CALL_TIMEOUT,
                )
            codes[caught.value.code()] += 1
            assert "metadata size exceeds" in caught.value.details()
        # Metadata under the cap is taken, on the same channel.
        small = [("x-padding", "a" * (MAX_METADATA_BYTES // 2))]
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), metadata=small).live
    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED: 10}
    assert_still_serving(server, worker)


def test_message_over_max_body_bytes_is_resource_exhausted(
    server: ServerProcess, worker: int
) -> None:
    request = infer_request(rows(MAX_BODY_BYTES // 16 + 1))  # 16 bytes a row
    assert request.ByteSize() > MAX_BODY_BYTES
    with (
        grpc.insecure_channel(server.grpc_url, options=OWN_CONNECTION) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        stub_of(channel).ModelInfer(request, timeout=CALL_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_BODY_BYTES) in caught.value.details()
    assert_still_serving(server, worker)


def test_expired_deadlines_leave_the_server_healthy(server: ServerProcess, worker: int) -> None:
    """Large inferences with deadlines from 1 ms to 200 ms: the client gets DEADLINE_EXCEEDED
    (or the right answer when it was quick enough), the server logs the calls it gave up as
    CANCELLED without a traceback, and frees their slots under MAX_IN_FLIGHT."""
    batch = rows(MAX_BODY_BYTES // 16 - 100)
    request = infer_request(batch)
    codes = Counter()
    with grpc.insecure_channel(server.grpc_url, options=OWN_CONNECTION) as channel:
        stub = stub_of(channel)
        expected = probabilities_of(stub.ModelInfer(request, timeout=CALL_TIMEOUT))
        for timeout in [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2] * 3:
            try:
                response = stub.ModelInfer(request, timeout=timeout)
            except grpc.RpcError as error:
                codes[error.code()] += 1
                continue
            codes[grpc.StatusCode.OK] += 1
            assert probabilities_of(response) == expected
        assert codes[grpc.StatusCode.DEADLINE_EXCEEDED] > 0
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
        # Nothing leaked: MAX_IN_FLIGHT calls at once are all admitted once the thread is free.
        time.sleep(1)
        futures = [stub.ModelInfer.future(request, timeout=CALL_TIMEOUT) for _ in range(2)]
        assert [probabilities_of(f.result()) for f in futures] == [expected] * 2
    assert '"grpc_status":"CANCELLED"' in re.sub(r"\s", "", server.output)
    assert_still_serving(server, worker)


def test_streams_beyond_max_in_flight_on_one_connection(server: ServerProcess, worker: int) -> None:
    """Sixty calls at once on one connection, whose HTTP/2 allows MAX_IN_FLIGHT streams: the
    rest queue in the client or are answered UNAVAILABLE, by the worker's cap or, for streams
    the client opened before the server's SETTINGS reached it, by HTTP/2's REFUSED_STREAM (code
    7: never processed); every answer that comes is the right one."""
    small, large = rows(5), rows(20_000)  # a large one goes to the inference thread
    with grpc.insecure_channel(server.grpc_url, options=OWN_CONNECTION) as channel:
        stub = stub_of(channel)
        expected = {
            len(batch): probabilities_of(stub.ModelInfer(infer_request(batch)))
            for batch in (small, large)
        }
        batches = [small if i % 3 else large for i in range(60)]
        futures = [
            stub.ModelInfer.future(infer_request(batch), timeout=CALL_TIMEOUT) for batch in batches
        ]
        codes = Counter()
        for batch, future in zip(batches, futures, strict=True):
            try:
                response = future.result()
            except grpc.RpcError as error:
                codes[error.code()] += 1
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                assert f"more than {MAX_IN_FLIGHT} requests at work" in error.details() or (
                    "RST_STREAM with error code 7" in error.details()
                ), error.details()
                continue
            codes[grpc.StatusCode.OK] += 1
            assert probabilities_of(response) == expected[len(batch)]
    assert codes[grpc.StatusCode.OK] > 0, codes
    assert os.path.exists(f"/proc/{worker}")
    assert_still_serving(server, worker)
