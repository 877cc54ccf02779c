"""The seam every front door plugs into. A protocol (the droids', the Open Inference Protocol)
brings its routes, the shape of its error answers and its part of the OpenAPI document; it is
built on the one InferencePath and registered once, in
serve/app.py's PROTOCOLS. Adding a protocol is one module and one entry there."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol as Interface

import falcon
import falcon.asgi
import msgspec
import numpy as np

from serve.auth import TokenGate
from serve.metrics import Metrics
from serve.registry import ModelRegistry
from serve.request import CrystalRequest
from serve.runner import BatchRunner
from serve.settings import Limits

# Adds one route: a URI template, its resource, `public=True` for a route open without a bearer
# token (a probe), and, as falcon.App.add_route takes them, options such as `suffix`.
AddRoute = Callable[..., None]


@dataclass(frozen=True)
class InferencePath:
    """What every front door is built on, shared by all: the models, the request limits, the
    runner that caps and offloads work, the metrics, and the bearer tokens asked for."""

    registry: ModelRegistry
    limits: Limits
    runner: BatchRunner
    metrics: Metrics
    gate: TokenGate


@dataclass(frozen=True)
class Examples:
    """What the OpenAPI examples show: each ready model's probabilities for the published
    example row, by name, and the model the shared examples use (None when none is ready)."""

    registry: ModelRegistry
    answers: dict[str, np.ndarray]
    shown: str | None


_encoder = msgspec.json.Encoder()


def send_json(resp: falcon.asgi.Response, document: object, status: str = falcon.HTTP_200) -> None:
    """A JSON answer, encoded as every front door encodes its documents."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _encoder.encode(document)


class FrontDoor(Interface):
    # The `protocol` label of its requests in the metrics.
    name: str
    # Unmatched paths under this prefix are answered in this protocol's shape ("" claims none).
    namespace: str

    def add_routes(self, add: AddRoute) -> None:
        """Adds the protocol's routes, each through `add`, so each knows its protocol."""

    def error_body(self, title: str, description: str) -> bytes:
        """An error answer in the protocol's shape."""

    def openapi_paths(self, examples: Examples) -> dict:
        """The protocol's path items of the OpenAPI document."""


# The `protocol` label of requests no protocol claims: the service's own routes (/metrics,
# /docs, /openapi.json) and unmatched paths outside every namespace.
NO_PROTOCOL = "none"


class Routes:
    """The protocols' routes and the protocol each belongs to: an error is answered in the shape
    of the protocol whose route matched, or that claims the unmatched path's namespace, else in
    the first protocol's."""

    def __init__(self, protocols: Sequence[FrontDoor]):
        self.protocols = tuple(protocols)
        self._routes: list[tuple[str, object, dict[str, str]]] = []
        self._by_template: dict[str, FrontDoor] = {}
        self._public: set[str] = set()
        for protocol in self.protocols:
            protocol.add_routes(partial(self._add, protocol))

    def _add(
        self,
        protocol: FrontDoor,
        template: str,
        resource: object,
        public: bool = False,
        **options: str,
    ) -> None:
        self._routes.append((template, resource, options))
        self._by_template[template] = protocol
        if public:
            self._public.add(template)

    def add_to(self, app: falcon.asgi.App) -> None:
        for template, resource, options in self._routes:
            app.add_route(template, resource, **options)

    def claimed_by(self, req: CrystalRequest) -> FrontDoor | None:
        matched = self._by_template.get(req.uri_template or "")
        if matched is not None:
            return matched
        for protocol in self.protocols:
            prefix = protocol.namespace
            if prefix and (req.path == prefix or req.path.startswith(prefix + "/")):
                return protocol
        return None

    def protocol_of(self, req: CrystalRequest) -> FrontDoor:
        return self.claimed_by(req) or self.protocols[0]

    def guards(self, template: str) -> bool:
        """Whether a route asks for a bearer token: every protocol's route but its public ones.
        The service's own routes (/metrics, /, the API page) are open."""
        return template in self._by_template and template not in self._public

    def label_of(self, req: CrystalRequest) -> str:
        claimed = self.claimed_by(req)
        return NO_PROTOCOL if claimed is None else claimed.name
