"""The floors, the ceiling of speed: the HTTP stack parsing the body as the service does (msgspec)
and answering a constant of the service's shape and size for its rows, no validation, no model:
whatever the service does beyond (numpy, onnxruntime, metrics, logs) shows as its distance. `app`
(Falcon ASGI, under the service's own worker and settings) is the floor of the service's ratios;
`wsgi_app`, under gunicorn's `gthread` (the service's previous runtime), is kept for reference."""

from functools import lru_cache

import falcon
import falcon.asgi
import msgspec

from harness.bodies import endpoints

# One row of a real answer (the published example's first row through sklearn), so the constant
# answer has the byte size of the service's for the same number of rows.
_LABEL = b'"blue"'
_SCORES = (
    b'{"blue":0.9927769331813387,"green":0.007223053394387628,"yellow":1.3424273700413213e-08}'
)


@lru_cache(maxsize=64)
def answer(rows: int) -> bytes:
    """The constant answer for `rows` rows, built once per row count."""
    labels, scores = b",".join([_LABEL] * rows), b",".join([_SCORES] * rows)
    return b'{"prediction":[' + labels + b'],"scores":[' + scores + b"]}"


def _answer(body: bytes, resp: falcon.Response | falcon.asgi.Response) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.data = answer(len(msgspec.json.decode(body)["crystalData"]))


class AsgiFloor:
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        _answer(await req.stream.read(), resp)


class WsgiFloor:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _answer(req.bounded_stream.read(), resp)


app, wsgi_app = falcon.asgi.App(), falcon.App()
for endpoint in endpoints():
    app.add_route(f"/{endpoint}", AsgiFloor())
    wsgi_app.add_route(f"/{endpoint}", WsgiFloor())
