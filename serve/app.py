"""The Falcon ASGI app: `create_app` wires injected collaborators; `get_app` builds them from
the environment. Every error is answered here, in one place, in its protocol's JSON shape."""

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

import falcon
import falcon.asgi

from serve import docs, droid, openapi, release, triton, v2
from serve.auth import BearerTokens, TokenGate
from serve.classifier import Classifier, OnnxClassifier
from serve.compression import ResponseCompression
from serve.errors import ServiceError
from serve.logs import AccessLog
from serve.metrics import FOLDER_ENV, Metrics, MetricsFolder
from serve.protocol import InferencePath, Routes
from serve.registry import ModelRegistry
from serve.request import CrystalRequest
from serve.runner import BatchRunner
from serve.settings import Limits, Settings
from serve.telemetry import RequestTelemetry

logger = logging.getLogger("serve")


# The front doors onto the one inference path (serve/protocol.py), in this order: the first
# answers errors on paths no protocol claims.
PROTOCOLS = (droid.DroidProtocol, v2.OpenInferenceProtocol, triton.TritonExtensions)


class ErrorAnswers:
    """The error handlers: typed service errors, Falcon's own (no route, wrong method), and
    anything unexpected, which is logged with its traceback and answered without internals;
    each in the JSON shape of the request's protocol."""

    def __init__(self, router: falcon.routing.CompiledRouter, routes: Routes):
        self._router = router
        self._routes = routes

    def _answer(
        self,
        req: CrystalRequest,
        resp: falcon.asgi.Response,
        status: str,
        title: str,
        description: str,
        headers: Mapping[str, str],
    ) -> None:
        req.context.error = description
        resp.status = status
        resp.set_headers(headers)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._routes.protocol_of(req).error_body(title, description)

    async def service_error(
        self, req: CrystalRequest, resp: falcon.asgi.Response, error: ServiceError, params: dict
    ) -> None:
        if error.status.startswith("5") and error.__cause__ is not None:
            logger.error(
                "%s %s: %s",
                req.method,
                req.path,
                error,
                exc_info=error.__cause__,
                extra={"fields": {"request_id": req.context.request_id}},
            )
        if error.model:
            req.context.model = error.model
        self._answer(req, resp, error.status, error.title, str(error), error.headers)

    async def http_error(
        self, req: CrystalRequest, resp: falcon.asgi.Response, error: falcon.HTTPError, params: dict
    ) -> None:
        """Falcon's own answers, made to say what would work."""
        description = error.description or error.title
        if req.method not in falcon.COMBINED_METHODS:
            # Falcon answers a method it does not know 400; HTTP says 501 (RFC 9110, 9.1).
            error = falcon.HTTPNotImplemented()
            description = f"{req.method[:20]} is not a method this server implements"
        elif isinstance(error, falcon.HTTPMethodNotAllowed):
            allowed = (error.headers or {}).get("Allow", "")
            description = f"{req.method} is not allowed on {req.path[:100]}; use {allowed}"
        elif error.status_code == 404:
            description = f"no route {req.path[:100]}"
            bare = req.path.rstrip("/")
            if bare and bare != req.path and self._router.find(bare) is not None:
                description += f"; did you mean {bare[:100]} (without the trailing slash)?"
        self._answer(req, resp, error.status, error.title, description, error.headers or {})

    async def unexpected_error(
        self, req: CrystalRequest, resp: falcon.asgi.Response, error: Exception, params: dict
    ) -> None:
        logger.error(
            "%s %s: unexpected error",
            req.method,
            req.path,
            exc_info=error,
            extra={"fields": {"request_id": req.context.request_id}},
        )
        self._answer(
            req, resp, falcon.HTTP_500, "Internal Server Error", "the server failed to answer", {}
        )


class BearerAuthorization:
    """Every protocol's routes but their public ones (probes) ask for a bearer token
    (serve/auth.py). In the app only when tokens are set: without them it costs nothing."""

    def __init__(self, gate: TokenGate, routes: Routes):
        self._gate = gate
        self._routes = routes

    async def process_resource(
        self, req: CrystalRequest, resp: falcon.asgi.Response, resource: object, params: dict
    ) -> None:
        if self._routes.guards(req.uri_template or ""):
            self._gate.check(self._routes.label_of(req), req.get_header("Authorization"))


