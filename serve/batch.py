"""Request bodies decoded against a typed schema: msgspec checks types and row lengths in C.

JSON has no NaN or Infinity, and msgspec refuses numbers that overflow a float64 ("Number out of
range"), so a decoded batch holds finite float64 values only.
"""

from typing import Annotated, Any

import msgspec
import numpy as np

from serve.errors import InvalidCrystalData, InvalidModel, PayloadTooLarge

N_FEATURES = 4
Row = tuple[float, float, float, float]
Rows = Annotated[list[Row], msgspec.Meta(min_length=1)]
MAX_ECHO = 40


class CrystalRequest(msgspec.Struct):
    crystalData: Rows


class AstromechRequest(msgspec.Struct):
    crystalData: Rows
    model: str


class _ModelField(msgspec.Struct):
    model: Any = msgspec.UNSET


_crystal_decoder = msgspec.json.Decoder(CrystalRequest)
_astromech_decoder = msgspec.json.Decoder(AstromechRequest)
_model_decoder = msgspec.json.Decoder(_ModelField)
_DECODE_ERRORS = (msgspec.DecodeError, RecursionError)


def _invalid(exc: Exception) -> InvalidCrystalData:
    if isinstance(exc, RecursionError):
        return InvalidCrystalData("JSON body is nested too deeply")
    if isinstance(exc, msgspec.ValidationError):
        return InvalidCrystalData(str(exc))
    return InvalidCrystalData(f"body is not valid JSON: {exc}")


def _as_batch(rows: list[Row], max_rows: int) -> np.ndarray:
    if len(rows) > max_rows:
        raise PayloadTooLarge(f"crystalData has {len(rows)} rows, the limit is {max_rows}")
    return np.array(rows, dtype=np.float64)


def decode_crystal_data(body: bytes, max_rows: int) -> np.ndarray:
    """The `crystalData` rows of a /sklearn or /pytorch body as a [rows, 4] float64 array."""
    try:
        rows = _crystal_decoder.decode(body).crystalData
    except _DECODE_ERRORS as exc:
        raise _invalid(exc) from None
    return _as_batch(rows, max_rows)


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


def decode_astromech(
    body: bytes, model_names: frozenset[str], max_rows: int
) -> tuple[str, np.ndarray]:
    """The chosen model and the rows of an /astromech body.

    An invalid model is reported before invalid data: when the typed decode fails, the body is
    read again for its `model` field alone, to tell which of the two is at fault.
    """
    try:
        request = _astromech_decoder.decode(body)
    except _DECODE_ERRORS as exc:
        try:
            model = _model_decoder.decode(body).model
        except _DECODE_ERRORS:
            raise _invalid(exc) from None
        _check_model(model, model_names)
        raise _invalid(exc) from None
    return _check_model(request.model, model_names), _as_batch(request.crystalData, max_rows)
