"""The Open Inference Protocol over gRPC through the real tritonclient.grpc and grpc.health.v1,
against the live server: probes, metadata, inference equal to REST's bit for bit, status codes,
and SIGKILL, SIGHUP and SIGTERM under gRPC load without a wrong answer."""

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from harness.server import ServerProcess
from serve.listeners import listening_pids
from support.examples import ROWS as EXAMPLE_ROWS

pytestmark = pytest.mark.e2e

ROWS = np.array([*EXAMPLE_ROWS, [0, 1, 2, 3]])
DTYPES = {"FP64": np.float64, "FP32": np.float32}
# A channel of its own per client: grpc shares connections between equal channels otherwise.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.grpc_url) as grpc_client:
        yield grpc_client


def grpc_infer(client, model: str, rows: np.ndarray, datatype: str, **options):
    tensor = triton.InferInput("input", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows.astype(DTYPES[datatype]))  # raw_input_contents
    return client.infer(model, [tensor], **options)


def rest_probabilities(server: ServerProcess, model: str, rows: np.ndarray, datatype: str):
    """REST's answer through its binary tensor extension: the values exactly as computed."""
    rest = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    tensor = triton_http.InferInput("input", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows.astype(DTYPES[datatype]), binary_data=True)
    outputs = [
        triton_http.InferRequestedOutput(n, binary_data=True) for n in ("probabilities", "label")
    ]
    result = rest.infer(model, [tensor], outputs=outputs)
    return result.as_numpy("probabilities"), [x.decode() for x in result.as_numpy("label")]


