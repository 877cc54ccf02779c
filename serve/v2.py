"""Open Inference Protocol (KServe V2) inference, `POST /v2/models/{name}/infer`, on the same
registry, limits and validation rules as the droids' endpoints.

Input tensors come as JSON data or in the binary tensor extension's form (what tritonclient sends
by default); outputs are always JSON, which clients read whatever binary form they asked for.
"""

from typing import Any

import falcon
import msgspec
import numpy as np

from serve.batch import DECODE_ERRORS, bounded_value, check_utf8
from serve.body import read_body
from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME
from serve.errors import InvalidCrystalData, PayloadTooLarge, ServiceError
from serve.registry import ModelRegistry
from serve.settings import Limits

LABEL_OUTPUT = "label"
OUTPUT_NAMES = (OUTPUT_NAME, LABEL_OUTPUT)
INPUT_DATATYPES = {"FP64": np.dtype("<f8"), "FP32": np.dtype("<f4")}
BINARY_HEADER = "Inference-Header-Content-Length"


class InferBadRequest(ServiceError):
    status = "400 Bad Request"
    title = "Bad inference request"


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
    ) -> tuple[str | None, np.ndarray, tuple[str, ...]]:
        """`header_length` is the binary extension's Inference-Header-Content-Length, if sent."""
        if header_length is None:
            header, binary = body, b""
        elif 0 < header_length <= len(body):
            header, binary = body[:header_length], body[header_length:]
        else:
            raise InferBadRequest(f"{BINARY_HEADER} must lie within the body")
        check_utf8(header)
        try:
            request = _request_decoder.decode(header)
        except DECODE_ERRORS as exc:
            raise InferBadRequest(f"invalid inference request: {exc}") from None
        return request.id, self._batch(request.inputs, binary), self._outputs(request.outputs)

    def _batch(self, inputs: list[_Tensor], binary: bytes) -> np.ndarray:
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise InferBadRequest(f"expected exactly one input tensor named {INPUT_NAME!r}")
        tensor = inputs[0]
        if tensor.datatype not in INPUT_DATATYPES:
            raise InferBadRequest(
                f"input datatype must be FP64 or FP32, got {tensor.datatype[:20]!r}"
            )
        shape = tensor.shape
        if len(shape) != 2 or shape[1] != N_FEATURES or shape[0] < 1:
            raise InferBadRequest(
                f"input shape must be [n, {N_FEATURES}] with n >= 1, got {shape[:4]}"
            )
        if shape[0] > self._max_rows:
            raise PayloadTooLarge(f"input has {shape[0]} rows, the limit is {self._max_rows}")
        dtype = INPUT_DATATYPES[tensor.datatype]
        if "binary_data_size" in tensor.parameters:
            batch = self._binary(tensor, binary, dtype)
        else:
            batch = self._json(tensor, dtype)
        if batch.size != shape[0] * N_FEATURES:
            raise InferBadRequest(
                f"input data has {batch.size} values, shape {shape} needs {shape[0] * N_FEATURES}"
            )
        return batch.reshape(shape[0], N_FEATURES).astype(np.float64)

    def _json(self, tensor: _Tensor, dtype: np.dtype) -> np.ndarray:
        data = bytes(tensor.data)
        nested = data.lstrip()[1:].lstrip().startswith(b"[")
        try:
            values = (self._nested if nested else self._flat).decode(data)
        except DECODE_ERRORS as exc:
            raise InferBadRequest(f"input data: {exc}".replace("`$", "`$.inputs[0].data")) from None
        return np.array(values, dtype=dtype)

    def _binary(self, tensor: _Tensor, binary: bytes, dtype: np.dtype) -> np.ndarray:
        """Raw little-endian values; checked here as msgspec checks JSON values."""
        size = tensor.parameters["binary_data_size"]
        if not isinstance(size, int) or size != len(binary) or size % dtype.itemsize:
            raise InferBadRequest(
                f"binary_data_size must equal the {len(binary)} bytes after the JSON header"
            )
        batch = np.frombuffer(binary, dtype=dtype)
        outside = ~(np.abs(batch) <= self._bound)  # NaN compares False: it is outside too
        if outside.any():
            index = int(np.argmax(outside))
            raise InferBadRequest(
                f"input value {index} is not a finite number within ±{self._bound:g}"
            )
        return batch

    @staticmethod
    def _outputs(requested: list[_RequestedOutput] | None) -> tuple[str, ...]:
        if requested is None:
            return OUTPUT_NAMES
        names = tuple(output.name for output in requested)
        unknown = [name for name in names if name not in OUTPUT_NAMES]
        if unknown or not names:
            raise InferBadRequest(
                f"outputs must be among {list(OUTPUT_NAMES)}, got {[n[:20] for n in names]}"
            )
        return names


class InferResource:
    def __init__(self, registry: ModelRegistry, limits: Limits):
        self._registry = registry
        self._decoder = InferDecoder(limits)
        self._limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        req.context.error_shape = "v2"
        if name not in self._registry.names:
            raise falcon.HTTPNotFound(title="Unknown model", description=f"no model named {name!r}")
        req.context.model = name
        header_length = req.get_header(BINARY_HEADER)
        if header_length is not None and not header_length.isdigit():
            raise InferBadRequest(f"{BINARY_HEADER} must be a byte count")
        body = read_body(req, self._limits.max_body_bytes)
        try:  # the droids' 422 for bad data is this protocol's 400
            request_id, batch, outputs = self._decoder.decode(
                body, None if header_length is None else int(header_length)
            )
            req.context.rows = len(batch)
            probabilities, labels = self._registry.run(name, batch)
        except InvalidCrystalData as exc:
            raise InferBadRequest(str(exc)) from None
        tensors = {
            OUTPUT_NAME: {
                "name": OUTPUT_NAME,
                "datatype": self._registry.output_datatype(name),
                "shape": list(probabilities.shape),
                "data": probabilities.ravel().tolist(),
            },
            LABEL_OUTPUT: {
                "name": LABEL_OUTPUT,
                "datatype": "BYTES",
                "shape": [len(labels)],
                "data": labels,
            },
        }
        answer = {"model_name": name, "model_version": self._registry.version(name)}
        if request_id is not None:
            answer["id"] = request_id
        answer["outputs"] = [tensors[output] for output in outputs]
        resp.content_type = falcon.MEDIA_JSON
        resp.data = _encoder.encode(answer)
