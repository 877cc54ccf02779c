"""The droids' protocol: `POST /<model>` and `POST /astromech` with `{"crystalData": [[...]]}`,
answered `{"prediction": [...], "scores": [{label: p}, ...]}`; errors `{"title", "description"}`.

Bodies are decoded against a typed schema: msgspec checks types, row lengths and value bounds in
C and names the JSON path of the first fault. JSON has no NaN or Infinity, and msgspec refuses
numbers that overflow a float64, so a decoded batch holds finite values within the bound only.
"""

import json
from collections.abc import Sequence
from functools import partial
from typing import Annotated, Any

import falcon
import falcon.asgi
import msgspec
import numpy as np

from serve import openapi
from serve.body import DECODE_ERRORS, bounded_value, check_utf8, read_body
from serve.decode import rows_array
from serve.errors import InvalidCrystalData, InvalidModel, PayloadTooLarge, StartupError
from serve.fast_rows import plain_astromech, plain_batch
from serve.protocol import AddRoute, Examples, InferencePath
from serve.registry import WARM_UP_ROW
from serve.render import SCORE_ROWS_MAX_LABELS, SCORE_ROWS_MIN, ScoreRows
from serve.request import MODEL_VERSION_HEADER, CrystalRequest
from serve.settings import Limits

ASTROMECH = "astromech"
MAX_ECHO = 40
MODEL_PATH = "/{model}"  # droid.json's per-model path item; "{model}" in it becomes each name
UNSERVED_MODEL = "R2-D2"  # model names are lower case, so no served model is called this

_encoder = msgspec.json.Encoder()


class _ModelField(msgspec.Struct):
    model: Any = msgspec.UNSET


_model_decoder = msgspec.json.Decoder(_ModelField)


def _invalid(exc: Exception, model: str = "") -> InvalidCrystalData:
    if isinstance(exc, RecursionError):
        return InvalidCrystalData("JSON body is nested too deeply", model)
    if isinstance(exc, msgspec.ValidationError):
        return InvalidCrystalData(str(exc), model)
    return InvalidCrystalData(f"body is not valid JSON: {exc}", model)


def _check_model(model: object, model_names: frozenset[str]) -> str:
    if isinstance(model, str) and model in model_names:
        return model
    expected = " or ".join(f'"{name}"' for name in sorted(model_names))
    if model is msgspec.UNSET:
        raise InvalidModel(f"model is missing; expected {expected}")
    shown = msgspec.json.encode(model).decode()
    if len(shown) > MAX_ECHO:
        shown = shown[:MAX_ECHO] + "..."
    raise InvalidModel(f"model must be {expected}, got {shown}")


class CrystalDecoder:
    """Decodes /<model> and /astromech bodies into [rows, 4] float64 batches."""

    def __init__(self, limits: Limits, model_names: frozenset[str]):
        value = bounded_value(limits)
        rows = Annotated[list[tuple[value, value, value, value]], msgspec.Meta(min_length=1)]
        crystal = msgspec.defstruct("CrystalRequest", [("crystalData", rows)])
        astromech = msgspec.defstruct("AstromechRequest", [("crystalData", rows), ("model", str)])
        self._crystal = msgspec.json.Decoder(crystal)
        self._astromech = msgspec.json.Decoder(astromech)
        self._max_rows = limits.max_rows
        self._bound = limits.max_abs_value
        self._model_names = model_names

    def _check_row_count(self, rows: int, model: str = "") -> None:
        if rows > self._max_rows:
            raise PayloadTooLarge(
                f"crystalData has {rows} rows, the limit is {self._max_rows}", model
            )

    def _as_batch(self, rows: list[tuple[float, ...]], model: str = "") -> np.ndarray:
        self._check_row_count(len(rows), model)
        return rows_array(rows)

    def crystal_data(self, body: bytes) -> np.ndarray:
        """The rows of a /<model> body. A large plain body is read by serve/fast_rows.py into the
        batch msgspec would give; msgspec decodes any other, or one that cannot be proved plain."""
        check_utf8(body)
        batch = plain_batch(body, self._bound)
        if batch is not None:
            self._check_row_count(len(batch))
            return batch
        try:
            rows = self._crystal.decode(body).crystalData
        except DECODE_ERRORS as exc:
            raise _invalid(exc) from None
        return self._as_batch(rows)

    def astromech(self, body: bytes) -> tuple[str, np.ndarray]:
        """The chosen model and the rows of an /astromech body.

        An invalid model is reported before invalid data: when the typed decode fails, the body
        is read again for its `model` field alone, to tell which of the two is at fault. A large
        plain body naming a served model is read as /<model> bodies are (serve/fast_rows.py).
        """
        check_utf8(body)
        plain = plain_astromech(body, self._bound, self._model_names)
        if plain is not None:
            model, batch = plain
            self._check_row_count(len(batch), model)
            return model, batch
        try:
            request = self._astromech.decode(body)
        except DECODE_ERRORS as exc:
            try:
                model = _model_decoder.decode(body).model
            except DECODE_ERRORS:
                raise _invalid(exc) from None
            raise _invalid(exc, _check_model(model, self._model_names)) from None
        model = _check_model(request.model, self._model_names)
        return model, self._as_batch(request.crystalData, model)


