"""Request bodies, shared by both protocols: read within the size limit, checked as UTF-8, and
the bounded measurement type both decoders use."""

import asyncio
import zlib
from typing import Annotated, Any

import msgspec

from serve.errors import (
    InvalidCrystalData,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedEncoding,
)
from serve.request import CrystalRequest
from serve.settings import Limits

DECODE_ERRORS = (msgspec.DecodeError, RecursionError)


async def read_body(req: CrystalRequest, limits: Limits) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it is known to exceed max_body_bytes.

    A declared Content-Length is checked before reading; a chunked body is refused once past the
    limit, so an oversized body never sits in memory. A gzip body (Content-Encoding) is bounded
    twice: as sent, and as inflated; any other encoding is refused with 415. A body that stops
    arriving (for the server's TIMEOUT), that has not arrived whole within `body_timeout`
    (BODY_TIMEOUT: a body dripped a byte at a time would otherwise hold its connection for as
    long as it pleases), or whose client goes away is answered 408, never taken as whole.
    """
    encoding = (req.get_header("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding[:20]!r} is not supported; send gzip or identity"
        )
    max_bytes = limits.max_body_bytes
    declared = req.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {max_bytes}")
    event = req.first_event or await req.receive_event()
    body = event.get("body", b"")
    whole = event["type"] == "http.request" and not event.get("more_body", False)
    if not whole or len(body) > max_bytes:  # most come whole within the limit: read untimed
        try:
            async with asyncio.timeout(limits.body_timeout):
                body = await _receive_rest(req, event, max_bytes)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive whole within {limits.body_timeout:g} s"
            ) from None
    return gunzip(body, max_bytes) if encoding == "gzip" else body


async def _receive_rest(req: CrystalRequest, event: dict, max_bytes: int) -> bytes:
    """The body from its first event on, refused as soon as it passes max_bytes."""
    chunks, size = [], 0
    while True:
        if event["type"] != "http.request":
            raise RequestTimeout("the request body stopped before its end")
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)
        event = await req.receive_event()


def gunzip(body: bytes, max_bytes: int) -> bytes:
    """A gzip body inflated to at most max_bytes: a small body that would inflate past the limit
    is refused after inflating max_bytes + 1 bytes, never all of it."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidCrystalData(f"body is not valid gzip: {exc}") from None
    if len(inflated) > max_bytes:
        raise PayloadTooLarge(f"body inflates past the limit of {max_bytes} bytes")
    if not inflater.eof or inflater.unused_data:
        raise InvalidCrystalData("body is not valid gzip: it is cut short or has trailing data")
    return inflated


def check_utf8(body: bytes) -> None:
    """JSON is UTF-8; msgspec checks only the strings it keeps, so check the whole body once.

    The ASCII test allocates nothing and covers almost every body; only others are decoded.
    """
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidCrystalData(f"body is not valid UTF-8 (byte {exc.start})") from None


def bounded_value(limits: Limits) -> Any:
    """A measurement: a float within ±max_abs_value, checked by msgspec as it decodes."""
    bound = limits.max_abs_value
    return Annotated[float, msgspec.Meta(ge=-bound, le=bound)]
