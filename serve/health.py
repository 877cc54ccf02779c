"""Probes and metadata under the Open Inference Protocol's names, and the metrics endpoint."""

import falcon
import msgspec

from serve.metrics import Metrics
from serve.registry import ModelRegistry

SERVER_NAME = "crystal-serving"
SERVER_VERSION = "1.0.0"


def _json(resp: falcon.Response, document: object, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = msgspec.json.encode(document)


def _known(registry: ModelRegistry, name: str) -> None:
    if name not in registry.names:
        raise falcon.HTTPNotFound(title="Unknown model", description=f"no model named {name!r}")


class ServerMetadata:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _json(resp, {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})


class Liveness:
    """Answers while the worker can answer at all."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _json(resp, {"live": True})


class Readiness:
    """Ready once every model loaded, matched its checksum and passed its warm-up here."""

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ready = self._registry.all_ready
        _json(resp, {"ready": ready}, falcon.HTTP_200 if ready else falcon.HTTP_503)


class ModelReadiness:
    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        _known(self._registry, name)
        ready = self._registry.is_ready(name)
        _json(resp, {"name": name, "ready": ready}, falcon.HTTP_200 if ready else falcon.HTTP_503)


class ModelMetadata:
    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        _known(self._registry, name)
        _json(resp, self._registry.metadata(name))


class MetricsResource:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = self._metrics.content_type
        resp.data = self._metrics.exposition()
