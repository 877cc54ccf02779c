"""The seam every front door plugs into. A protocol (the droids', the Open Inference Protocol)
brings its routes, the shape of its error answers and its part of the OpenAPI document; it is
built on the one inference path (registry, limits, runner) and registered once, in
serve/app.py's PROTOCOLS. Adding a protocol is one module and one entry there."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol as Interface

import falcon.asgi
import numpy as np

from serve.registry import ModelRegistry
from serve.request import CrystalRequest

# Adds one route: a URI template, its resource and, as falcon.App.add_route takes them, options
# such as `suffix`.
AddRoute = Callable[..., None]


@dataclass(frozen=True)
class Examples:
    """What the OpenAPI examples show: each ready model's probabilities for the published
    example row, by name, and the model the shared examples use (None when none is ready)."""

    registry: ModelRegistry
    answers: dict[str, np.ndarray]
    shown: str | None


class FrontDoor(Interface):
    # Unmatched paths under this prefix are answered in this protocol's shape ("" claims none).
    namespace: str

    def add_routes(self, add: AddRoute) -> None:
        """Adds the protocol's routes, each through `add`, so each knows its protocol."""

    def error_body(self, title: str, description: str) -> bytes:
        """An error answer in the protocol's shape."""

    def openapi_paths(self, examples: Examples) -> dict:
        """The protocol's path items of the OpenAPI document."""


class Routes:
    """The app's routes and the protocol each belongs to: an error is answered in the shape of
    the protocol whose route matched, or that claims the unmatched path's namespace, else in the
    first protocol's."""

    def __init__(self, app: falcon.asgi.App, protocols: Sequence[FrontDoor]):
        self._app = app
        self.protocols = tuple(protocols)
        self._by_template: dict[str, FrontDoor] = {}
        for protocol in self.protocols:
            protocol.add_routes(partial(self._add, protocol))

    def _add(self, protocol: FrontDoor, template: str, resource: object, **options: str) -> None:
        self._app.add_route(template, resource, **options)
        self._by_template[template] = protocol

    def protocol_of(self, req: CrystalRequest) -> FrontDoor:
        matched = self._by_template.get(req.uri_template or "")
        if matched is not None:
            return matched
        for protocol in self.protocols:
            prefix = protocol.namespace
            if prefix and (req.path == prefix or req.path.startswith(prefix + "/")):
                return protocol
        return self.protocols[0]
