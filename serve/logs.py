"""Structured logs: one JSON object per line on stdout, for the log shipper to parse."""

import logging
import os
import sys
import time
from collections.abc import Callable

import msgspec
from gunicorn import glogging

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
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole))
        return self._prefix + _MILLIS[int((seconds - whole) * 1000)]


_MILLIS = [f"{ms:03d}Z" for ms in range(1000)]
_timestamp = _Clock()


def json_line(level: str, logger: str, message: str, fields: dict, created: float = 0.0) -> bytes:
    """The one schema of every log line the service writes, from start to stop."""
    line = {
        "ts": _timestamp(created or time.time()),
        "level": level,
        "logger": logger,
        "message": message,
        "pid": os.getpid(),
        **fields,
    }
    return _encoder.encode(line)


REFUSED = "cannot start: "


def refusal(reason: object) -> bytes:
    """The one line a deployment that cannot start ends with (exit code 2)."""
    return json_line("error", "serve", f"{REFUSED}{reason}", {"exit_code": 2})


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", {}))
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json_line(
            record.levelname.lower(), record.name, record.getMessage(), fields, record.created
        ).decode()


class GunicornJsonLogger(glogging.Logger):
    """gunicorn's own lines (start, workers, signals, errors) as JSON on stdout, like the rest."""

    def setup(self, cfg: object) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setFormatter(JsonLineFormatter())
                handler.setStream(sys.stdout)


class AccessLine(msgspec.Struct, omit_defaults=True):
    """One access line: the fields every line has, then the request's. A struct encodes several
    times faster than a dict of the same fields."""

    ts: str
    level: str
    logger: str
    message: str
    pid: int
    request_id: str
    method: str
    path: str
    model: str
    version: str
    rows: int
    status: int
    duration_ms: float
    bytes: int
    client: str
    user_agent: str
    error: str = ""  # left out when empty
    grpc_status: str = ""  # gRPC calls only: the status code's name


_access_encoder = msgspec.json.Encoder()


# Paths, user agents and error messages longer than this are cut in the access log.
MAX_LOGGED_CHARS = 200


class AccessLog:
    """One JSON line per request, in the same schema as the other log lines.

    Written with a single `os.write` on stdout rather than through `logging`, whose record,
    formatter and handler lock cost more than a 1-row prediction; one write per line keeps lines
    whole across threads and processes.
    """

    def __init__(self, write: Callable[[bytes], object] | None = None):
        self._write = write or (lambda data: os.write(sys.stdout.fileno(), data))
        self.pid = os.getpid()

    def request(
        self,
        request_id: str,
        method: str,
        path: str,
        model: str,
        version: str,
        rows: int,
        status: int,
        seconds: float,
        size: int,
        client: str,
        user_agent: str,
        error: str,
        grpc_status: str = "",
    ) -> None:
        """One request's line; client-supplied text is cut to MAX_LOGGED_CHARS."""
        line = AccessLine(
            self.timestamp(),
            "info",
            "serve.access",
            "request",
            self.pid,
            request_id,
            method,
            path[:MAX_LOGGED_CHARS],
            model,
            version,
            rows,
            status,
            int(seconds * 1e6) / 1000,  # milliseconds to the microsecond
            size,
            client,
            user_agent[:MAX_LOGGED_CHARS],
            error[:MAX_LOGGED_CHARS],
            grpc_status,
        )
        self._write(_access_encoder.encode(line) + b"\n")

    def timestamp(self) -> str:
        return _timestamp(time.time())


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