def typed_request(model: str, rows: np.ndarray, datatype: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input", datatype=datatype, shape=list(rows.shape))
    field = "fp64_contents" if datatype == "FP64" else "fp32_contents"
    getattr(tensor.contents, field).extend(rows.astype(DTYPES[datatype]).ravel().tolist())
    return request


def error_of(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_probes_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("sklearn")
    version = client.get_model_metadata("sklearn").versions[0]
    assert client.is_model_ready("sklearn", version)
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "crystal-serving"
    assert server["extensions"] == ["classification"]
    metadata = client.get_model_metadata("pytorch", as_json=True)
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]


@pytest.mark.parametrize("model", ["sklearn", "pytorch"])
@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_infer_equals_rest_bit_for_bit_raw_and_typed(
    server: ServerProcess, client: triton.InferenceServerClient, model: str, datatype: str
) -> None:
    expected, labels = rest_probabilities(server, model, ROWS, datatype)
    raw = grpc_infer(client, model, ROWS, datatype, request_id="r1")
    assert raw.get_response().id == "r1"
    assert raw.as_numpy("probabilities").dtype == expected.dtype
    assert raw.as_numpy("probabilities").tobytes() == expected.tobytes()
    assert [x.decode() for x in raw.as_numpy("label")] == labels
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        typed = stub.ModelInfer(typed_request(model, ROWS, datatype))
    assert not typed.raw_output_contents
    probabilities, label = typed.outputs
    field = "fp64_contents" if expected.dtype == np.float64 else "fp32_contents"
    values = np.array(getattr(probabilities.contents, field), dtype=expected.dtype)
    assert values.tobytes() == expected.tobytes()
    assert list(probabilities.shape) == list(expected.shape)
    assert [x.decode() for x in label.contents.bytes_contents] == labels


def test_requested_outputs_classification_and_versions(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    version = client.get_model_metadata("sklearn").versions[0]
    outputs = [triton.InferRequestedOutput("probabilities", class_count=2)]
    result = grpc_infer(client, "sklearn", ROWS, "FP64", outputs=outputs, model_version=version)
    assert [o.name for o in result.get_response().outputs] == ["probabilities"]
    rest = requests.post(
        f"{server.url}/v2/models/sklearn/infer",
        json={
            "inputs": [
                {"name": "input", "shape": [4, 4], "datatype": "FP64", "data": ROWS.tolist()}
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
        },
        timeout=10,
    ).json()
    assert [x.decode() for x in result.as_numpy("probabilities").ravel()] == rest["outputs"][0][
        "data"
    ]
    assert result.as_numpy("probabilities").shape == (4, 2)
    labels_only = grpc_infer(
        client, "sklearn", ROWS, "FP64", outputs=[triton.InferRequestedOutput("label")]
    )
    assert labels_only.as_numpy("probabilities") is None
    assert len(labels_only.as_numpy("label")) == 4


def test_errors_have_their_status_codes_and_rests_messages(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    unknown = error_of(lambda: grpc_infer(client, "nope", ROWS, "FP64"))
    assert unknown.status() == "StatusCode.NOT_FOUND"
    rest = requests.post(f"{server.url}/v2/models/nope/infer", json={}, timeout=10)
    assert unknown.message() == rest.json()["error"]
    version = error_of(lambda: grpc_infer(client, "sklearn", ROWS, "FP64", model_version="9"))
    assert version.status() == "StatusCode.NOT_FOUND"
    rest = requests.get(f"{server.url}/v2/models/sklearn/versions/9", timeout=10)
    assert version.message() == rest.json()["error"]
    assert error_of(lambda: client.get_model_metadata("nope")).status() == "StatusCode.NOT_FOUND"
    shape = error_of(lambda: grpc_infer(client, "sklearn", ROWS[:, :3], "FP64"))
    assert shape.status() == "StatusCode.INVALID_ARGUMENT"
    assert shape.message() == "input shape must be [n, 4] with n >= 1, got [4, 3]"
    bounds = error_of(lambda: grpc_infer(client, "sklearn", ROWS * 1e13, "FP64"))
    assert bounds.status() == "StatusCode.INVALID_ARGUMENT"
    assert bounds.message() == "input value 0 is not a finite number within ±1e+12"
    many = np.zeros((100_001, 4))
    rows = error_of(lambda: grpc_infer(client, "sklearn", many, "FP64"))
    assert rows.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert rows.message() == "input has 100001 rows, the limit is 100000"
    huge = np.zeros((600_000, 4))  # 19.2 MB: over MAX_BODY_BYTES, refused before it is read
    size = error_of(lambda: grpc_infer(client, "sklearn", huge, "FP64"))
    assert size.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live()


def test_health_service_answers_serving_once_models_are_ready(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        checks = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = checks.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            checks.Check(health_pb2.HealthCheckRequest(service="other"), timeout=5)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_metrics_and_access_log_count_grpc_calls(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    grpc_infer(client, "sklearn", ROWS, "FP64", headers={"x-request-id": "grpc-e2e-1"})
    deadline = time.monotonic() + 10
    while '"request_id":"grpc-e2e-1"' not in server.output:
        assert time.monotonic() < deadline, server.output[-2000:]
        time.sleep(0.05)
    line = next(x for x in server.output.splitlines() if '"request_id":"grpc-e2e-1"' in x)
    assert '"path":"/inference.GRPCInferenceService/ModelInfer"' in line
    assert '"rows":4' in line and '"status":200' in line and '"grpc_status":"OK"' in line
    # Each worker publishes its counts every METRICS_FLUSH_SECONDS; any worker may answer.
    infer = 'endpoint="/inference.GRPCInferenceService/ModelInfer",method="POST",model="sklearn"'
    while True:
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
        if any(infer in x and 'protocol="grpc"' in x for x in metrics.splitlines()):
            break
        assert time.monotonic() < deadline + 10, metrics[-2000:]
        time.sleep(0.1)


class Load:
    """gRPC inference from several clients, each on a connection of its own, until stopped or
    until each has sent `limit` calls: every answer is compared with the expected one."""

    def __init__(self, url: str, expected: np.ndarray, clients: int = 4, limit: int = 4000):
        self.expected = expected.tobytes()
        self.answers = 0
        self.wrong = 0
        self.errors: Counter[tuple[str, str]] = Counter()  # (phase, status)
        self.phase = "start"
        self.messages: list[str] = []
        self._url = url
        self._limit = limit
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        with triton.InferenceServerClient(self._url, channel_args=OWN_CONNECTION) as client:
            for _ in range(self._limit):
                if self._stop.is_set():
                    return
                try:
                    result = grpc_infer(client, "sklearn", ROWS, "FP64", client_timeout=10)
                except InferenceServerException as exc:
                    with self._lock:
                        self.errors[self.phase, exc.status()] += 1
                        self.messages.append(f"{self.phase} {exc.status()} {exc.message()}")
                    time.sleep(0.01)
                    continue
                with self._lock:
                    self.answers += 1
                    self.wrong += result.as_numpy("probabilities").tobytes() != self.expected

    def wait_for_answers(self, more: int, seconds: float = 20.0) -> None:
        target = self.answers + more
        deadline = time.monotonic() + seconds
        while self.answers < target:
            assert time.monotonic() < deadline, f"load stalled at {self.answers}: {self.errors}"
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def wait_for_workers(live: ServerProcess, old: set[int], seconds: float = 30.0) -> list[int]:
    """Until the server has its two workers, none of `old`, each listening on GRPC_PORT."""
    deadline = time.monotonic() + seconds
    while True:
        pids = live.worker_pids()
        fresh = len(pids) == 2 and not old & set(pids)
        if fresh and sorted(listening_pids(live.grpc_port, pids)) == pids:
            return pids
        assert time.monotonic() < deadline, f"workers {pids}, old {old}\n{live.output[-2000:]}"
        time.sleep(0.05)


def test_sigkill_sighup_and_sigterm_under_grpc_load_never_answer_wrong() -> None:
    live = ServerProcess().wait_ready()
    try:
        first = wait_for_workers(live, set())
        expected, _ = rest_probabilities(live, "sklearn", ROWS, "FP64")
        load = Load(live.grpc_url, expected)
        load.wait_for_answers(200)

        load.phase = "kill"
        os.kill(first[0], signal.SIGKILL)  # a crashed worker: its replacement binds again
        second = wait_for_workers(live, {first[0]})
        load.wait_for_answers(200)

        load.phase = "reload"
        live.process.send_signal(signal.SIGHUP)  # a reload: new workers bind, old ones drain
        wait_for_workers(live, set(second))
        load.wait_for_answers(200)

        load.phase = "stop"
        assert live.stop() == 0  # SIGTERM: in-flight calls finish, then the workers exit
        load.stop()
    finally:
        if live.process.poll() is None:
            live.kill()
    assert load.wrong == 0
    # A call in progress on a killed worker's connection fails; a reload leaves no gap in which
    # nobody listens (no "connection refused"); calls that race a worker's stop may be
    # cancelled; after the stop nothing listens. None is ever answered wrong.
    phases = {(phase, status) for phase, status in load.errors}
    assert phases <= {
        ("kill", "StatusCode.UNAVAILABLE"),
        ("reload", "StatusCode.CANCELLED"),
        ("stop", "StatusCode.CANCELLED"),
        ("stop", "StatusCode.UNAVAILABLE"),
    }, load.messages[:10]
    assert "Traceback" not in live.output, live.output[-3000:]
