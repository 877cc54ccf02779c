"""Reading request bodies within the size limit, before any of it is buffered when possible."""

import falcon

from serve.errors import PayloadTooLarge

CHUNK_BYTES = 64 * 1024


def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it is known to exceed max_bytes.

    A declared Content-Length is checked before reading; a chunked body is read in pieces and
    refused once past the limit, so an oversized body never sits in memory.
    """
    declared = req.content_length
    if declared is not None:
        if declared > max_bytes:
            raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {max_bytes}")
        return req.bounded_stream.read()
    chunks, size = [], 0
    while chunk := req.stream.read(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
