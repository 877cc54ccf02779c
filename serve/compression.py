"""gzip answers for clients that accept them, once an answer is large enough to gain from it.

A 1-row answer (about 120 bytes) would cost more to compress than to send; a 100,000-row answer
(about 9 MB of JSON) shrinks several times. Large answers are compressed on the worker's
inference thread, like the batches that made them. Level 1: most of the saving for a fraction
of the time of the default level 6 (make bench measures both).
"""

import gzip
from functools import partial

import falcon.asgi

from serve.request import CrystalRequest
from serve.runner import BatchRunner

LEVEL = 1


def accepts_gzip(header: str | None) -> bool:
    """Accept-Encoding names gzip (or *) with a non-zero quality."""
    if not header:
        return False
    qualities = {}
    for part in header.lower().split(","):
        name, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities[name.strip()] = quality
    return qualities.get("gzip", qualities.get("*", 0.0)) > 0


class ResponseCompression:
    def __init__(self, min_bytes: int, runner: BatchRunner):
        self._min_bytes = min_bytes
        self._runner = runner

    async def process_response(
        self,
        req: CrystalRequest,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        data = resp.data
        if data is None or len(data) < self._min_bytes or resp.get_header("Content-Encoding"):
            return  # small, or already encoded by its resource
        resp.append_header("Vary", "Accept-Encoding")
        if not accepts_gzip(req.get_header("Accept-Encoding")):
            return
        resp.data = await self._runner.compute(
            len(data), partial(gzip.compress, data, compresslevel=LEVEL, mtime=0)
        )
        resp.set_header("Content-Encoding", "gzip")
