"""Per-request telemetry in one Falcon middleware: request id, access log line, metrics."""

import re
import time
import uuid

import falcon

from serve.logs import AccessLog
from serve.metrics import Metrics

REQUEST_ID_HEADER = "X-Request-ID"
# Client ids are kept only when short and plain, so they cannot forge or flood log lines.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_LOGGED_CHARS = 200


def request_id_for(header: str | None) -> str:
    if header is not None and _SAFE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class RequestTelemetry:
    def __init__(self, metrics: Metrics, access_log: AccessLog):
        self._metrics = metrics
        self._access_log = access_log

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        req.context.request_id = request_id_for(req.get_header(REQUEST_ID_HEADER))
        self._metrics.in_flight.inc()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        seconds = time.perf_counter() - req.context.started
        self._metrics.in_flight.dec()
        resp.set_header(REQUEST_ID_HEADER, req.context.request_id)
        endpoint = req.uri_template or "unmatched"
        model = req.context.get("model", "")
        status = resp.status_code
        self._metrics.requests.labels(endpoint, model, str(status)).inc()
        self._metrics.request_seconds.labels(endpoint).observe(seconds)
        fields = {
            "request_id": req.context.request_id,
            "method": req.method,
            "path": req.path[:MAX_LOGGED_CHARS],
            "model": model,
            "rows": req.context.get("rows", 0),
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
        }
        if "error" in req.context:
            fields["error"] = req.context.error[:MAX_LOGGED_CHARS]
        self._access_log.request(fields)
