"""Triton's extensions of the Open Inference Protocol, in the JSON shapes Triton documents
(`docs/protocol/extension_*.md` of triton-inference-server/server), so tritonclient and Triton's
tools read them: statistics, model configuration and the model repository's index. Loading and
unloading models, shared memory, tracing and log settings are not served: each answers 400 with
what to do instead. A front door of its own (serve/protocol.py) on the same paths, error shape
and `protocol` label as serve/v2.py, which lists these extensions in the server metadata.
"""

import falcon
import falcon.asgi
import msgspec
import numpy as np

from serve import openapi
from serve.body import DECODE_ERRORS, check_utf8, read_body
from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME
from serve.errors import BadRequest, InvalidCrystalData
from serve.grpc_messages import INFER_ENDPOINT
from serve.metrics import INFERENCE_SECONDS, LAST_PREDICTION, REQUEST_TIME, REQUESTS, ROWS, Totals
from serve.protocol import AddRoute, Examples, InferencePath, send_json
from serve.registry import ModelRegistry
from serve.request import CrystalRequest
from serve.settings import Limits
from serve.v2 import (
    LABEL_OUTPUT,
    MODEL,
    PREFIX,
    SHARED_MEMORY,
    VERSIONED_MODEL,
    OpenInferenceProtocol,
    error_answer,
)

GRPC_PROTOCOL = "grpc"  # serve/grpc_service.py's `protocol` label
TRITON_TYPES = {np.dtype(np.float64): "TYPE_FP64", np.dtype(np.float32): "TYPE_FP32"}
# Durations Triton reports that this server has no part for (no queue, no response cache;
# decoding and encoding are inside the request's time): reported as zero.
NOT_MEASURED = ("queue", "compute_input", "compute_output", "cache_hit", "cache_miss")
RELEASE_PATH = (
    "models are not loaded or unloaded through the API: a new release of the model folder and "
    "SIGHUP change them without downtime (see docs/models.md)"
)
# Triton routes of features this server does not have, and what it answers them.
UNSUPPORTED = {
    f"{PREFIX}/systemsharedmemory": SHARED_MEMORY,
    f"{PREFIX}/cudasharedmemory": SHARED_MEMORY,
    f"{PREFIX}/trace/setting": "tracing is not served; every request's access log line has its id",
    f"{MODEL}/trace/setting": "tracing is not served; every request's access log line has its id",
    f"{PREFIX}/logging": "log settings are not changed through the API; see LOG_PROBES in "
    "docs/operations.md",
}


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": round(seconds * 1e9)}


def model_statistics(name: str, version: str, totals: Totals) -> dict:
    """One model's `$model_stat`, from the metrics' totals: its inference requests are the POSTs
    that name it (both REST protocols' predictions) and its gRPC ModelInfer calls, successful
    when answered 2xx (gRPC's OK is counted as 200)."""
    outcomes = {"success": [0.0, 0.0], "fail": [0.0, 0.0]}
    seconds = totals.values(REQUEST_TIME)
    for labels, count in totals.values(REQUESTS).items():
        protocol, endpoint, method, model, status = labels
        inference = endpoint == INFER_ENDPOINT if protocol == GRPC_PROTOCOL else method == "POST"
        if model == name and inference:
            outcome = outcomes["success" if status.startswith("2") else "fail"]
            outcome[0] += count
            outcome[1] += seconds.get(labels, 0.0)
    executions, rows = totals.histogram(ROWS, (name,))
    computed, compute_seconds = totals.histogram(INFERENCE_SECONDS, (name,))
    last = totals.values(LAST_PREDICTION).get((name,), 0.0)
    stats = {kind: _duration(*outcome) for kind, outcome in outcomes.items()}
    stats["compute_infer"] = _duration(computed, compute_seconds)
    stats |= {kind: _duration(0, 0.0) for kind in NOT_MEASURED}
    return {
        "name": name,
        "version": version,
        "last_inference": round(last * 1000),
        "inference_count": int(rows),
        "execution_count": executions,
        "inference_stats": stats,
        "response_stats": {},
        "batch_stats": [],
        "memory_usage": [],
    }


class Statistics:
    """GET `/v2/models[/{name}[/versions/{version}]]/stats`: counts since the server started,
    over every worker (live or exited) as `/metrics` adds them, for the version served now."""

    def __init__(self, path: InferencePath):
        self._registry = path.registry
        self._metrics = path.metrics

    async def on_get(
        self,
        req: CrystalRequest,
        resp: falcon.asgi.Response,
        name: str | None = None,
        version: str | None = None,
    ) -> None:
        registry = self._registry
        if name is None:
            names = sorted(registry.names)
        else:
            registry.model(name, version)
            req.context.model = name
            names = [name]
        totals = self._metrics.totals()
        stats = [model_statistics(n, registry.model(n).version, totals) for n in names]
        send_json(resp, {"model_stats": stats})


