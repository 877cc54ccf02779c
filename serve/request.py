"""The request type of the app: a typed context for what telemetry reads, and the raw ASGI body
events, so a body cut short is told apart from a whole one (Falcon's stream reads both as EOF)."""

from typing import Any

import falcon.asgi

# Every prediction answer names the model and version that made it: `sklearn/a4499cc8c13e`.
MODEL_VERSION_HEADER = "X-Model-Version"


class RequestContext:
    """Written by the middleware and the protocols, read by telemetry."""

    __slots__ = ("error", "model", "request_id", "rows", "started")

    def __init__(self) -> None:
        self.request_id = ""
        self.started = 0.0
        self.model = ""
        self.rows = 0
        self.error = ""


class CrystalRequest(falcon.asgi.Request):
    context_type = RequestContext
    context: RequestContext

    def __init__(
        self,
        scope: dict[str, Any],
        receive: Any,
        first_event: dict[str, Any] | None = None,
        options: falcon.RequestOptions | None = None,
    ):
        super().__init__(scope, receive, first_event=first_event, options=options)
        self.receive_event = receive
        self.first_event = first_event
