"""The floor: the service's HTTP stack with no validation and no model, the ceiling of speed.

It reads the body and parses it as the service does (msgspec, in C), counts the rows, and answers
a constant document of the service's shape and size for that many rows. Whatever the service
does beyond this (validation, numpy, onnxruntime, metrics, logs) shows as its distance to here.

gunicorn entry point: `bench.floor_app:app`.
"""

from functools import lru_cache

import falcon
import msgspec

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


class Floor:
    """/sklearn, /pytorch, /astromech: parse the body, answer the constant of its size."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        document = msgspec.json.decode(req.bounded_stream.read())
        resp.content_type = falcon.MEDIA_JSON
        resp.data = answer(len(document["crystalData"]))


def create_app() -> falcon.App:
    app = falcon.App()
    floor = Floor()
    for endpoint in ("sklearn", "pytorch", "astromech"):
        app.add_route(f"/{endpoint}", floor)
    return app


app = create_app()
