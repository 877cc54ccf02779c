"""The gRPC front door in-process: decoding and encoding against REST's, status codes, and the
real grpc.aio server started through the app's lifespan."""

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from falcon import testing
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.server import free_port
from serve import grpc_messages as messages
from serve.app import create_app
from serve.auth import BearerTokens, TokenGate
from serve.errors import (
    BadRequest,
    InvalidCrystalData,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    PredictionFailed,
    RequestTimeout,
    ServiceError,
    UnknownModel,
    UnknownVersion,
)
from serve.grpc_server import GrpcServer
from serve.grpc_service import InferenceService, TensorDecoder, encode_answer, status_code
from serve.logs import AccessLog
from serve.metrics import REQUESTS, Metrics
from serve.protocol import InferencePath
from serve.registry import ModelRegistry
from serve.runner import BatchRunner
from serve.settings import Limits, Settings
from serve.v2 import InferDecoder, OutputRequest, render_answer
from support.examples import ROWS
from support.fakes import LABELS, SKLEARN_ROWS, FailingClassifier, FakeClassifier

LIMITS = Limits(max_rows=3)
Request = messages.ModelInferRequest
Response = messages.ModelInferResponse


def infer_request(
    rows: np.ndarray | list, datatype: str = "FP64", raw: bool = False, shape=None, **fields
) -> Request:
    values = np.asarray(rows, dtype=np.float64 if datatype == "FP64" else np.float32)
    request = Request(model_name="sklearn", **fields)
    tensor = request.inputs.add(name="input", datatype=datatype)
    tensor.shape.extend(shape or values.shape)
    if raw:
        request.raw_input_contents.append(values.tobytes())
    else:
        field = "fp64_contents" if datatype == "FP64" else "fp32_contents"
        getattr(tensor.contents, field).extend(values.ravel().tolist())
    return request


def rest_error(body: dict) -> str:
    """The message REST answers a JSON request with."""
    try:
        InferDecoder(LIMITS).decode(json.dumps(body).encode(), None)
    except ServiceError as exc:
        return str(exc)
    raise AssertionError("REST accepted it")


def grpc_error(request: Request) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        TensorDecoder(LIMITS).decode(request)
    return caught.value


def test_the_committed_descriptor_is_the_committed_proto_compiled(tmp_path: Path) -> None:
    """grpcio-tools (a test requirement only) compiles serve/proto/ to the committed bytes."""
    out = tmp_path / "again.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{messages.PROTO_DIR}",
            f"--descriptor_set_out={out}",
            messages.PROTO.name,
        ],
        check=True,
    )
    assert out.read_bytes() == messages.DESCRIPTOR_SET.read_bytes()


def test_the_service_has_the_six_methods() -> None:
    assert list(messages.METHODS) == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
@pytest.mark.parametrize("raw", [False, True])
def test_typed_and_raw_inputs_decode_to_the_float64_batch(datatype: str, raw: bool) -> None:
    batch, outputs, raw_out = TensorDecoder(LIMITS).decode(infer_request(ROWS, datatype, raw))
    dtype = np.float64 if datatype == "FP64" else np.float32
    assert batch.dtype == np.float64
    assert np.array_equal(batch, np.array(ROWS, dtype=dtype).astype(np.float64))
    assert [o.name for o in outputs] == ["probabilities", "label"]
    assert raw_out is raw


@pytest.mark.parametrize(
    ("mutate", "rest_body"),
    [
        (
            lambda r: setattr(r.inputs[0], "name", "x"),
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]},
        ),
        (
            lambda r: setattr(r.inputs[0], "datatype", "INT32"),
            {
                "inputs": [
                    {"name": "input", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, 4]}
                ]
            },
        ),
        (
            lambda r: r.inputs[0].shape.__setitem__(1, 3),
            {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]},
        ),
        (
            lambda r: r.inputs[0].shape.__setitem__(0, 2),
            {
                "inputs": [
                    {"name": "input", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}
                ]
            },
        ),
    ],
)
def test_bad_inputs_get_rest_messages(mutate, rest_body: dict) -> None:
    request = infer_request([[1, 2, 3, 4]])
    mutate(request)
    error = grpc_error(request)
    assert str(error) == rest_error(rest_body)
    assert status_code(error) is grpc.StatusCode.INVALID_ARGUMENT