class AnswerRenderer:
    """`{"prediction": [...], "scores": [{label: p}, ...]}`. Scores keep full float64 precision;
    float32 outputs are widened exactly, as `tolist()` widens them. Batches of SCORE_ROWS_MIN
    rows or more of up to SCORE_ROWS_MAX_LABELS labels are written from the array
    (serve/render.py): there a Python float per value costs more than the model; for fewer rows
    or more labels the struct per row is quicker. Same bytes either way."""

    def __init__(self, labels: Sequence[str]):
        # A struct per score row: lighter to build and to encode than a dict, same JSON.
        fields = [f"p{i}" for i in range(len(labels))]
        self._scores = msgspec.defstruct(
            "Scores", fields, rename=dict(zip(fields, labels, strict=True))
        )
        self._score_rows = ScoreRows(labels) if len(labels) <= SCORE_ROWS_MAX_LABELS else None

    def __call__(self, probabilities: np.ndarray, prediction: list[str]) -> bytes:
        if self._score_rows is not None and len(probabilities) >= SCORE_ROWS_MIN:
            scores: Any = msgspec.Raw(self._score_rows(probabilities))
        else:
            struct = self._scores
            scores = [struct(*row) for row in probabilities.tolist()]
        return _encoder.encode({"prediction": prediction, "scores": scores})


class DroidProtocol:
    """The droids' front door (serve/protocol.py): decode, predict through the registry, render;
    `POST /<model>` per served model and `POST /astromech`; errors `{"title", "description"}`."""

    name = "droid"
    namespace = ""  # its routes sit at the root, beside the others

    def __init__(self, path: InferencePath):
        self._registry = registry = path.registry
        self._decoder = CrystalDecoder(path.limits, registry.names)
        self._runner = path.runner
        self._limits = path.limits
        self._render = AnswerRenderer(registry.labels)

    def _answer(self, model: str, batch: np.ndarray) -> bytes:
        return self._render(*self._registry.run(model, batch))

    def _model_work(self, model: str, body: bytes) -> tuple[str, int, bytes]:
        batch = self._decoder.crystal_data(body)
        return model, len(batch), self._answer(model, batch)

    def _astromech_work(self, body: bytes) -> tuple[str, int, bytes]:
        model, batch = self._decoder.astromech(body)
        return model, len(batch), self._answer(model, batch)

    async def respond(self, req: CrystalRequest, resp: falcon.asgi.Response, model: str) -> None:
        """`model` is the route's model, or ASTROMECH when the body names it."""
        body = await read_body(req, self._limits)
        if model == ASTROMECH:
            work = partial(self._astromech_work, body)
        else:
            work = partial(self._model_work, model, body)
        named = "" if model == ASTROMECH else model
        model, req.context.rows, resp.data = await self._runner.run(len(body), work, named)
        req.context.model = model
        resp.content_type = falcon.MEDIA_JSON
        resp.set_header(MODEL_VERSION_HEADER, self._registry.version_tag(model))

    def add_routes(self, add: AddRoute) -> None:
        for name in sorted(self._registry.names):
            add(f"/{name}", ModelResource(self, name))
        add(f"/{ASTROMECH}", AstromechResource(self))

    def error_body(self, title: str, description: str) -> bytes:
        return _encoder.encode({"title": title, "description": description})

    def openapi_paths(self, examples: Examples) -> dict:
        """A path item per served model from the one template, then /astromech."""
        paths = openapi.template("droid.json")
        per_model = json.dumps(paths.pop(MODEL_PATH))
        request = {"crystalData": [WARM_UP_ROW]}
        items = {}
        for name in sorted(self._registry.names):
            item = json.loads(per_model.replace("{model}", name))
            openapi.content(item["post"])["example"] = request
            if name in examples.answers:
                answer = self._example_answer(examples.answers[name])
                openapi.content(item["post"], "200")["example"] = answer
            items[f"/{name}"] = item
        astromech = paths["/astromech"]["post"]
        openapi.content(astromech, "400")["example"] = self._unserved_model_answer()
        if examples.shown is not None:
            openapi.content(astromech)["example"] = {**request, "model": examples.shown}
            answer = self._example_answer(examples.answers[examples.shown])
            openapi.content(astromech, "200")["example"] = answer
        return items | paths

    def _example_answer(self, probabilities: np.ndarray) -> dict:
        """What the droids' endpoints answer, rendered as they render it."""
        labels = self._registry.labels_of(probabilities)
        return msgspec.json.decode(self._render(probabilities, labels))

    def _unserved_model_answer(self) -> dict:
        """/astromech's own answer to a model it does not serve: it lists the served ones."""
        body = msgspec.json.encode({"crystalData": [WARM_UP_ROW], "model": UNSERVED_MODEL})
        try:
            self._decoder.astromech(body)
        except InvalidModel as error:
            return {"title": error.title, "description": str(error)}
        raise StartupError(f"/astromech accepts the model {UNSERVED_MODEL!r}")


class ModelResource:
    """POST /<model>: one fixed model. Bodies are JSON whatever their Content-Type."""

    def __init__(self, protocol: DroidProtocol, model: str):
        self._protocol = protocol
        self._model = model

    async def on_post(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        req.context.model = self._model
        await self._protocol.respond(req, resp, self._model)


class AstromechResource:
    """POST /astromech: the body names the model."""

    def __init__(self, protocol: DroidProtocol):
        self._protocol = protocol

    async def on_post(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        await self._protocol.respond(req, resp, ASTROMECH)