class Configuration:
    """GET `/v2/models/{name}[/versions/{version}]/config`: Triton's model configuration. The
    batch dimension is left out of `dims`, as Triton does for a model whose `max_batch_size`
    (MAX_ROWS here) is above 0; the label output is one string per row."""

    def __init__(self, registry: ModelRegistry, limits: Limits):
        self._registry = registry
        self._limits = limits

    async def on_get(
        self, req: CrystalRequest, resp: falcon.asgi.Response, name: str, version: str | None = None
    ) -> None:
        model = self._registry.model(name, version)
        req.context.model = name
        probabilities = {
            "name": OUTPUT_NAME,
            "data_type": TRITON_TYPES[model.output_dtype],
            "dims": [model.n_classes],
            "label_filename": "labels.txt",
        }
        config = {
            "name": name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "max_batch_size": self._limits.max_rows,
            "input": [
                {
                    "name": INPUT_NAME,
                    "data_type": TRITON_TYPES[model.input_dtype],
                    "format": "FORMAT_NONE",
                    "dims": [N_FEATURES],
                }
            ],
            "output": [
                probabilities,
                {"name": LABEL_OUTPUT, "data_type": "TYPE_STRING", "dims": []},
            ],
            "parameters": {"version": {"string_value": model.version}},
        }
        send_json(resp, config)


class _IndexRequest(msgspec.Struct, forbid_unknown_fields=True):
    ready: bool = False


_index_decoder = msgspec.json.Decoder(_IndexRequest)


class RepositoryIndex:
    """POST `/v2/repository/index`: every served model with its version and state; with
    `{"ready": true}` only the ready ones. The body may be empty, as tritonclient sends it."""

    def __init__(self, registry: ModelRegistry, limits: Limits):
        self._registry = registry
        self._limits = limits

    async def on_post(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        try:
            body = await read_body(req, self._limits)
            check_utf8(body)
        except InvalidCrystalData as exc:
            raise BadRequest(str(exc)) from None
        try:
            request = _index_decoder.decode(body) if body.strip() else _IndexRequest()
        except DECODE_ERRORS as exc:
            raise BadRequest(f"invalid repository index request: {exc}") from None
        registry, index = self._registry, []
        for name in sorted(registry.names):
            ready = registry.is_ready(name)
            if ready or not request.ready:
                index.append(
                    {
                        "name": name,
                        "version": registry.model(name).version,
                        "state": "READY" if ready else "UNAVAILABLE",
                        "reason": "" if ready else "the model failed its warm-up inference",
                    }
                )
        send_json(resp, index)


class Refusal:
    """Any method on a route of a feature this server does not have: 400 with `message`."""

    def __init__(self, message: str):
        self._message = message

    async def _refuse(self, req: CrystalRequest, resp: falcon.asgi.Response, **params: str) -> None:
        raise BadRequest(self._message)

    on_get = on_post = _refuse


class TritonExtensions:
    """Triton's extensions as a front door (serve/protocol.py), on the Open Inference Protocol's
    namespace, error shape and metrics label."""

    name = OpenInferenceProtocol.name
    namespace = PREFIX

    def __init__(self, path: InferencePath):
        self._path = path

    def add_routes(self, add: AddRoute) -> None:
        path = self._path
        statistics = Statistics(path)
        configuration = Configuration(path.registry, path.limits)
        add(f"{PREFIX}/models/stats", statistics)
        for model in (MODEL, VERSIONED_MODEL):
            add(f"{model}/stats", statistics)
            add(f"{model}/config", configuration)
        add(f"{PREFIX}/repository/index", RepositoryIndex(path.registry, path.limits))
        refuse_release = Refusal(RELEASE_PATH)
        add(f"{PREFIX}/repository/models/{{name}}/load", refuse_release)
        add(f"{PREFIX}/repository/models/{{name}}/unload", refuse_release)
        for route, message in UNSUPPORTED.items():
            refusal = Refusal(message)
            add(route, refusal)
            if route.endswith("memory"):
                add(f"{route}/{{rest:path}}", refusal)

    error_body = staticmethod(error_answer)

    def openapi_paths(self, examples: Examples) -> dict:
        return openapi.with_versions(openapi.template("triton.json"), MODEL, VERSIONED_MODEL)
