"""The Open Inference Protocol (KServe V2) in one place: probes, server and model metadata,
`POST /v2/models/{name}/infer`, and its error shape `{"error": ...}` for every route under /v2.
Inference runs on the same registry, limits and validation rules as the droids' endpoints.

Tensors come and go as JSON data or in the binary tensor data extension's form (what tritonclient
sends and asks for by default): per output with `parameters.binary_data`, or for all with the
request's `parameters.binary_data_output`; the JSON header's length is then in
Inference-Header-Content-Length. Triton's classification extension is served here too
(`parameters.classification` on the probabilities output); its other extensions are in
serve/triton.py. Every model route also answers under `/versions/{version}`, for the version
the model lists.
"""

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import falcon
import falcon.asgi
import msgspec
import numpy as np

from serve import openapi
from serve.body import DECODE_ERRORS, bounded_value, check_utf8, read_body
from serve.classifier import Classifier
from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME
from serve.decode import FLOAT64, model_batch, rows_array
from serve.errors import BadRequest, InvalidCrystalData, PayloadTooLarge
from serve.protocol import AddRoute, Examples, InferencePath, send_json
from serve.registry import WARM_UP_ROW, ModelRegistry
from serve.render import binary_values, json_floats
from serve.request import MODEL_VERSION_HEADER, CrystalRequest
from serve.runner import BatchRunner
from serve.settings import Limits

PREFIX = "/v2"
SERVER_NAME = "crystal-serving"
SERVER_VERSION = "1.0.0"
# Served here: binary_tensor_data, classification; in serve/triton.py: the others.
EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "statistics",
    "model_configuration",
    "model_repository",
]
LABEL_OUTPUT = "label"
OUTPUT_NAMES = (OUTPUT_NAME, LABEL_OUTPUT)
INPUT_DATATYPES = {"FP64": np.dtype("<f8"), "FP32": np.dtype("<f4")}
DATATYPES = {np.dtype(np.float64): "FP64", np.dtype(np.float32): "FP32"}
BINARY_HEADER = "Inference-Header-Content-Length"
MODEL = f"{PREFIX}/models/{{name}}"
VERSIONED_MODEL = f"{MODEL}/versions/{{version}}"
SHARED_MEMORY = "shared-memory tensors are not supported; send tensors in the body (JSON or binary)"


class OutputRequest(NamedTuple):
    """One output to answer with: in binary or JSON, and, for the classification extension,
    the top `class_count` classes instead of the probabilities."""

    name: str
    binary: bool
    class_count: int = 0


class _Tensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: msgspec.Raw = msgspec.Raw(b"null")
    parameters: dict[str, Any] = {}


class _RequestedOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class _InferRequest(msgspec.Struct):
    inputs: list[_Tensor]
    id: str | None = None
    outputs: list[_RequestedOutput] | None = None
    parameters: dict[str, Any] = {}


_request_decoder = msgspec.json.Decoder(_InferRequest)
_encoder = msgspec.json.Encoder()


class InferDecoder:
    """Turns an inference request into (id, [rows, 4] float64 batch, requested outputs)."""

    def __init__(self, limits: Limits):
        value = bounded_value(limits)
        self._flat = msgspec.json.Decoder(list[value])
        self._nested = msgspec.json.Decoder(list[tuple[value, value, value, value]])
        self._max_rows = limits.max_rows
        self._bound = limits.max_abs_value

    def decode(
        self, body: bytes, header_length: int | None
    ) -> tuple[str | None, np.ndarray, tuple[OutputRequest, ...]]:
        """(id, batch, requested outputs). `header_length` is the binary extension's
        Inference-Header-Content-Length, if sent."""
        if header_length is None:
            header, binary = body, memoryview(b"")
        elif 0 < header_length <= len(body):  # the values stay in the body: a view of them
            header, binary = body[:header_length], memoryview(body)[header_length:]
        else:
            raise BadRequest(f"{BINARY_HEADER} must lie within the body")
        try:
            check_utf8(header)
        except InvalidCrystalData as exc:
            if header_length is None:
                raise BadRequest(
                    f"{exc}; a body with binary tensors needs the {BINARY_HEADER} header"
                ) from None
            raise
        try:
            request = _request_decoder.decode(header)
        except DECODE_ERRORS as exc:
            raise BadRequest(f"invalid inference request: {exc}") from None
        outputs = self._outputs(request.outputs, flag(request.parameters, "binary_data_output"))
        return request.id, self._batch(request.inputs, binary), outputs

    def _batch(self, inputs: list[_Tensor], binary: memoryview) -> np.ndarray:
        dtype = input_dtype([(t.name, t.datatype, t.shape, t.parameters) for t in inputs])
        tensor = inputs[0]
        if "binary_data_size" in tensor.parameters:
            batch = self._binary(tensor, binary, dtype)
        else:
            batch = self._json(tensor, dtype)
        return shaped_batch(batch, tensor.shape, self._max_rows)

    def _json(self, tensor: _Tensor, dtype: np.dtype) -> np.ndarray:
        data = bytes(tensor.data)
        nested = data.lstrip()[1:].lstrip().startswith(b"[")
        try:
            values = (self._nested if nested else self._flat).decode(data)
        except DECODE_ERRORS as exc:
            raise BadRequest(f"input data: {exc}".replace("`$", "`$.inputs[0].data")) from None
        batch = rows_array(values) if nested else np.array(values, dtype=FLOAT64)
        if dtype != FLOAT64:  # FP32: a value within the bound may lie past float32's range
            with np.errstate(over="ignore"):
                batch = batch.astype(dtype)
            check_bounds(batch, self._bound)
        return batch

    def _binary(self, tensor: _Tensor, binary: memoryview, dtype: np.dtype) -> np.ndarray:
        """Raw little-endian values; checked here as msgspec checks JSON values."""
        size = tensor.parameters["binary_data_size"]
        if not isinstance(size, int) or size != len(binary) or size % dtype.itemsize:
            raise BadRequest(
                f"binary_data_size must equal the {len(binary)} bytes after the JSON header"
            )
        batch = np.frombuffer(binary, dtype=dtype)
        check_bounds(batch, self._bound)
        return batch

    @staticmethod
    def _outputs(
        requested: list[_RequestedOutput] | None, binary: bool
    ) -> tuple[OutputRequest, ...]:
        return requested_outputs(
            [(output.name, output.parameters) for output in requested or []], binary
        )


