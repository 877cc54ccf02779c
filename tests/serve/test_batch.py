"""The request decoder: every anomaly of the data is a 422 naming what and where."""

import json

import numpy as np
import pytest

from serve.droid import CrystalDecoder
from serve.errors import InvalidCrystalData, InvalidModel, PayloadTooLarge
from serve.settings import Limits
from support.examples import ROW

MODELS = frozenset({"sklearn", "pytorch"})
MAX_ROWS = 100
DECODER = CrystalDecoder(Limits(max_rows=MAX_ROWS), MODELS)


def body(value: object) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (body({}), "Object missing required field `crystalData`"),
        (body({"crystaldata": [ROW]}), "Object missing required field `crystalData`"),
        (body({"crystalData": None}), "Expected `array`, got `null` - at `$.crystalData`"),
        (
            body({"crystalData": "0.1,0.2,0.3,0.4"}),
            "Expected `array`, got `str` - at `$.crystalData`",
        ),
        (body({"crystalData": {"0": ROW}}), "Expected `array`, got `object` - at `$.crystalData`"),
        (body({"crystalData": []}), "Expected `array` of length >= 1 - at `$.crystalData`"),
        (
            body({"crystalData": [ROW, "row"]}),
            "Expected `array`, got `str` - at `$.crystalData[1]`",
        ),
        (
            body({"crystalData": [ROW, ROW, [1, 2, 3]]}),
            "Expected `array` of length 4 - at `$.crystalData[2]`",
        ),
        (
            body({"crystalData": [[1, 2, 3, 4, 5]]}),
            "Expected `array` of length 4 - at `$.crystalData[0]`",
        ),
        (body({"crystalData": [[]]}), "Expected `array` of length 4 - at `$.crystalData[0]`"),
        (body({"crystalData": ROW}), "Expected `array`, got `float` - at `$.crystalData[0]`"),
        (
            body({"crystalData": [[ROW]]}),
            "Expected `float`, got `array` - at `$.crystalData[0][0]`",
        ),
        (
            body({"crystalData": [[0.1, 0.2, 0.3, "0.5"]]}),
            "Expected `float`, got `str` - at `$.crystalData[0][3]`",
        ),
        (
            body({"crystalData": [[0.1, 0.2, 0.3, "abc"]]}),
            "Expected `float`, got `str` - at `$.crystalData[0][3]`",
        ),
        (
            body({"crystalData": [[True, 0.2, 0.3, 0.4]]}),
            "Expected `float`, got `bool` - at `$.crystalData[0][0]`",
        ),
        (
            body({"crystalData": [[0.1, None, 0.3, 0.4]]}),
            "Expected `float`, got `null` - at `$.crystalData[0][1]`",
        ),
        (
            body({"crystalData": [[0.1, 0.2, {}, 0.4]]}),
            "Expected `float`, got `object` - at `$.crystalData[0][2]`",
        ),
        (
            b'{"crystalData": [[0.1, 0.2, 0.3, 1e400]]}',
            "Number out of range - at `$.crystalData[0][3]`",
        ),
        (
            b'{"crystalData": [[0.1, 0.2, 0.3, -1e400]]}',
            "Number out of range - at `$.crystalData[0][3]`",
        ),
        (
            b'{"crystalData": [[0.1, 0.2, 0.3, ' + b"9" * 400 + b"]]}",
            "Number out of range - at `$.crystalData[0][3]`",
        ),
        (body([ROW]), "Expected `object`, got `array`"),
        (body("crystalData"), "Expected `object`, got `str`"),
        (body(None), "Expected `object`, got `null`"),
    ],
)
def test_schema_faults_name_the_json_path(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidCrystalData) as caught:
        DECODER.crystal_data(raw)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "raw",
    [
        b'{"crystalData": [[0.1, 0.2, 0.3, NaN]]}',
        b'{"crystalData": [[0.1, 0.2, 0.3, Infinity]]}',
        b'{"crystalData": [[0.1, 0.2, 0.3, -Infinity]]}',
        b'{"crystalData": [[0.1, 0.2, 0.3, 0.4]]',
        b'{"crystalData": [[0.1, 0.2,',
        b"",
        b"not json",
        b'{"crystalData": [[0.1, 0.2, 0.3, 0.4]]} trailing',
    ],
)
def test_malformed_json_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidCrystalData, match="not valid JSON"):
        DECODER.crystal_data(raw)


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    depth = 100_000
    raw = b'{"other": ' + b"[" * depth + b"]" * depth + b', "crystalData": [[1, 2, 3, 4]]}'
    with pytest.raises(InvalidCrystalData, match="nested too deeply"):
        DECODER.crystal_data(raw)


