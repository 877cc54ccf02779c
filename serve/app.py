"""The Falcon app: `create_app` wires injected collaborators; `get_app` builds them."""

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import falcon
import msgspec

from serve import health
from serve.batch import CrystalDecoder
from serve.classifier import Classifier, OnnxClassifier
from serve.errors import ServiceError
from serve.labels import load_labels
from serve.logs import AccessLog
from serve.manifest import read_manifest
from serve.metrics import Metrics
from serve.registry import ModelRegistry
from serve.resources import AstromechResource, ModelResource
from serve.settings import Limits, Settings
from serve.telemetry import RequestTelemetry
from serve.v2 import InferResource

logger = logging.getLogger("serve")
OPENAPI_SPEC = Path(__file__).resolve().parent / "openapi.json"


def _json_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Every error answer is JSON, whatever the client accepts; the access log keeps its cause.

    The Open Inference Protocol's endpoints answer in its own shape, `{"error": "..."}`.
    """
    req.context.error = error.description or error.title
    resp.content_type = falcon.MEDIA_JSON
    if req.context.get("error_shape") == "v2":
        resp.data = msgspec.json.encode({"error": req.context.error})
    else:
        resp.data = msgspec.json.encode(error.to_dict())


def _service_error(
    req: falcon.Request, resp: falcon.Response, error: ServiceError, params: dict
) -> None:
    if error.status.startswith("5"):
        logger.error(
            "%s %s: %s",
            req.method,
            req.path,
            error,
            exc_info=error.__cause__,
            extra={"fields": {"request_id": req.context.get("request_id")}},
        )
    raise falcon.HTTPError(error.status, title=error.title, description=str(error))


def _unexpected_error(
    req: falcon.Request, resp: falcon.Response, error: Exception, params: dict
) -> None:
    logger.error(
        "%s %s: unexpected error",
        req.method,
        req.path,
        exc_info=error,
        extra={"fields": {"request_id": req.context.get("request_id")}},
    )
    raise falcon.HTTPInternalServerError()


class OpenApiSpec:
    def __init__(self, spec: bytes):
        self._spec = spec

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._spec


def create_app(
    models: Mapping[str, Classifier],
    labels: Sequence[str],
    limits: Limits | None = None,
    metrics: Metrics | None = None,
    access_log: AccessLog | None = None,
) -> falcon.App:
    metrics = metrics or Metrics()
    registry = ModelRegistry(models, labels, metrics)
    app = falcon.App(middleware=[RequestTelemetry(metrics, access_log or AccessLog())])
    app.set_error_serializer(_json_error)
    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(ServiceError, _service_error)
    limits = limits or Limits()
    decoder = CrystalDecoder(limits, registry.names)
    for name in sorted(models):
        app.add_route(f"/{name}", ModelResource(registry, decoder, name, limits))
    app.add_route("/astromech", AstromechResource(registry, decoder, limits))
    app.add_route("/v2", health.ServerMetadata())
    app.add_route("/v2/health/live", health.Liveness())
    app.add_route("/v2/health/ready", health.Readiness(registry))
    app.add_route("/v2/models/{name}", health.ModelMetadata(registry))
    app.add_route("/v2/models/{name}/ready", health.ModelReadiness(registry))
    app.add_route("/v2/models/{name}/infer", InferResource(registry, limits))
    app.add_route("/metrics", health.MetricsResource(metrics))
    app.add_route("/openapi.json", OpenApiSpec(OPENAPI_SPEC.read_bytes()))
    return app


def load_models(settings: Settings) -> dict[str, OnnxClassifier]:
    return {
        model_file.name: OnnxClassifier(
            model_file.name,
            model_file.read_verified(),
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
        )
        for model_file in read_manifest(settings.models_dir)
    }


def get_app(settings: Settings | None = None) -> falcon.App:
    settings = settings or Settings.from_env()
    return create_app(
        load_models(settings), load_labels(settings.labels_file), limits=settings.limits
    )