# One input tensor's header as both transports carry it: name, datatype, shape, parameters.
InputHeader = tuple[str, str, Sequence[int], Mapping[str, Any]]


def input_dtype(inputs: Sequence[InputHeader]) -> np.dtype:
    """The checks of the input tensors' headers, the same over JSON and gRPC: the dtype of the
    one input's values."""
    if len(inputs) != 1 or inputs[0][0] != INPUT_NAME:
        raise BadRequest(f"expected exactly one input tensor named {INPUT_NAME!r}")
    _name, datatype, shape, parameters = inputs[0]
    if datatype not in INPUT_DATATYPES:
        raise BadRequest(f"input datatype must be FP64 or FP32, got {datatype[:20]!r}")
    shape = list(shape)
    if len(shape) != 2 or shape[1] != N_FEATURES or shape[0] < 1:
        raise BadRequest(f"input shape must be [n, {N_FEATURES}] with n >= 1, got {shape[:4]}")
    if "shared_memory_region" in parameters:
        raise BadRequest(SHARED_MEMORY)
    return INPUT_DATATYPES[datatype]


def shaped_batch(values: np.ndarray, shape: Sequence[int], max_rows: int) -> np.ndarray:
    """The values as the [rows, 4] float64 batch the models take, once they fit the shape and
    the row limit."""
    shape = list(shape)
    # The data must fit the shape first: only data that hold too many rows are too large.
    if values.size != shape[0] * N_FEATURES:
        raise BadRequest(
            f"input data has {values.size} values, shape {shape} needs {shape[0] * N_FEATURES}"
        )
    if shape[0] > max_rows:
        raise PayloadTooLarge(f"input has {shape[0]} rows, the limit is {max_rows}")
    return model_batch(values, shape[0])


def check_bounds(values: np.ndarray, bound: float) -> None:
    """Values checked as msgspec checks JSON ones: binary tensors, gRPC contents, and JSON
    values narrowed to FP32."""
    # NaN compares False: it is outside too. The bound as a float64: a Python float would be cast
    # to FP32 values' dtype, where a bound past float32's range becomes infinity and admits it.
    outside = ~(np.abs(values) <= np.float64(bound))
    if outside.any():
        index = int(np.argmax(outside))
        raise BadRequest(f"input value {index} is not a finite number within ±{bound:g}")


def requested_outputs(
    requested: Sequence[tuple[str, Mapping[str, Any]]], binary: bool
) -> tuple[OutputRequest, ...]:
    """Each output, by name and parameters, in binary when it asks (`binary_data`), else as the
    request asks (`binary` from `binary_data_output`), else in JSON. No outputs named (or an
    empty list) means all."""
    if not requested:
        return tuple(OutputRequest(name, binary) for name in OUTPUT_NAMES)
    names = [name for name, _parameters in requested]
    if any(name not in OUTPUT_NAMES for name in names) or len(set(names)) != len(names):
        raise BadRequest(
            f"outputs must be among {list(OUTPUT_NAMES)}, each once, "
            f"got {[n[:20] for n in names[:5]]}"
        )
    return tuple(
        OutputRequest(name, flag(parameters, "binary_data", binary), _class_count(name, parameters))
        for name, parameters in requested
    )


