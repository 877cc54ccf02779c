"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, serve/proto/): its six
RPCs on the same inference path as REST (serve/protocol.py's InferencePath), with REST's checks,
messages and answers (serve/v2.py), the same metrics under the `grpc` protocol label, and the
same access log line. serve/grpc_server.py serves it in every worker.

Tensors arrive as typed contents (`fp64_contents`, `fp32_contents`) or in `raw_input_contents`
(little-endian, what tritonclient.grpc sends); the answer's outputs are raw when the request's
input was, or when it asks for raw outputs with the REST binary extension's parameters
(`binary_data_output`, or `binary_data` on an output: the protocol never mixes the two forms in
one answer), else typed. Errors are gRPC status codes with REST's messages (STATUS_CODES).
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from serve import grpc_messages as messages
from serve.classifier import Classifier
from serve.errors import BadRequest, ServiceError
from serve.logs import AccessLog
from serve.protocol import InferencePath
from serve.registry import ModelRegistry
from serve.runner import BatchRunner
from serve.settings import Limits
from serve.telemetry import RequestIds
from serve.triton import GRPC_PROTOCOL
from serve.v2 import (
    DATATYPES,
    OUTPUT_NAME,
    SERVER_NAME,
    SERVER_VERSION,
    OutputRequest,
    bytes_tensor,
    check_bounds,
    flag,
    input_dtype,
    metadata,
    requested_outputs,
    shaped_batch,
    top_classes,
)

logger = logging.getLogger("serve")

# Of the extensions REST serves, the one this proto carries (a parameter of ModelInfer).
EXTENSIONS = ["classification"]
# The status a failure is answered with, by the HTTP status REST answers it with.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The typed contents field that holds an input's values, by datatype.
CONTENTS_FIELDS = {"FP64": "fp64_contents", "FP32": "fp32_contents"}
REQUEST_ID_KEY = "x-request-id"


def endpoint(method: str) -> str:
    """An RPC's HTTP/2 path: its `endpoint` label and the path of its access log line."""
    return f"/{messages.SERVICE}/{method}"


INFER = "ModelInfer"
# RPCs that are probes: not counted in progress, logged only with LOG_PROBES (as REST's).
PROBES = frozenset({"ServerLive", "ServerReady"})
# RPCs open without a bearer token, as REST's probes and model readiness are.
PUBLIC = PROBES | {"ModelReady"}


def status_code(error: ServiceError) -> grpc.StatusCode:
    return STATUS_CODES.get(http_status(error), grpc.StatusCode.INTERNAL)


def http_status(error: ServiceError) -> int:
    return int(error.status[:3])


def parameters_of(parameters: Mapping[str, Message]) -> dict[str, Any]:
    """InferParameter values as REST's JSON parameters hold them (None when none is set)."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = None if choice is None else getattr(parameter, choice)
    return values


class TensorDecoder:
    """A ModelInferRequest's input as the [rows, 4] float64 batch, and its requested outputs,
    with REST's checks and messages."""

    def __init__(self, limits: Limits):
        self._max_rows = limits.max_rows
        self._bound = limits.max_abs_value

    def decode(self, request: Message) -> tuple[np.ndarray, tuple[OutputRequest, ...], bool]:
        """(batch, outputs, whether the outputs go in raw_output_contents)."""
        headers = [
            (tensor.name, tensor.datatype, tensor.shape, parameters_of(tensor.parameters))
            for tensor in request.inputs
        ]
        dtype = input_dtype(headers)
        tensor = request.inputs[0]
        raw_input = len(request.raw_input_contents) > 0
        values = self._raw(request, dtype) if raw_input else self._typed(tensor, dtype)
        check_bounds(values, self._bound)
        batch = shaped_batch(values, tensor.shape, self._max_rows)
        binary = flag(parameters_of(request.parameters), "binary_data_output", raw_input)
        outputs = requested_outputs(
            [(output.name, parameters_of(output.parameters)) for output in request.outputs], binary
        )
        return batch, outputs, any(output.binary for output in outputs)

    @staticmethod
    def _raw(request: Message, dtype: np.dtype) -> np.ndarray:
        raw = request.raw_input_contents
        if len(raw) != 1:
            raise BadRequest(f"raw_input_contents must hold one entry, the input's; got {len(raw)}")
        if request.inputs[0].HasField("contents"):
            raise BadRequest("the input has both contents and raw_input_contents; send one")
        if len(raw[0]) % dtype.itemsize:
            raise BadRequest(
                f"raw_input_contents[0] has {len(raw[0])} bytes, not a whole number of "
                f"{dtype.itemsize}-byte values"
            )
        return np.frombuffer(raw[0], dtype=dtype)

    @staticmethod
    def _typed(tensor: Message, dtype: np.dtype) -> np.ndarray:
        field = CONTENTS_FIELDS[tensor.datatype]
        others = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
        if others:
            raise BadRequest(f"a {tensor.datatype} input's values go in {field}, not {others[0]}")
        return np.array(getattr(tensor.contents, field), dtype=dtype)


def encode_answer(
    name: str,
    model: Classifier,
    request_id: str,
    probabilities: np.ndarray,
    predicted: list[str],
    classes: tuple[str, ...],
    outputs: tuple[OutputRequest, ...],
    raw: bool,
) -> Message:
    """The ModelInferResponse, with the values REST's render_answer gives, bit for bit."""
    response = messages.ModelInferResponse(
        model_name=name, model_version=model.version, id=request_id
    )
    for output in outputs:
        tensor = response.outputs.add(name=output.name)
        if output.class_count:
            strings = top_classes(probabilities, classes, output.class_count)
            tensor.datatype = "BYTES"
            tensor.shape.extend([len(probabilities), len(strings) // len(probabilities)])
            _put_strings(response, tensor, strings, raw)
        elif output.name == OUTPUT_NAME:
            values = probabilities.astype(model.output_dtype, copy=False)
            datatype = DATATYPES[model.output_dtype]
            tensor.datatype = datatype
            tensor.shape.extend(values.shape)
            if raw:
                response.raw_output_contents.append(values.tobytes())
            else:
                getattr(tensor.contents, CONTENTS_FIELDS[datatype]).extend(values.ravel().tolist())
        else:
            tensor.datatype = "BYTES"
            tensor.shape.append(len(predicted))
            _put_strings(response, tensor, predicted, raw)
    return response


def _put_strings(response: Message, tensor: Message, strings: list[str], raw: bool) -> None:
    if raw:
        response.raw_output_contents.append(bytes_tensor(strings))
    else:
        tensor.contents.bytes_contents.extend(value.encode() for value in strings)


class Call:
    """What one RPC's metrics and access line say, filled in as it is answered."""

    __slots__ = ("error", "model", "request_id", "rows")

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.model = ""
        self.rows = 0
        self.error = ""


Handler = Callable[[Any, Call], Awaitable[Any]]


class InferenceService:
    """`inference.GRPCInferenceService`: each RPC answered on the inference path, counted and
    logged as REST's requests are."""

    def __init__(self, path: InferencePath, access_log: AccessLog, log_probes: bool):
        self._registry: ModelRegistry = path.registry
        self._runner: BatchRunner = path.runner
        self._metrics = path.metrics
        self._gate = path.gate
        self._decoder = TensorDecoder(path.limits)
        self._access_log = access_log
        self._log_probes = log_probes
        self._ids = RequestIds()
        self._versions = {name: self._registry.model(name).version for name in self._registry.names}

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's methods for grpc.aio's server. ModelInfer takes and gives bytes: it
        parses and serializes inside its work, offloaded with it when the message is large."""
        handlers: dict[str, Handler] = {
            "ServerLive": self._server_live,
            "ServerReady": self._server_ready,
            "ModelReady": self._model_ready,
            "ServerMetadata": self._server_metadata,
            "ModelMetadata": self._model_metadata,
            INFER: self._model_infer,
        }
        methods = {}
        for method, (request_class, response_class) in messages.METHODS.items():
            is_infer = method == INFER
            methods[method] = grpc.unary_unary_rpc_method_handler(
                partial(self._answer, method, handlers[method]),
                request_deserializer=None if is_infer else request_class.FromString,
                response_serializer=None if is_infer else response_class.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(messages.SERVICE, methods)

    async def _answer(
        self, method: str, handler: Handler, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        """One RPC, with REST's telemetry: the metrics and the access line."""
        started = time.perf_counter()
        metadata = context.invocation_metadata() or ()
        invocation = dict(metadata)
        call = Call(self._ids.for_header(invocation.get(REQUEST_ID_KEY)))
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        probe = method in PROBES
        if not probe:
            self._metrics.in_flight += 1
        status, code, response = 200, grpc.StatusCode.OK, None
        try:
            if method not in PUBLIC:
                # Several entries are joined as HTTP joins repeated fields: refused, as on REST.
                sent = [value for key, value in metadata if key == "authorization"]
                self._gate.check(GRPC_PROTOCOL, ", ".join(sent) or None)
            response = await handler(request, call)
        except asyncio.CancelledError:  # the client went away or its deadline passed
            seconds = time.perf_counter() - started
            call.error = "cancelled before the answer: the deadline passed or the client left"
            code = grpc.StatusCode.CANCELLED
            self._record(method, call, 408, code, seconds, context, invocation, None)
            raise
        except ServiceError as error:
            status, code, call.error = http_status(error), status_code(error), str(error)
            call.model = call.model or error.model
            if status >= 500 and error.__cause__ is not None:
                logger.error(
                    "%s: %s",
                    endpoint(method),
                    error,
                    exc_info=error.__cause__,
                    extra={"fields": {"request_id": call.request_id}},
                )
        except Exception as error:  # answered without internals, logged whole
            logger.error(
                "%s: unexpected error",
                endpoint(method),
                exc_info=error,
                extra={"fields": {"request_id": call.request_id}},
            )
            status, code, call.error = 500, grpc.StatusCode.INTERNAL, "the server failed to answer"
        finally:
            if not probe:
                self._metrics.in_flight -= 1
        seconds = time.perf_counter() - started
        self._record(method, call, status, code, seconds, context, invocation, response)
        if code is not grpc.StatusCode.OK:
            await context.abort(code, call.error)
        return response

    def _record(
        self,
        method: str,
        call: Call,
        status: int,
        code: grpc.StatusCode,
        seconds: float,
        context: grpc.aio.ServicerContext,
        invocation: dict[str, str],
        response: Any,
    ) -> None:
        path = endpoint(method)
        self._metrics.request(GRPC_PROTOCOL, path, "POST", call.model, str(status), seconds)
        if method in PROBES and not self._log_probes:
            return
        self._access_log.request(
            call.request_id,
            "POST",
            path,
            call.model,
            self._versions.get(call.model, ""),
            call.rows,
            status,
            seconds,
            len(response) if isinstance(response, bytes) else 0,
            _client(context.peer() or ""),
            str(invocation.get("user-agent", "")),
            call.error,
            code.name,
        )

    async def _server_live(self, request: Message, call: Call) -> Message:
        return messages.METHODS["ServerLive"][1](live=True)

    async def _server_ready(self, request: Message, call: Call) -> Message:
        return messages.METHODS["ServerReady"][1](ready=self._registry.all_ready)

    async def _model_ready(self, request: Message, call: Call) -> Message:
        call.model = request.name
        ready = self._registry.is_ready(request.name, request.version or None)
        return messages.METHODS["ModelReady"][1](ready=ready)

    async def _server_metadata(self, request: Message, call: Call) -> Message:
        return messages.METHODS["ServerMetadata"][1](
            name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS
        )

    async def _model_metadata(self, request: Message, call: Call) -> Message:
        registry = self._registry
        model = registry.model(request.name, request.version or None)
        call.model = request.name
        document = metadata(request.name, model, registry.labels)
        return messages.METHODS["ModelMetadata"][1](
            name=document["name"],
            versions=document["versions"],
            platform=document["platform"],
            inputs=document["inputs"],
            outputs=document["outputs"],
            properties={"labels": json.dumps(document["labels"])},
        )

    async def _model_infer(self, body: bytes, call: Call) -> bytes:
        return await self._runner.run(len(body), partial(self._infer, body, call))

    def _infer(self, body: bytes, call: Call) -> bytes:
        """Parse, check, predict, answer: the work the runner admits and may offload."""
        try:
            request = messages.ModelInferRequest.FromString(body)
        except DecodeError as exc:
            raise BadRequest(f"invalid inference request: {exc}") from None
        registry, name = self._registry, request.model_name
        model = registry.model(name, request.model_version or None)
        call.model = name
        batch, outputs, raw = self._decoder.decode(request)
        call.rows = len(batch)
        probabilities, predicted = registry.run(name, batch)
        response = encode_answer(
            name, model, request.id, probabilities, predicted, registry.labels, outputs, raw
        )
        return response.SerializeToString()


def _client(peer: str) -> str:
    """The client's address from grpc's peer ("ipv4:127.0.0.1:52144"), as REST logs it."""
    address = peer.split(":", 1)[-1]
    host = address.rsplit(":", 1)[0]
    return host.removeprefix("[").removesuffix("]").replace("%5B", "").replace("%5D", "")
