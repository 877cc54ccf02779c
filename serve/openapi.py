"""The served OpenAPI document, built once per app from the templates in serve/openapi/ for the
models actually served, so it never lists a model the server lacks nor misses one it has: a path
item per model, the model names and labels as enums, and examples that are the models' own
answers to the published example row."""

import json
from pathlib import Path

import msgspec
import numpy as np

from serve import droid, v2
from serve.contract import INPUT_NAME, N_FEATURES
from serve.errors import InvalidModel, StartupError
from serve.registry import WARM_UP_ROW, ModelRegistry
from serve.settings import Limits

TEMPLATES = Path(__file__).resolve().parent / "openapi"
MODEL_PATH = "/{model}"  # droid.json's per-model path item; "{model}" in it becomes each name
JSON = "application/json"
EXAMPLE_ID = "r2d2-1"
UNSERVED_MODEL = "R2-D2"  # model names are lower case, so no served model is called this


def _template(name: str) -> dict:
    return json.loads((TEMPLATES / name).read_text(encoding="utf-8"))


def _content(operation: dict, status: str | None = None) -> dict:
    """The JSON media object of an operation's request body (no status) or of a response."""
    holder = operation["requestBody"] if status is None else operation["responses"][status]
    return holder["content"][JSON]


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


def _droid_answer(registry: ModelRegistry, probabilities: np.ndarray) -> dict:
    """What the droids' endpoints answer, rendered as they render it."""
    render = droid.AnswerRenderer(registry.labels)
    return msgspec.json.decode(render(probabilities, registry.labels_of(probabilities)))


def _unserved_model_answer(names: frozenset[str]) -> dict:
    """/astromech's own answer to a model it does not serve: it lists the served ones."""
    body = msgspec.json.encode({"crystalData": [WARM_UP_ROW], "model": UNSERVED_MODEL})
    try:
        droid.CrystalDecoder(Limits(), names).astromech(body)
    except InvalidModel as error:
        return {"title": error.title, "description": str(error)}
    raise StartupError(f"/astromech accepts the model {UNSERVED_MODEL!r}")


def _v2_answer(registry: ModelRegistry, name: str, probabilities: np.ndarray) -> dict:
    """What `POST /v2/models/{name}/infer` answers, both outputs in JSON."""
    outputs = tuple((output, False) for output in v2.OUTPUT_NAMES)
    labels = registry.labels_of(probabilities)
    answer, _ = v2.render_answer(
        name, registry.model(name), EXAMPLE_ID, probabilities, labels, outputs
    )
    return msgspec.json.decode(answer)


def _fill_components(
    components: dict, names: list[str], labels: tuple[str, ...], shown: str | None
) -> None:
    schemas = components["schemas"]
    schemas["AstromechRequest"]["properties"]["model"]["enum"] = names
    schemas["Prediction"]["properties"]["prediction"]["items"]["enum"] = list(labels)
    scores = schemas["Scores"]
    scores["properties"] = {label: {"$ref": "#/components/schemas/Probability"} for label in labels}
    scores["required"] = list(labels)
    model_name = components["parameters"]["ModelName"]
    model_name["schema"]["enum"] = names
    if shown is not None:
        model_name["example"] = shown


def _droid_paths(
    registry: ModelRegistry, answers: dict[str, np.ndarray], shown: str | None
) -> dict:
    """A path item per served model from the one template, then /astromech."""
    paths = _template("droid.json")
    per_model = json.dumps(paths.pop(MODEL_PATH))
    request = {"crystalData": [WARM_UP_ROW]}
    items = {}
    for name in sorted(registry.names):
        item = json.loads(per_model.replace("{model}", name))
        _content(item["post"])["example"] = request
        if name in answers:
            _content(item["post"], "200")["example"] = _droid_answer(registry, answers[name])
        items[f"/{name}"] = item
    astromech = paths["/astromech"]["post"]
    _content(astromech, "400")["example"] = _unserved_model_answer(registry.names)
    if shown is not None:
        _content(astromech)["example"] = {**request, "model": shown}
        _content(astromech, "200")["example"] = _droid_answer(registry, answers[shown])
    return items | paths


def _v2_paths(registry: ModelRegistry, answers: dict[str, np.ndarray], shown: str | None) -> dict:
    paths = _template("v2.json")
    if shown is not None:
        infer = paths["/v2/models/{name}/infer"]["post"]
        tensor = {
            "name": INPUT_NAME,
            "shape": [1, N_FEATURES],
            "datatype": "FP64",
            "data": list(WARM_UP_ROW),
        }
        _content(infer)["example"] = {"id": EXAMPLE_ID, "inputs": [tensor]}
        _content(infer, "200")["example"] = _v2_answer(registry, shown, answers[shown])
    return paths


def build_spec(registry: ModelRegistry) -> bytes:
    """The document for the registry's models; its examples show the first ready one."""
    answers = _answers(registry)
    shown = next(iter(answers), None)
    spec = _template("base.json")
    _fill_components(spec["components"], sorted(registry.names), registry.labels, shown)
    spec["paths"] = (
        _droid_paths(registry, answers, shown) | _v2_paths(registry, answers, shown) | spec["paths"]
    )
    return msgspec.json.encode(spec)