def _class_count(name: str, parameters: Mapping[str, Any]) -> int:
    """The classification extension's `classification` parameter: 0 when absent."""
    if "shared_memory_region" in parameters:
        raise BadRequest(SHARED_MEMORY)
    if "classification" not in parameters:
        return 0
    count = parameters["classification"]
    if name != OUTPUT_NAME:
        raise BadRequest(f"classification applies to the {OUTPUT_NAME} output only")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BadRequest("parameter classification must be a whole number of classes, >= 1")
    return count


def flag(parameters: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {name} must be true or false")
    return value


def top_classes(probabilities: np.ndarray, labels: Sequence[str], count: int) -> list[str]:
    """The classification extension's answer, row by row: the `count` most probable classes as
    "score:index:label", highest first (ties by index). The score is the probability exactly as
    the probabilities output gives it, in shortest round-trip form."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
    scores = np.take_along_axis(probabilities, order, axis=1)
    return [
        f"{score!r}:{index}:{labels[index]}"
        for row_scores, row_order in zip(scores.tolist(), order.tolist(), strict=True)
        for score, index in zip(row_scores, row_order, strict=True)
    ]


def bytes_tensor(values: list[str]) -> bytes:
    """BYTES elements in the binary extension's form: a 4-byte little-endian length, then them."""
    encoded = [value.encode() for value in values]
    return b"".join(len(value).to_bytes(4, "little") + value for value in encoded)


def error_answer(title: str, description: str) -> bytes:
    """The protocol's error shape: one message (the title is the droids' protocol's extra)."""
    return _encoder.encode({"error": description})


class ServerMetadata:
    async def on_get(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        send_json(resp, {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})


class Probe:
    """GET and HEAD: live while the worker answers at all; ready once every model loaded,
    matched its checksum and passed its warm-up in this worker."""

    def __init__(self, registry: ModelRegistry | None):
        self._registry = registry

    async def on_get(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        if self._registry is None:
            send_json(resp, {"live": True})
            return
        ready = self._registry.all_ready
        send_json(resp, {"ready": ready}, falcon.HTTP_200 if ready else falcon.HTTP_503)

    on_head = on_get


def metadata(name: str, model: Classifier, labels: Sequence[str]) -> dict:
    """A model's metadata: every output infer can return, with its datatype and shape."""
    return {
        "name": name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": DATATYPES[model.input_dtype],
                "shape": [-1, N_FEATURES],
            }
        ],
        "outputs": [
            {
                "name": OUTPUT_NAME,
                "datatype": DATATYPES[model.output_dtype],
                "shape": [-1, model.n_classes],
            },
            {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "labels": list(labels),
    }


class ModelDocuments:
    """GET and HEAD `/v2/models/{name}[/versions/{version}]` (metadata) and its `/ready`
    (readiness, the `ready` suffix), counted under the model: an unknown name or version is a
    404 in `registry.model`."""

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    async def on_get(
        self, req: CrystalRequest, resp: falcon.asgi.Response, name: str, version: str | None = None
    ) -> None:
        model = self._registry.model(name, version)
        req.context.model = name
        send_json(resp, metadata(name, model, self._registry.labels))

    on_head = on_get

    async def on_get_ready(
        self, req: CrystalRequest, resp: falcon.asgi.Response, name: str, version: str | None = None
    ) -> None:
        ready = self._registry.is_ready(name, version)
        req.context.model = name
        send_json(
            resp, {"name": name, "ready": ready}, falcon.HTTP_200 if ready else falcon.HTTP_503
        )

    on_head_ready = on_get_ready


def render_answer(
    name: str,
    model: Classifier,
    request_id: str | None,
    probabilities: np.ndarray,
    predicted: list[str],
    classes: Sequence[str],
    outputs: tuple[OutputRequest, ...],
) -> tuple[bytes, int | None]:
    """The infer answer, and the length of its JSON header when binary outputs follow it:
    `predicted` holds each row's label, `classes` the labels of the probabilities' columns."""
    answer: dict[str, Any] = {"model_name": name, "model_version": model.version}
    if request_id is not None:
        answer["id"] = request_id
    answer["outputs"], binaries = [], []
    for output in outputs:
        if output.class_count:
            strings = top_classes(probabilities, classes, output.class_count)
            count = len(strings) // len(probabilities)
            datatype, shape, data = "BYTES", [len(probabilities), count], strings
            raw = bytes_tensor(strings) if output.binary else None
        elif output.name == OUTPUT_NAME:
            datatype, shape = DATATYPES[model.output_dtype], list(probabilities.shape)
            values = probabilities.astype(model.output_dtype, copy=False)
            raw = binary_values(values) if output.binary else None
            data = None if output.binary else json_floats(probabilities)
        else:
            datatype, shape, data = "BYTES", [len(predicted)], predicted
            raw = bytes_tensor(predicted) if output.binary else None
        tensor: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": shape}
        if raw is None:
            tensor["data"] = data
        else:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binaries.append(raw)
        answer["outputs"].append(tensor)
    header = _encoder.encode(answer)
    if not binaries:
        return header, None
    return b"".join([header, *binaries]), len(header)


class InferResource:
    """POST `/v2/models/{name}[/versions/{version}]/infer`."""

    def __init__(self, registry: ModelRegistry, limits: Limits, runner: BatchRunner):
        self._registry = registry
        self._decoder = InferDecoder(limits)
        self._limits = limits
        self._runner = runner

    def _work(
        self, name: str, body: bytes, header_length: int | None
    ) -> tuple[int, bytes, int | None]:
        """(rows, answer, length of its JSON header when binary outputs follow it)."""
        request_id, batch, outputs = self._decoder.decode(body, header_length)
        probabilities, predicted = self._registry.run(name, batch)
        model = self._registry.model(name)
        answer, json_length = render_answer(
            name, model, request_id, probabilities, predicted, self._registry.labels, outputs
        )
        return len(batch), answer, json_length

    async def on_post(
        self, req: CrystalRequest, resp: falcon.asgi.Response, name: str, version: str | None = None
    ) -> None:
        self._registry.model(name, version)
        req.context.model = name
        header_length = req.get_header(BINARY_HEADER)
        if header_length is not None and not header_length.isdigit():
            raise BadRequest(f"{BINARY_HEADER} must be a byte count", name)
        length = None if header_length is None else int(header_length)
        try:  # the droids' 422 for bad data (a corrupt gzip body included) is this protocol's 400
            body = await read_body(req, self._limits)
            req.context.rows, resp.data, json_length = await self._runner.run(
                len(body), partial(self._work, name, body, length), name
            )
        except InvalidCrystalData as exc:
            raise BadRequest(str(exc), name) from None
        if json_length is None:
            resp.content_type = falcon.MEDIA_JSON
        else:
            resp.content_type = "application/octet-stream"
            resp.set_header(BINARY_HEADER, str(json_length))
        resp.set_header(MODEL_VERSION_HEADER, self._registry.version_tag(name))


class OpenInferenceProtocol:
    """The Open Inference Protocol's front door (serve/protocol.py): everything under /v2,
    errors `{"error": ...}`, on the same inference path as the droids'."""

    name = "v2"
    namespace = PREFIX

    def __init__(self, path: InferencePath):
        self._path = path
        self._registry = path.registry

    def add_routes(self, add: AddRoute) -> None:
        path, registry = self._path, self._path.registry
        server = ServerMetadata()
        add(PREFIX, server)
        add(f"{PREFIX}/", server)  # the upstream REST definition's spelling
        add(f"{PREFIX}/health/live", Probe(None), public=True)
        add(f"{PREFIX}/health/ready", Probe(registry), public=True)
        models = ModelDocuments(registry)
        infer = InferResource(registry, path.limits, path.runner)
        for model in (MODEL, VERSIONED_MODEL):
            add(model, models)
            add(f"{model}/ready", models, public=True, suffix="ready")
            add(f"{model}/infer", infer)

    error_body = staticmethod(error_answer)

    def openapi_paths(self, examples: Examples) -> dict:
        paths = openapi.template("v2.json")
        shown = examples.shown
        if shown is not None:
            infer = paths[f"{PREFIX}/models/{{name}}/infer"]["post"]
            tensor = {
                "name": INPUT_NAME,
                "shape": [1, N_FEATURES],
                "datatype": "FP64",
                "data": list(WARM_UP_ROW),
            }
            openapi.content(infer)["example"] = {"id": openapi.EXAMPLE_ID, "inputs": [tensor]}
            openapi.content(infer, "200")["example"] = self._example_answer(
                shown, examples.answers[shown]
            )
        paths[f"{PREFIX}/"] = {
            method: {**operation, "operationId": f"{operation['operationId']}TrailingSlash"}
            for method, operation in paths[PREFIX].items()
        }
        return openapi.with_versions(paths, MODEL, VERSIONED_MODEL)

    def _example_answer(self, name: str, probabilities: np.ndarray) -> dict:
        """What `POST /v2/models/{name}/infer` answers, both outputs in JSON."""
        outputs = tuple(OutputRequest(output, False) for output in OUTPUT_NAMES)
        registry = self._registry
        predicted = registry.labels_of(probabilities)
        answer, _ = render_answer(
            name,
            registry.model(name),
            openapi.EXAMPLE_ID,
            probabilities,
            predicted,
            registry.labels,
            outputs,
        )
        return msgspec.json.decode(answer)
