"""Thin HTTP resources: read the body, decode it, pick the model, answer."""

import falcon
import numpy as np

from serve.batch import CrystalDecoder
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

    def __init__(
        self, registry: ModelRegistry, decoder: CrystalDecoder, model: str, limits: Limits
    ):
        self._registry = registry
        self._decoder = decoder
        self._model = model
        self._limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.model = self._model
        body = read_body(req, self._limits.max_body_bytes)
        batch = self._decoder.crystal_data(body)
        _answer(req, resp, self._registry, self._model, batch)


class AstromechResource:
    """/astromech: the body names the model."""

    def __init__(self, registry: ModelRegistry, decoder: CrystalDecoder, limits: Limits):
        self._registry = registry
        self._decoder = decoder
        self._limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_body(req, self._limits.max_body_bytes)
        model, batch = self._decoder.astromech(body)
        _answer(req, resp, self._registry, model, batch)
