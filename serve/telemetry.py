"""Around every request, in one Falcon middleware: the request id, the count of requests in
progress, the request metrics and the access log line. (The cap on work is serve/runner.py.)"""

import re
import time
from collections.abc import Callable, Mapping
from itertools import count
from os import urandom

import falcon.asgi

from serve.logs import AccessLog
from serve.metrics import Metrics
from serve.request import CrystalRequest

REQUEST_ID_HEADER = "X-Request-ID"
# Client ids are kept only when short and plain, so they cannot forge or flood log lines.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Probes and scrapes are not counted in progress (a scrape would count itself), and are left out
# of the access log unless LOG_PROBES is set: they would drown the requests that matter.
PROBE_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class RequestIds:
    """Ids unique across workers and restarts: a random prefix per worker, then a counter."""

    def __init__(self) -> None:
        self._prefix = urandom(6).hex()
        self._next = count(1)

    def for_header(self, header: str | None) -> str:
        if header is not None and _SAFE_REQUEST_ID.fullmatch(header):
            return header
        return f"{self._prefix}-{next(self._next):x}"


class RequestTelemetry:
    def __init__(
        self,
        metrics: Metrics,
        access_log: AccessLog,
        versions: Mapping[str, str],
        log_probes: bool,
        protocol_of: Callable[[CrystalRequest], str],
    ):
        self._metrics = metrics
        self._access_log = access_log
        self._versions = versions
        self._log_probes = log_probes
        self._protocol_of = protocol_of
        self._ids = RequestIds()

    async def process_request(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        context = req.context
        context.started = time.perf_counter()
        context.request_id = self._ids.for_header(req.get_header(REQUEST_ID_HEADER))
        if req.path not in PROBE_PATHS:
            self._metrics.in_flight += 1

    async def process_response(
        self,
        req: CrystalRequest,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        context = req.context
        seconds = time.perf_counter() - context.started
        metrics = self._metrics
        probe = req.path in PROBE_PATHS
        if not probe:
            metrics.in_flight -= 1
        resp.set_header(REQUEST_ID_HEADER, context.request_id)
        method = req.method if req.method in METHODS else "other"
        status = resp.status_code
        metrics.request(
            self._protocol_of(req),
            req.uri_template or "unmatched",
            method,
            context.model,
            str(status),
            seconds,
        )
        if probe and not self._log_probes:
            return
        self._access_log.request(
            context.request_id,
            method,
            req.path,
            context.model,
            self._versions.get(context.model, ""),
            context.rows,
            status,
            seconds,
            len(resp.data or b""),
            req.remote_addr,
            req.get_header("User-Agent") or "",
            context.error,
        )