class MetricsPortSplit:
    """With METRICS_PORT, /metrics is answered on that port and nothing else is: the port a
    request came in on is the listening socket's, from the ASGI scope."""

    def __init__(self, port: int):
        self._port = port

    async def process_request(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        _, port = req.scope.get("server") or ("", None)  # any iterable of two, says ASGI
        # The router reads //metrics (or /%2Fmetrics) as /metrics: leading slashes count as one.
        if (port == self._port) != (req.path.lstrip("/") == "metrics"):
            raise falcon.HTTPNotFound()


class MetricsResource:
    """GET and HEAD, in the format the scraper's Accept header asks for: OpenMetrics or the
    Prometheus text format (the default)."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    async def on_get(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        resp.data, resp.content_type = self._metrics.exposition(req.get_header("Accept") or "")

    on_head = on_get


class OpenApiSpec:
    def __init__(self, spec: bytes):
        self._spec = spec

    async def on_get(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._spec


class MetricsPublisher:
    """Writes this worker's metrics to the shared folder every few seconds, and once more when
    the worker stops (ASGI lifespan events, which gunicorn's worker sends)."""

    def __init__(self, metrics: Metrics, seconds: float):
        self._metrics = metrics
        self._seconds = seconds
        self._task: asyncio.Task | None = None

    async def _publish(self) -> None:
        while True:
            self._metrics.flush()
            await asyncio.sleep(self._seconds)

    async def process_startup(self, scope: dict, event: dict) -> None:
        self._task = asyncio.create_task(self._publish())

    async def process_shutdown(self, scope: dict, event: dict) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        self._metrics.flush()


def create_app(
    models: Mapping[str, Classifier],
    labels: Sequence[str],
    limits: Limits | None = None,
    metrics: Metrics | None = None,
    access_log: AccessLog | None = None,
    settings: Settings | None = None,
    grpc_master: int | None = None,
    tokens: BearerTokens | None = None,
) -> falcon.asgi.App:
    """The app, asking for one of `tokens` on guarded routes; with `grpc_master`, the pid of the
    process whose workers serve gRPC together (the gunicorn master), also this worker's gRPC
    server on settings.grpc_port (serve/grpc_server.py), started and stopped with it through
    ASGI lifespan events."""
    settings = settings or Settings.from_env({})
    limits = limits or settings.limits
    metrics = metrics or Metrics()
    registry = ModelRegistry(models, labels, metrics)
    runner = BatchRunner(settings.offload_bytes, settings.max_in_flight, metrics)
    path = InferencePath(registry, limits, runner, metrics, TokenGate(tokens, metrics))
    routes = Routes([protocol(path) for protocol in PROTOCOLS])
    access_log = access_log or AccessLog()
    telemetry = RequestTelemetry(
        metrics,
        access_log,
        {name: model.version for name, model in models.items()},
        settings.log_probes,
        routes.label_of,
    )
    router = falcon.routing.DefaultRouter()
    # process_response runs last to first: telemetry sees the compressed answer.
    middleware: list[object] = [
        telemetry,
        ResponseCompression(settings.gzip_min_bytes, runner),
        MetricsPublisher(metrics, settings.metrics_flush_seconds),
    ]
    if settings.metrics_port is not None:
        middleware.append(MetricsPortSplit(settings.metrics_port))
    if tokens is not None:
        middleware.append(BearerAuthorization(path.gate, routes))
    if grpc_master is not None:
        # Imported only here: grpc is loaded in the workers that serve it, never in the master.
        from serve.grpc_server import GrpcServer
        from serve.grpc_service import InferenceService

        service = InferenceService(path, access_log, settings.log_probes)
        middleware.append(GrpcServer(service, registry.all_ready, settings, grpc_master))
    app = falcon.asgi.App(
        middleware=middleware,
        request_type=CrystalRequest,
        router=router,
    )
    routes.add_to(app)
    errors = ErrorAnswers(router, routes)
    app.add_error_handler(Exception, errors.unexpected_error)
    app.add_error_handler(falcon.HTTPError, errors.http_error)
    app.add_error_handler(ServiceError, errors.service_error)
    app.add_route("/metrics", MetricsResource(metrics))
    guarded = None if tokens is None else routes.guards
    metrics_here = settings.metrics_port is None
    spec = openapi.build_spec(registry, routes.protocols, guarded, metrics_here)
    app.add_route("/openapi.json", OpenApiSpec(spec))
    docs.add_routes(app, metrics_here)
    return app


def get_app(settings: Settings | None = None) -> falcon.asgi.App:
    """The app a worker serves: the master's release when there is one (see serve/release.py),
    else MODELS_DIR and LABELS_FILE as they are now."""
    settings = settings or Settings.from_env()
    models = release.current() or release.read(settings)
    classifiers = {
        model.name: OnnxClassifier(
            model.name,
            models.data[model.name],
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
        )
        for model in models.models
    }
    shared = os.environ.get(FOLDER_ENV)
    folder = MetricsFolder(Path(shared)) if shared else None
    metrics = Metrics(
        folder,
        [(m.name, classifiers[m.name].version, m.source_sha256) for m in models.models],
    )
    return create_app(
        classifiers,
        models.labels,
        metrics=metrics,
        settings=settings,
        grpc_master=os.getppid() if settings.grpc_port else None,
        tokens=models.tokens,
    )
