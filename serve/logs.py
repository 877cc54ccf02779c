"""Structured logs: one JSON object per line on stdout, for the log shipper to parse."""

import logging
import os
import sys
import time
from collections.abc import Callable

import msgspec

_encoder = msgspec.json.Encoder()


class _Clock:
    """ISO 8601 UTC with milliseconds; the part up to the second is formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, seconds: float) -> str:
        whole = int(seconds)
        if whole != self._second:
            self._second = whole
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        return f"{self._prefix}.{int(seconds * 1000) % 1000:03d}Z"


_timestamp = _Clock()


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


class AccessLog:
    """One JSON line per request, in the same shape as the other log lines.

    Written with a single `os.write` on stdout rather than through `logging`, whose record,
    formatter and handler lock cost more than a 1-row prediction; one write per line keeps lines
    whole across threads and processes.
    """

    def __init__(self, write: Callable[[bytes], object] | None = None):
        self._write = write or (lambda data: os.write(sys.stdout.fileno(), data))

    def request(self, fields: dict) -> None:
        line = {
            "ts": _timestamp(time.time()),
            "level": "info",
            "logger": "serve.access",
            "message": "request",
            **fields,
        }
        self._write(_encoder.encode(line) + b"\n")


def configure_logging() -> None:
    """Sends the service's `serve` logger (errors, with their cause) to stdout as JSON lines."""
    logger = logging.getLogger("serve")
    if any(isinstance(h.formatter, JsonLineFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLineFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
