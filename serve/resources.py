"""Thin HTTP resources: read the body, decode it, pick the model, answer."""

import falcon

from serve.batch import decode_astromech, decode_crystal_data
from serve.predictor import CrystalPredictor


def _respond(resp: falcon.Response, body: bytes) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.data = body


class ModelResource:
    """/sklearn and /pytorch: one fixed model. Bodies are JSON whatever their Content-Type."""

    def __init__(self, predictor: CrystalPredictor, model_name: str):
        self._predictor = predictor
        self._model_name = model_name

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        batch = decode_crystal_data(req.bounded_stream.read())
        _respond(resp, self._predictor.predict(self._model_name, batch))


class AstromechResource:
    """/astromech: the body names the model."""

    def __init__(self, predictor: CrystalPredictor):
        self._predictor = predictor

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        model_name, batch = decode_astromech(req.bounded_stream.read(), self._predictor.model_names)
        _respond(resp, self._predictor.predict(model_name, batch))
