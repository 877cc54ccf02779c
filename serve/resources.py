"""Thin HTTP resources: read the body, decode it, pick the model, answer."""

import falcon
import numpy as np

from serve.batch import decode_astromech, decode_crystal_data
from serve.body import read_body
from serve.registry import ModelRegistry
from serve.settings import Limits


def _answer(
    req: falcon.Request,
    resp: falcon.Response,
    registry: ModelRegistry,
    model: str,
    batch: np.ndarray,
) -> None:
    req.context.model, req.context.rows = model, len(batch)
    resp.content_type = falcon.MEDIA_JSON
    resp.data = registry.predict(model, batch)


class ModelResource:
    """/sklearn and /pytorch: one fixed model. Bodies are JSON whatever their Content-Type."""

    def __init__(self, registry: ModelRegistry, model: str, limits: Limits):
        self._registry = registry
        self._model = model
        self._limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.model = self._model
        body = read_body(req, self._limits.max_body_bytes)
        batch = decode_crystal_data(body, self._limits.max_rows)
        _answer(req, resp, self._registry, self._model, batch)


class AstromechResource:
    """/astromech: the body names the model."""

    def __init__(self, registry: ModelRegistry, limits: Limits):
        self._registry = registry
        self._limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req, self._limits.max_body_bytes)
        model, batch = decode_astromech(body, self._registry.names, self._limits.max_rows)
        _answer(req, resp, self._registry, model, batch)
