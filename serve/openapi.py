"""The served OpenAPI document, built once per app from the templates in serve/openapi/ for the
models actually served, so it never lists a model the server lacks nor misses one it has: each
protocol adds its path items (serve/protocol.py), this module the shared parts (info, schemas,
the model names and labels as enums) and the examples, which are the models' own answers to the
published example row."""

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import numpy as np

from serve.protocol import Examples, FrontDoor
from serve.registry import WARM_UP_ROW, ModelRegistry

TEMPLATES = Path(__file__).resolve().parent / "openapi"
JSON = "application/json"
EXAMPLE_ID = "r2d2-1"
METHODS = ("get", "head", "post", "put", "delete", "patch", "options")
# With AUTH_TOKENS_FILE set, what every guarded operation declares (serve/auth.py).
BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "One of the tokens in the server's AUTH_TOKENS_FILE.",
}
UNAUTHORIZED = {
    "description": "No accepted bearer token: the error in the protocol's shape, with the "
    "WWW-Authenticate header.",
}


def template(name: str) -> dict:
    return json.loads((TEMPLATES / name).read_text(encoding="utf-8"))


def content(operation: dict, status: str | None = None) -> dict:
    """The JSON media object of an operation's request body (no status) or of a response."""
    holder = operation["requestBody"] if status is None else operation["responses"][status]
    return holder["content"][JSON]


def with_versions(paths: dict, unversioned: str, versioned: str) -> dict:
    """`paths` and, for each path under `unversioned`, the same operations under `versioned`
    with the version parameter: a model's routes answer alike with and without its version."""
    copies = {}
    for path, item in paths.items():
        if path == unversioned or path.startswith(unversioned + "/"):
            copy = json.loads(json.dumps(item))
            for operation in copy.values():
                operation["operationId"] += "Version"
                operation["parameters"].append({"$ref": "#/components/parameters/ModelVersion"})
                if "404" in operation["responses"]:
                    operation["responses"]["404"]["description"] = (
                        "No model of that name and version."
                    )
            copies[versioned + path[len(unversioned) :]] = copy
    return paths | copies


def _answers(registry: ModelRegistry) -> dict[str, np.ndarray]:
    """Each ready model's probabilities for the example row, by name. Asked of the model itself:
    through `registry.run` they would count as predictions in the metrics. The warm-up ran this
    very row, so a ready model answers it."""
    row = np.array([WARM_UP_ROW])
    return {
        name: registry.model(name).predict(row)
        for name in sorted(registry.names)
        if registry.is_ready(name)
    }


def _fill_components(
    components: dict,
    names: list[str],
    versions: list[str],
    labels: tuple[str, ...],
    shown: str | None,
) -> None:
    schemas = components["schemas"]
    schemas["AstromechRequest"]["properties"]["model"]["enum"] = names
    schemas["Prediction"]["properties"]["prediction"]["items"]["enum"] = list(labels)
    scores = schemas["Scores"]
    scores["properties"] = {label: {"$ref": "#/components/schemas/Probability"} for label in labels}
    scores["required"] = list(labels)
    model_name = components["parameters"]["ModelName"]
    model_name["schema"]["enum"] = names
    components["parameters"]["ModelVersion"]["schema"]["enum"] = versions
    if shown is not None:
        model_name["example"] = shown


def build_spec(
    registry: ModelRegistry,
    protocols: Sequence[FrontDoor],
    guarded: Callable[[str], bool] | None = None,
    metrics_here: bool = True,
) -> bytes:
    """The document for the registry's models and the protocols served; its examples show the
    first ready model. With `guarded` (bearer tokens asked), the operations of each path it
    names declare the bearer scheme and its 401. Without `metrics_here` (METRICS_PORT set),
    /metrics is left out, and from the index too: this port does not answer it."""
    answers = _answers(registry)
    examples = Examples(registry, answers, next(iter(answers), None))
    spec = template("base.json")
    names = sorted(registry.names)
    versions = sorted({registry.model(name).version for name in names})
    _fill_components(spec["components"], names, versions, registry.labels, examples.shown)
    paths: dict = {}
    for protocol in protocols:
        paths |= protocol.openapi_paths(examples)
    spec["paths"] = paths | spec["paths"]
    if not metrics_here:
        del spec["paths"]["/metrics"]
        index = spec["paths"]["/"]["get"]["responses"]["200"]["content"]["application/json"]
        del index["schema"]["properties"]["metrics"]
        index["schema"]["required"].remove("metrics")
    if guarded is not None:
        spec["components"]["securitySchemes"] = {"bearer": BEARER_SCHEME}
        for path, item in spec["paths"].items():
            if guarded(path):
                for method in METHODS & item.keys():
                    item[method]["security"] = [{"bearer": []}]
                    item[method]["responses"]["401"] = UNAUTHORIZED
    return msgspec.json.encode(spec)
