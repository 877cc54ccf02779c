"""Request bodies decoded against a typed schema: msgspec checks types, row lengths and value
bounds in C, and names the JSON path of the first fault.

JSON has no NaN or Infinity, and msgspec refuses numbers that overflow a float64 ("Number out of
range"), so a decoded batch holds finite float64 values within the configured bound only.
"""

from typing import Annotated, Any

import msgspec
import numpy as np

from serve.errors import InvalidCrystalData, InvalidModel, PayloadTooLarge
from serve.settings import Limits

MAX_ECHO = 40
DECODE_ERRORS = (msgspec.DecodeError, RecursionError)


class _ModelField(msgspec.Struct):
    model: Any = msgspec.UNSET


_model_decoder = msgspec.json.Decoder(_ModelField)


def _invalid(exc: Exception) -> InvalidCrystalData:
    if isinstance(exc, RecursionError):
        return InvalidCrystalData("JSON body is nested too deeply")
    if isinstance(exc, msgspec.ValidationError):
        return InvalidCrystalData(str(exc))
    return InvalidCrystalData(f"body is not valid JSON: {exc}")


def bounded_value(limits: Limits) -> Any:
    """A measurement: a float within ±max_abs_value, checked by msgspec as it decodes."""
    bound = limits.max_abs_value
    return Annotated[float, msgspec.Meta(ge=-bound, le=bound)]


def check_utf8(body: bytes) -> None:
    """JSON is UTF-8; msgspec checks only the strings it keeps, so check the whole body once.

    The ASCII test allocates nothing and covers almost every body; only others are decoded.
    """
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidCrystalData(f"body is not valid UTF-8 (byte {exc.start})") from None


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
    """Decodes /sklearn, /pytorch and /astromech bodies into [rows, 4] float64 batches."""

    def __init__(self, limits: Limits, model_names: frozenset[str]):
        value = bounded_value(limits)
        rows = Annotated[list[tuple[value, value, value, value]], msgspec.Meta(min_length=1)]
        crystal = msgspec.defstruct("CrystalRequest", [("crystalData", rows)])
        astromech = msgspec.defstruct("AstromechRequest", [("crystalData", rows), ("model", str)])
        self._crystal = msgspec.json.Decoder(crystal)
        self._astromech = msgspec.json.Decoder(astromech)
        self._max_rows = limits.max_rows
        self._model_names = model_names

    def _as_batch(self, rows: list[tuple[float, ...]]) -> np.ndarray:
        if len(rows) > self._max_rows:
            raise PayloadTooLarge(
                f"crystalData has {len(rows)} rows, the limit is {self._max_rows}"
            )
        return np.array(rows, dtype=np.float64)

    def crystal_data(self, body: bytes) -> np.ndarray:
        """The rows of a /sklearn or /pytorch body."""
        check_utf8(body)
        try:
            rows = self._crystal.decode(body).crystalData
        except DECODE_ERRORS as exc:
            raise _invalid(exc) from None
        return self._as_batch(rows)

    def astromech(self, body: bytes) -> tuple[str, np.ndarray]:
        """The chosen model and the rows of an /astromech body.

        An invalid model is reported before invalid data: when the typed decode fails, the body
        is read again for its `model` field alone, to tell which of the two is at fault.
        """
        check_utf8(body)
        try:
            request = self._astromech.decode(body)
        except DECODE_ERRORS as exc:
            try:
                model = _model_decoder.decode(body).model
            except DECODE_ERRORS:
                raise _invalid(exc) from None
            _check_model(model, self._model_names)
            raise _invalid(exc) from None
        return _check_model(request.model, self._model_names), self._as_batch(request.crystalData)