def test_values_outside_the_bounds_or_not_finite_are_refused_as_rest_binary_tensors() -> None:
    for bad in (1e13, float("nan"), float("inf")):
        error = grpc_error(infer_request([[1, 2, bad, 4]], raw=True))
        assert str(error) == "input value 2 is not a finite number within ±1e+12"
        assert status_code(error) is grpc.StatusCode.INVALID_ARGUMENT


def test_too_many_rows_is_resource_exhausted_with_rests_message() -> None:
    error = grpc_error(infer_request([[1, 2, 3, 4]] * 4))
    assert isinstance(error, PayloadTooLarge)
    assert str(error) == "input has 4 rows, the limit is 3"
    assert status_code(error) is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_raw_contents_must_be_whole_values_and_not_mixed_with_typed_ones() -> None:
    request = infer_request([[1, 2, 3, 4]], raw=True)
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    assert "31 bytes, not a whole number of 8-byte values" in str(grpc_error(request))
    request = infer_request([[1, 2, 3, 4]], raw=True)
    request.inputs[0].contents.fp64_contents.append(1.0)
    assert "both contents and raw_input_contents" in str(grpc_error(request))
    request = infer_request([[1, 2, 3, 4]])
    request.inputs[0].contents.int_contents.append(1)
    assert str(grpc_error(request)) == "a FP64 input's values go in fp64_contents, not int_contents"