def test_accepted_forms_keep_values_exactly() -> None:
    rows = [[0, 1, 2, 3], [-0.5, -1e-300, 1e12, -1e12], [5e-324, 0.1, 1, 2.5]]
    batch = DECODER.crystal_data(body({"crystalData": rows, "extra": "ignored"}))
    assert batch.dtype == np.float64
    assert batch.shape == (3, 4)
    assert batch.tolist() == [[float(v) for v in row] for row in rows]


def test_astromech_returns_model_and_rows() -> None:
    model, batch = DECODER.astromech(body({"crystalData": [ROW], "model": "pytorch"}))
    assert model == "pytorch"
    assert batch.tolist() == [ROW]


@pytest.mark.parametrize(
    "model",
    [
        "SKLEARN",
        "Sklearn",
        "sklearn ",
        "",
        "tensorflow",
        None,
        1,
        1.5,
        True,
        ["sklearn"],
        {"name": "sklearn"},
    ],
)
def test_astromech_invalid_model(model: object) -> None:
    with pytest.raises(InvalidModel, match='"pytorch" or "sklearn"'):
        DECODER.astromech(body({"crystalData": [ROW], "model": model}))


def test_astromech_missing_model() -> None:
    with pytest.raises(InvalidModel, match="model is missing"):
        DECODER.astromech(body({"crystalData": [ROW]}))


@pytest.mark.parametrize(
    "data", ["[]", "[[1, 2, 3]]", '"junk"', "[[1e400, 0, 0, 0]]", "null", '[[1, 2, 3, "4"]]']
)
def test_astromech_checks_model_before_data(data: str) -> None:
    raw = f'{{"crystalData": {data}, "model": "keras"}}'.encode()
    with pytest.raises(InvalidModel):
        DECODER.astromech(raw)


def test_astromech_valid_model_with_invalid_data_is_a_data_fault() -> None:
    with pytest.raises(InvalidCrystalData, match=r"\$\.crystalData\[0\]"):
        DECODER.astromech(body({"crystalData": [[1, 2, 3]], "model": "sklearn"}))


def test_astromech_unparsable_body_is_a_data_fault() -> None:
    with pytest.raises(InvalidCrystalData, match="not valid JSON"):
        DECODER.astromech(b'{"model": "keras", "crystalData": [[1,')


def test_invalid_model_echo_is_bounded() -> None:
    with pytest.raises(InvalidModel) as caught:
        DECODER.astromech(body({"crystalData": [ROW], "model": "x" * 10_000}))
    assert len(str(caught.value)) < 120


def test_row_limit_is_inclusive() -> None:
    assert DECODER.crystal_data(body({"crystalData": [ROW] * MAX_ROWS})).shape == (
        MAX_ROWS,
        4,
    )
    with pytest.raises(PayloadTooLarge, match=f"{MAX_ROWS + 1} rows, the limit is {MAX_ROWS}"):
        DECODER.crystal_data(body({"crystalData": [ROW] * (MAX_ROWS + 1)}))
    with pytest.raises(PayloadTooLarge):
        DECODER.astromech(body({"crystalData": [ROW] * (MAX_ROWS + 1), "model": "sklearn"}))


@pytest.mark.parametrize("value", ["1000000000000.5", "-1e13", "1e300", "-1.7976931348623157e308"])
def test_values_beyond_the_bound_are_refused(value: str) -> None:
    raw = f'{{"crystalData": [[0, 0, 0, 0], [0, 0, {value}, 0]]}}'.encode()
    with pytest.raises(InvalidCrystalData, match=r"\$\.crystalData\[1\]\[2\]"):
        DECODER.crystal_data(raw)


def test_the_bound_is_configurable() -> None:
    decoder = CrystalDecoder(Limits(max_abs_value=1e300), MODELS)
    assert decoder.crystal_data(b'{"crystalData": [[1e300, 0, 0, -1e300]]}').tolist() == [
        [1e300, 0, 0, -1e300]
    ]


def test_valid_utf8_beyond_ascii_is_accepted() -> None:
    raw = '{"crystalData": [[1, 2, 3, 4]], "note": "crystal é水💎"}'.encode()
    assert DECODER.crystal_data(raw).tolist() == [[1, 2, 3, 4]]
