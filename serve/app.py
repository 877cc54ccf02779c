"""The Falcon app: `create_app` wires injected collaborators; `get_app` builds them."""

import logging
from collections.abc import Mapping, Sequence

import falcon
import msgspec

from serve.classifier import Classifier, OnnxClassifier
from serve.errors import ServiceError
from serve.labels import load_labels
from serve.manifest import read_manifest
from serve.predictor import CrystalPredictor
from serve.resources import AstromechResource, ModelResource
from serve.settings import Settings

logger = logging.getLogger("serve")


def _json_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Every error answer is JSON, whatever the client accepts."""
    resp.content_type = falcon.MEDIA_JSON
    resp.data = msgspec.json.encode(error.to_dict())


def _service_error(
    req: falcon.Request, resp: falcon.Response, error: ServiceError, params: dict
) -> None:
    if error.status.startswith("5"):
        logger.error("%s %s: %s", req.method, req.path, error, exc_info=error.__cause__)
    raise falcon.HTTPError(error.status, title=error.title, description=str(error))


def create_app(models: Mapping[str, Classifier], labels: Sequence[str]) -> falcon.App:
    predictor = CrystalPredictor(models, labels)
    app = falcon.App()
    app.set_error_serializer(_json_error)
    app.add_error_handler(ServiceError, _service_error)
    for name in sorted(models):
        app.add_route(f"/{name}", ModelResource(predictor, name))
    app.add_route("/astromech", AstromechResource(predictor))
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
    return create_app(load_models(settings), load_labels(settings.labels_file))