def test_requested_outputs_and_parameters_are_checked_as_rests() -> None:
    request = infer_request([[1, 2, 3, 4]])
    request.outputs.add(name="nope")
    assert str(grpc_error(request)).startswith("outputs must be among ['probabilities', 'label']")
    request = infer_request([[1, 2, 3, 4]])
    request.outputs.add(name="label").parameters["classification"].int64_param = 2
    assert str(grpc_error(request)) == "classification applies to the probabilities output only"
    request = infer_request([[1, 2, 3, 4]])
    request.parameters["binary_data_output"].int64_param = 1
    assert str(grpc_error(request)) == "parameter binary_data_output must be true or false"
    request = infer_request([[1, 2, 3, 4]])
    request.parameters["binary_data_output"].bool_param = True
    assert TensorDecoder(LIMITS).decode(request)[2] is True


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BadRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (InvalidCrystalData("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (UnknownModel("x"), grpc.StatusCode.NOT_FOUND),
        (UnknownVersion("x"), grpc.StatusCode.NOT_FOUND),
        (PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Overloaded("x"), grpc.StatusCode.UNAVAILABLE),
        (ModelNotReady("x"), grpc.StatusCode.UNAVAILABLE),
        (PredictionFailed("x"), grpc.StatusCode.INTERNAL),
        (RequestTimeout("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_status_codes(error: ServiceError, code: grpc.StatusCode) -> None:
    assert status_code(error) is code


@pytest.mark.parametrize("output_dtype", [np.float64, np.float32])
def test_answers_hold_rests_values_bit_for_bit(output_dtype: type) -> None:
    model = FakeClassifier(SKLEARN_ROWS, output_dtype)
    probabilities = model.predict(np.array(ROWS)).astype(np.float64)
    predicted = [LABELS[i] for i in probabilities.argmax(axis=1)]
    outputs = (
        OutputRequest("probabilities", True),
        OutputRequest("label", True),
        OutputRequest("probabilities", True, 2),
    )
    body, header = render_answer("sklearn", model, None, probabilities, predicted, LABELS, outputs)
    rest_binary = body[header:]
    raw = encode_answer("sklearn", model, "7", probabilities, predicted, LABELS, outputs, True)
    assert b"".join(raw.raw_output_contents) == rest_binary
    typed = encode_answer("sklearn", model, "7", probabilities, predicted, LABELS, outputs, False)
    field = "fp64_contents" if output_dtype is np.float64 else "fp32_contents"
    values = np.array(getattr(typed.outputs[0].contents, field), dtype=output_dtype)
    assert values.tobytes() == raw.raw_output_contents[0]
    assert list(typed.outputs[0].shape) == [3, 3]
    assert [v.decode() for v in typed.outputs[1].contents.bytes_contents] == predicted
    assert list(typed.outputs[2].shape) == [3, 2]
    assert typed.id == "7"
    assert typed.model_version == model.version


def call(
    channel: grpc.aio.Channel, method: str, request, metadata: tuple = ()
) -> grpc.aio.UnaryUnaryCall:
    response_class = messages.METHODS[method][1]
    return channel.unary_unary(
        f"/{messages.SERVICE}/{method}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_class.FromString,
    )(request, metadata=metadata)


@contextmanager
def lone_master() -> Iterator[int]:
    """The pid of a process without children, as the gRPC master: a stop hands over to nobody.
    The test process itself would not do: a server an end-to-end test started is its child, and
    each stop would wait GRACEFUL_TIMEOUT for it to listen on the port."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def serve_in_process(
    models: dict, runner_cap: int, scenario, tokens: BearerTokens | None = None
) -> list[bytes]:
    """Runs `scenario(channel)` against a GrpcServer on a free loopback port; the access lines."""
    lines: list[bytes] = []
    port = free_port()
    settings = Settings.from_env({"HOST": "127.0.0.1", "GRPC_PORT": str(port)})
    metrics = Metrics()
    registry = ModelRegistry(models, LABELS, metrics)
    runner = BatchRunner(0, runner_cap, metrics)
    path = InferencePath(registry, settings.limits, runner, metrics, TokenGate(tokens, metrics))
    service = InferenceService(path, AccessLog(lines.append), log_probes=False)

    async def run(master: int) -> None:
        server = GrpcServer(service, registry.all_ready, settings, master)
        await server.process_startup({}, {})
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await scenario(channel)
        finally:
            await server.process_shutdown({}, {})

    with lone_master() as master:
        asyncio.run(run(master))
    return lines


def test_a_failed_prediction_is_internal_and_a_full_worker_sheds() -> None:
    async def failing(channel: grpc.aio.Channel) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(channel, "ModelInfer", infer_request(ROWS))
        assert caught.value.code() is grpc.StatusCode.INTERNAL
        assert caught.value.details() == "model sklearn failed to predict"

    lines = serve_in_process({"sklearn": FailingClassifier(SKLEARN_ROWS)}, 16, failing)
    assert b'"status":500' in lines[-1] and b'"grpc_status":"INTERNAL"' in lines[-1]

    async def shed(channel: grpc.aio.Channel) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(channel, "ModelInfer", infer_request(ROWS))
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == "more than 0 requests at work in this worker; retry"

    serve_in_process({"sklearn": FakeClassifier(SKLEARN_ROWS)}, 0, shed)


def test_the_app_serves_grpc_and_health_through_its_lifespan() -> None:
    port = free_port()
    metrics = Metrics()
    lines: list[bytes] = []
    with lone_master() as master:
        app = create_app(
            {"sklearn": FakeClassifier(SKLEARN_ROWS)},
            LABELS,
            metrics=metrics,
            access_log=AccessLog(lines.append),
            settings=Settings.from_env({"HOST": "127.0.0.1", "GRPC_PORT": str(port)}),
            grpc_master=master,
        )

        async def scenario() -> None:
            async with (
                testing.ASGIConductor(app),
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
            ):
                assert (
                    await call(channel, "ServerReady", messages.METHODS["ServerReady"][0]())
                ).ready
                answer = await call(channel, "ModelInfer", infer_request(ROWS, id="a1"))
                assert answer.id == "a1"
                assert list(answer.outputs[0].contents.fp64_contents) == (
                    np.array(SKLEARN_ROWS)[[0, 1, 0]].ravel().tolist()
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(
                        channel, "ModelMetadata", messages.METHODS["ModelMetadata"][0](name="x")
                    )
                assert caught.value.code() is grpc.StatusCode.NOT_FOUND
                assert caught.value.details() == "no model named 'x'"
                checks = health_pb2_grpc.HealthStub(channel)
                for service in ("", messages.SERVICE):
                    answer = await checks.Check(health_pb2.HealthCheckRequest(service=service))
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING

        asyncio.run(scenario())
        infer = metrics.totals().values(REQUESTS)
        assert infer[("grpc", f"/{messages.SERVICE}/ModelInfer", "POST", "sklearn", "200")] == 1
        assert any(b'"path":"/inference.GRPCInferenceService/ModelInfer"' in line for line in lines)


def test_tokens_are_asked_in_the_authorization_metadata_of_all_but_the_probes() -> None:
    """REST's guard over gRPC: ModelReady and the server probes stay open; the rest answer
    UNAUTHENTICATED without an accepted token, counted and logged without it."""
    token, other = "droid-token-0123456789", "droid-token-abcdefghij"
    tokens = BearerTokens((hashlib.sha256(token.encode()).digest(),))
    requests = {
        "ServerLive": messages.METHODS["ServerLive"][0](),
        "ServerReady": messages.METHODS["ServerReady"][0](),
        "ModelReady": messages.METHODS["ModelReady"][0](name="sklearn"),
        "ServerMetadata": messages.METHODS["ServerMetadata"][0](),
        "ModelMetadata": messages.METHODS["ModelMetadata"][0](name="sklearn"),
        "ModelInfer": infer_request(ROWS),
    }
    codes: dict[tuple[str, str], grpc.StatusCode] = {}

    async def scenario(channel: grpc.aio.Channel) -> None:
        for method, request in requests.items():
            for sent in ("", f"Bearer {other}", f"Bearer {token}"):
                metadata = (("authorization", sent),) if sent else ()
                try:
                    await call(channel, method, request, metadata)
                    codes[method, sent] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as error:
                    codes[method, sent] = error.code()

    lines = serve_in_process({"sklearn": FakeClassifier(SKLEARN_ROWS)}, 16, scenario, tokens)
    for method in requests:
        public = method in ("ServerLive", "ServerReady", "ModelReady")
        refused = grpc.StatusCode.OK if public else grpc.StatusCode.UNAUTHENTICATED
        assert codes[method, ""] is refused, method
        assert codes[method, f"Bearer {other}"] is refused, method
        assert codes[method, f"Bearer {token}"] is grpc.StatusCode.OK, method
    logged = b"".join(lines)
    assert logged.count(b'"grpc_status":"UNAUTHENTICATED"') == 6
    assert token.encode() not in logged and other.encode() not in logged


def test_two_authorization_entries_are_refused_whichever_comes_first() -> None:
    """As REST refuses two Authorization headers: which of the two would count is ambiguous."""
    token, other = "droid-token-0123456789", "droid-token-abcdefghij"
    tokens = BearerTokens((hashlib.sha256(token.encode()).digest(),))
    request = messages.METHODS["ModelMetadata"][0](name="sklearn")
    codes = []

    async def scenario(channel: grpc.aio.Channel) -> None:
        for sent in ((token, other), (other, token), (token,)):
            metadata = tuple(("authorization", f"Bearer {value}") for value in sent)
            try:
                await call(channel, "ModelMetadata", request, metadata)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())

    serve_in_process({"sklearn": FakeClassifier(SKLEARN_ROWS)}, 16, scenario, tokens)
    refused = grpc.StatusCode.UNAUTHENTICATED
    assert codes == [refused, refused, grpc.StatusCode.OK]
