"""The floors: the HTTP stack with no validation and no model, the ceiling of speed.

Each reads the body and parses it as the service does (msgspec, in C), counts the rows, and
answers a constant document of the service's shape and size for that many rows. Whatever the
service does beyond this (validation, numpy, onnxruntime, metrics, logs) shows as its distance.

- `bench.floor_app:app`: Falcon's ASGI app, run under the service's own worker class and
  settings; the floor the service's ratios are taken against.
- `bench.floor_app:wsgi_app`: the same logic as a WSGI app, run under gunicorn's `gthread`
  worker, the service's previous runtime: kept for reference.
"""

from functools import lru_cache

import falcon
import falcon.asgi
import msgspec

from bench.bodies import ENDPOINTS

# One row of a real answer (the published example's first row through sklearn), so the constant
# answer has the byte size of the service's for the same number of rows.
_LABEL = b'"blue"'
_SCORES = (
    b'{"blue":0.9927769331813387,"green":0.007223053394387628,"yellow":1.3424273700413213e-08}'
)


@lru_cache(maxsize=64)
def answer(rows: int) -> bytes:
    """The constant answer for `rows` rows, built once per row count."""
    labels = b",".join([_LABEL] * rows)
    scores = b",".join([_SCORES] * rows)
    return b'{"prediction":[' + labels + b'],"scores":[' + scores + b"]}"


def _answer_body(body: bytes, resp: falcon.Response | falcon.asgi.Response) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.data = answer(len(msgspec.json.decode(body)["crystalData"]))


class AsgiFloor:
    """/sklearn, /pytorch, /astromech: parse the body, answer the constant of its size."""

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        _answer_body(await req.stream.read(), resp)


class WsgiFloor:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _answer_body(req.bounded_stream.read(), resp)


def _routed(app: falcon.App, resource: object) -> falcon.App:
    for endpoint in ENDPOINTS:
        app.add_route(f"/{endpoint}", resource)
    return app


app = _routed(falcon.asgi.App(), AsgiFloor())
wsgi_app = _routed(falcon.App(), WsgiFloor())
