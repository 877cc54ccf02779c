"""Decoding into arrays (serve/decode.py and the decoders that use it) gives what the decoders
gave before it, bit for bit and refusal for refusal: the reference decoders here are the ones of
before, msgspec's rows through `np.array` and binary values copied out of the body."""

import json
import math
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serve import droid, v2
from serve import grpc_messages as messages
from serve.classifier import OnnxClassifier
from serve.contract import N_FEATURES
from serve.decode import FROMITER_MIN, model_batch, rows_array
from serve.droid import CrystalDecoder
from serve.errors import ServiceError
from serve.grpc_service import TensorDecoder
from serve.settings import Limits
from serve.v2 import InferDecoder
from support.onnx_builders import IDENTITY_WEIGHTS, softmax_model

MODELS = frozenset({"sklearn", "pytorch"})
LIMITS = Limits(max_rows=1000)
DEPTH = 100_000

NUMBER_TEXTS = [
    "0", "-0", "0.0", "-0.0", "1", "-1", "0.1", "-0.1", "1e-300", "-1e-300", "5e-324",
    "-5e-324", "2e-324", "3e-324", "2.4703282292062327e-324", "2.4703282292062328e-324",
    "2.2250738585072011e-308", "2.2250738585072014e-308", "1e-400", "-1e-400", "1E5",
    "1e+5", "1E-5", "1.5E+3", "0.30000000000000004", "1e12", "-1e12", "1000000000000",
    "1000000000000.0000001", "999999999999.99999", "1e12000", "123456789012345678",
    "9007199254740993", "-9007199254740993", "9223372036854775807", "9223372036854775808",
    "18446744073709551615", "18446744073709551616", "1" + "0" * 30, "0." + "0" * 400 + "1",
    "1" + "0" * 400, "3.141592653589793238462643383279502884197", "0.000001", "1e-7",
    "123.456e-2", "7e0", "0e0", "-0e-0", "0.1e1", "4.9406564584124654e-324",
    "1.7976931348623157e308", "1.7976931348623159e308",
]  # fmt: skip
BAD_TOKENS = [
    "true", "false", "null", '"0.5"', '"1e3"', '"NaN"', "NaN", "Infinity", "-Infinity",
    "01", "-01", "1.", ".5", "+1", "1e", "1e+", "-", "--1", "0x10", "1_000", "[]", "{}",
    "[1]", '{"a": 1}', "1 2", "\u0661",
]  # fmt: skip


def today_rows_array(rows: Any) -> np.ndarray:
    """The rows' conversion before serve/decode.py."""
    return np.array(rows, dtype=np.float64)


def today_model_batch(values: np.ndarray, rows: int) -> np.ndarray:
    """The values' reshape before serve/decode.py: always a float64 copy."""
    return values.reshape(rows, N_FEATURES).astype(np.float64)


@contextmanager
def as_before() -> Iterator[None]:
    """The decoders as they were: `np.array` over the rows, binary values copied out of the
    body (bytes slices) and then into the batch."""
    real_decode = InferDecoder.decode

    def copied(self: InferDecoder, body: bytes, header_length: int | None) -> Any:
        with mock.patch.object(v2, "memoryview", bytes, create=True):
            return real_decode(self, body, header_length)

    with (
        mock.patch.object(droid, "rows_array", today_rows_array),
        mock.patch.object(v2, "rows_array", today_rows_array),
        mock.patch.object(v2, "model_batch", today_model_batch),
        mock.patch.object(InferDecoder, "decode", copied),
    ):
        yield


def outcome(decode: Callable[[], Any]) -> tuple:
    """What a decode gave: its arrays' dtype, shape and bits, or its refusal's class, status and
    message; and the warnings it raised."""
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        try:
            result = decode()
        except ServiceError as error:
            return ("refused", type(error).__name__, error.status, str(error), error.model)
    shown = [
        (item.dtype.str, item.shape, item.tobytes()) if isinstance(item, np.ndarray) else item
        for item in (result if isinstance(result, tuple) else (result,))
    ]
    return ("decoded", *shown, [str(w.message) for w in raised])


def assert_same_as_before(decode: Callable[[], Any]) -> tuple:
    now = outcome(decode)
    with as_before():
        before = outcome(decode)
    assert now == before
    return now


def crystal(body: bytes, limits: Limits = LIMITS) -> tuple:
    decoder = CrystalDecoder(limits, MODELS)
    return assert_same_as_before(lambda: decoder.crystal_data(body))


def astromech(body: bytes) -> tuple:
    decoder = CrystalDecoder(LIMITS, MODELS)
    return assert_same_as_before(lambda: decoder.astromech(body))


def infer(body: bytes, header_length: int | None = None, limits: Limits = LIMITS) -> tuple:
    decoder = InferDecoder(limits)
    return assert_same_as_before(lambda: decoder.decode(body, header_length))


def v2_body(data: object, shape: list[int], datatype: str = "FP64") -> bytes:
    tensor = {"name": "input", "shape": shape, "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def binary_body(values: np.ndarray, datatype: str, pad: int = 0) -> tuple[bytes, int]:
    """A binary-extension body: its JSON header, `pad` spaces long more, then the values."""
    tensor = {"name": "input", "shape": [len(values) // 4, 4], "datatype": datatype}
    tensor["parameters"] = {"binary_data_size": values.nbytes}
    header = json.dumps({"inputs": [tensor]}).encode() + b" " * pad
    return header + values.tobytes(), len(header)


def bits(values: np.ndarray) -> np.ndarray:
    return values.view(f"u{values.dtype.itemsize}")


# --- rows_array against np.array ---------------------------------------------------------------


def value_rows(rng: np.random.Generator, count: int) -> list[tuple[float, ...]]:
    """Rows of finite float64 values of every kind: edges, random bit patterns, subnormals."""
    edges = [float(text) for text in NUMBER_TEXTS if math.isfinite(float(text))]
    patterns = rng.integers(0, 2**64, size=4 * count, dtype=np.uint64).view(np.float64)
    values = [*edges, *patterns[np.isfinite(patterns)].tolist()]
    flat = [values[i % len(values)] for i in range(count * N_FEATURES)]
    return [tuple(flat[i : i + N_FEATURES]) for i in range(0, len(flat), N_FEATURES)]


@pytest.mark.parametrize("count", [1, 2, FROMITER_MIN - 1, FROMITER_MIN, FROMITER_MIN + 1, 1000])
def test_rows_array_is_np_arrays_values_bit_for_bit(count: int) -> None:
    rows = value_rows(np.random.default_rng(count), count)
    got, expected = rows_array(rows), np.array(rows, dtype=np.float64)
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape) == (np.float64, (count, 4))
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(bits(got), bits(expected))
    # FP32 tensors: narrowed from these, as np.array narrowed each Python float
    with np.errstate(over="ignore"):
        narrowed, direct = got.astype(np.float32), np.array(rows, dtype=np.float32)
    np.testing.assert_array_equal(bits(narrowed), bits(direct))


def test_model_batch_is_a_view_only_of_aligned_float64_values() -> None:
    raw = np.arange(1, 33, dtype=np.float64).tobytes()
    aligned = np.frombuffer(raw, dtype="<f8")
    view = model_batch(aligned, 8)
    assert view.shape == (8, 4) and np.shares_memory(view, aligned)
    unaligned = np.frombuffer(b"x" + raw, dtype="<f8", offset=1)
    assert not unaligned.flags.aligned
    copy = model_batch(unaligned, 8)
    assert copy.flags.aligned and not np.shares_memory(copy, unaligned)
    assert copy.tolist() == view.tolist()
    single = model_batch(aligned.astype(np.float32), 8)
    assert single.dtype == np.float64 and single.tolist() == view.tolist()


# --- the droids' decoder -----------------------------------------------------------------------


def data_body(data: str, **extra: str) -> bytes:
    fields = [f'"crystalData": {data}', *(f'"{key}": {value}' for key, value in extra.items())]
    return ("{" + ", ".join(fields) + "}").encode()


HOSTILE_BODIES = {
    "deep array": b"[" * DEPTH + b"]" * DEPTH,
    "deep data": b'{"crystalData": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",
    "deep other field": b'{"x": ' + b"[" * DEPTH + b"]" * DEPTH + b', "crystalData": [[1,2,3,4]]}',
    "large string": json.dumps({"crystalData": [[0, 0, 0, "x" * 1_000_000]]}).encode(),
    "rows at the limit": data_body(json.dumps([[0.5, 0.5, 0.5, 0.5]] * 1000)),
    "rows past the limit": data_body(json.dumps([[0.5, 0.5, 0.5, 0.5]] * 1001)),
    "bad value past the limit": data_body(json.dumps([[0.5, 0.5, 0.5, 0.5]] * 1001 + [[1]])),
    "not utf-8": b'{"crystalData": [[1, 2, 3, 4]], "note": "\xff"}',
    "empty": b"",
    "not json": b"not json",
    "cut short": b'{"crystalData": [[0.1, 0.2,',
    "trailing": b'{"crystalData": [[0.1, 0.2, 0.3, 0.4]]} trailing',
    "no object": b"[[1, 2, 3, 4]]",
    "a string": b'"crystalData"',
    "null body": b"null",
    "rows a string": data_body('"0.1,0.2,0.3,0.4"'),
    "no rows": data_body("[]"),
    "null": data_body("null"),
    "one row unnested": data_body("[1, 2, 3, 4]"),
    "three deep": data_body("[[[1, 2, 3, 4]]]"),
    "short row among many": data_body(json.dumps([[1, 2, 3, 4]] * 10 + [[1, 2, 3]])),
    "long row": data_body("[[1, 2, 3, 4, 5]]"),
    "string row": data_body('[[1, 2, 3, 4], "row"]'),
    "object for rows": data_body('{"0": [1, 2, 3, 4]}'),
    "duplicate key, bad then good": data_body("[[1, 2, 3]]", crystalData="[[1, 2, 3, 4]]"),
    "duplicate key, good then bad": data_body("[[1, 2, 3, 4]]", crystalData="[[1, 2, 3]]"),
    "duplicate key, both good": data_body("[[1, 2, 3, 4]]", crystalData="[[5, 6, 7, 8]]"),
    "escaped key": b'{"crystal\\u0044ata": [[1, 2, 3, 4]]}',
    "other case key": b'{"crystaldata": [[1, 2, 3, 4]]}',
    "whitespace everywhere": b' \t\n{ \r"crystalData"\n :\t[ [ 1 ,\n2 , 3\t, 4 ] ,[5,6,7,8]\n]}\n',
    "whitespace json does not allow": b'{"crystalData": [[1,\x0b2, 3, 4]]}',
    "extra fields": data_body("[[1, 2, 3, 4]]", extra='{"a": [1, "b"]}', more="null"),
    "model field on a model route": data_body("[[1, 2, 3, 4]]", model='"keras"'),
}  # fmt: skip


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_bodies_decode_as_before(body: bytes) -> None:
    crystal(body)
    astromech(body)
    with_model = body.replace(b'{"crystalData"', b'{"model": "sklearn", "crystalData"', 1)
    astromech(with_model)


def rows_text(rows: int, value: str) -> str:
    """`rows` rows of zeros whose last row's second value is `value`."""
    return "[" + ", ".join(["[0, 0, 0, 0]"] * (rows - 1) + [f"[0, {value}, 0, 0]"]) + "]"


@pytest.mark.parametrize("text", NUMBER_TEXTS)
def test_numbers_decode_as_before_and_as_python_reads_them(text: str) -> None:
    """Accepted numbers hold the bits of Python's reading of their JSON text (integers such as
    `-0` are integers, then floats), at every row count; the others are beyond the bound."""
    for rows in (1, FROMITER_MIN, 50):
        result = crystal(data_body(rows_text(rows, text)))
        if result[0] == "refused":
            assert not abs(float(text)) <= LIMITS.max_abs_value
            continue
        value = np.frombuffer(result[1][2], dtype=np.float64)[-3]
        assert bits(np.array([value])) == bits(np.array([float(json.loads(text))]))


@pytest.mark.parametrize("token", BAD_TOKENS)
@pytest.mark.parametrize("rows", [1, FROMITER_MIN, 50])
def test_non_numbers_are_refused_as_before(token: str, rows: int) -> None:
    body = data_body(rows_text(rows, token))
    assert crystal(body)[0] == "refused"
    assert astromech(body.replace(b"{", b'{"model": "pytorch", ', 1))[0] == "refused"


# --- the Open Inference Protocol's decoder -----------------------------------------------------


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
@pytest.mark.parametrize("rows", [1, FROMITER_MIN, 50])
@pytest.mark.parametrize("value", [*NUMBER_TEXTS, *BAD_TOKENS])
def test_json_tensors_decode_as_before(value: str, rows: int, datatype: str) -> None:
    nested = rows_text(rows, value)
    flat = nested.replace("[", "").replace("]", "")
    for data in (nested, f"[{flat}]", f" \n[ {nested[1:]}"):
        tensor = f'{{"name": "input", "shape": [{rows}, 4], "datatype": "{datatype}", "data": '
        infer(f'{{"inputs": [{tensor}{data}}}]}}'.encode())


V2_HOSTILE = {
    "deep data": b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": '
    + b"[" * DEPTH
    + b"]" * DEPTH
    + b"}]}",
    "three deep": v2_body([[[1, 2, 3, 4]]], [1, 4]),
    "ragged": v2_body([[1, 2, 3, 4]] * 5 + [[1, 2, 3, 4, 5]], [6, 4]),
    "ragged to the right size": v2_body([[1, 2, 3], [4, 5, 6, 7, 8]], [2, 4]),
    "mixed depth": v2_body([[1, 2, 3, 4], 1, 2, 3, 4], [2, 4]),
    "rows past the limit": v2_body([[0.5] * 4] * 1001, [1001, 4]),
    "shape past the data": v2_body([[0.5] * 4] * 10, [11, 4]),
    "empty data": v2_body([], [1, 4]),
    "no data": v2_body(None, [1, 4]),
    "data a string": v2_body("1, 2, 3, 4", [1, 4]),
    "bools": v2_body([[True, False, True, False]] * 8, [8, 4]),
    "numeric strings": v2_body([["1", "2", "3", "4"]] * 8, [8, 4]),
    "whitespace": b'{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP64","data":'
    b"\n[ [1 ,2,\t3, 4 ] , [ 5,6 ,7,8]\r]}]}",
    "another datatype": v2_body([[1, 2, 3, 4]], [1, 4], "INT64"),
    "another width": v2_body([[1, 2, 3]] * 2, [2, 3]),
    "no rows in the shape": v2_body([[1, 2, 3, 4]], [0, 4]),
    "two inputs": json.dumps(
        {"inputs": [json.loads(v2_body([1, 2, 3, 4], [1, 4]))["inputs"][0]] * 2}
    ).encode(),
}


@pytest.mark.parametrize("body", V2_HOSTILE.values(), ids=V2_HOSTILE.keys())
def test_hostile_tensors_decode_as_before(body: bytes) -> None:
    infer(body)
    infer(body.replace(b'"FP64"', b'"FP32"'))


BINARY_VALUES = {
    "rows": np.arange(1, 41, dtype=np.float64) / 7,
    "edges": np.array([5e-324, -0.0, 1e-300, 0.1] * 4 + [1e12, -1e12, 0.0, 1.0]),
    "nan": np.array([0.0, 1.0, np.nan, 2.0]),
    "infinity": np.array([0.0, 1.0, 2.0, -np.inf]),
    "past the bound": np.array([0.0] * 7 + [1e12 + 1]),
    "not whole rows": np.arange(6, dtype=np.float64),
}


@pytest.mark.parametrize("pad", range(8))
@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
@pytest.mark.parametrize("values", BINARY_VALUES.values(), ids=BINARY_VALUES.keys())
def test_binary_tensors_decode_as_before(values: np.ndarray, datatype: str, pad: int) -> None:
    """At every offset of the values in the body: aligned or not, read in place or copied."""
    typed = values.astype(v2.INPUT_DATATYPES[datatype])
    body, header_length = binary_body(typed, datatype, pad)
    infer(body, header_length)
    infer(body[:-1], header_length)
    infer(body[:header_length], header_length)
    infer(body[:header_length], None)
    infer(body, None)
    infer(body, len(body) + 1)


def test_aligned_float64_values_are_read_in_place() -> None:
    """No copy between the body and the model where the values are aligned in it (one offset in
    eight for float64); elsewhere an aligned copy."""
    values, in_place = BINARY_VALUES["rows"], []
    for pad in range(8):
        body, header_length = binary_body(values, "FP64", pad)
        _, batch, _ = InferDecoder(LIMITS).decode(body, header_length)
        assert batch.flags.aligned and batch.tolist() == values.reshape(-1, 4).tolist()
        in_place.append(np.shares_memory(batch, np.frombuffer(body, dtype=np.uint8)))
    assert in_place.count(True) == 1


def test_the_model_takes_a_batch_read_in_place() -> None:
    """onnxruntime reads a read-only view of the body as it reads a batch of its own."""
    model = OnnxClassifier("m", softmax_model(IDENTITY_WEIGHTS))
    values = BINARY_VALUES["edges"].reshape(-1, 4)
    view = model_batch(np.frombuffer(values.tobytes(), dtype="<f8"), len(values))
    assert not view.flags.writeable
    np.testing.assert_array_equal(bits(model.predict(view)), bits(model.predict(values.copy())))


def test_json_fp32_values_beyond_float32_are_refused_as_binary_ones() -> None:
    """A value within a bound past float32's range does not reach the model as infinity."""
    limits = Limits(max_abs_value=1e300)
    data = [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1e39, 0.5]]
    message = "input value 6 is not a finite number within ±1e+300"
    for form in (data, [v for row in data for v in row]):
        with pytest.raises(v2.BadRequest, match=re.escape(message)):
            InferDecoder(limits).decode(v2_body(form, [2, 4], "FP32"), None)
    infinite = np.array(data, dtype=np.float64).ravel()
    infinite[6] = np.inf
    binary, header_length = binary_body(infinite.astype(np.float32), "FP32")
    with pytest.raises(v2.BadRequest, match=re.escape(message)):
        InferDecoder(limits).decode(binary, header_length)


@pytest.mark.parametrize("raw", [False, True])
def test_grpc_fp32_infinity_is_refused_past_float32s_range_as_rest_does(raw: bool) -> None:
    request = messages.ModelInferRequest(model_name="sklearn")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    values = np.array([0.5, np.inf, 0.5, 0.5], dtype=np.float32)
    if raw:
        request.raw_input_contents.append(values.tobytes())
    else:
        tensor.contents.fp32_contents.extend(values.tolist())
    with pytest.raises(v2.BadRequest, match=re.escape("input value 1 is not a finite number")):
        TensorDecoder(Limits(max_abs_value=1e300)).decode(request)


# --- random bodies -------------------------------------------------------------------------------

SMALL_LIMITS = Limits(max_rows=8)
numbers = st.one_of(
    st.sampled_from([text for text in NUMBER_TEXTS if abs(float(text)) <= 1e12]),
    st.floats(min_value=-1e12, max_value=1e12).map(repr),
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
)
tokens = st.one_of(
    numbers,
    st.sampled_from(NUMBER_TEXTS + BAD_TOKENS),
    st.floats().map(json.dumps),  # NaN and Infinity become the non-JSON tokens
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
# Mostly what JSON allows between tokens; vertical tab and no-break space it does not.
spaces = st.sampled_from(["", "", " ", " ", "\n", "\t \r", "", " ", "\x0b", "\u00a0"])
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def rows_texts(draw: st.DrawFn) -> str:
    """Rows as JSON text, around FROMITER_MIN and the row limit, with the whitespace JSON allows
    and some it does not: two in three of numbers only, the others of any tokens."""
    space = draw(spaces)
    values = draw(st.sampled_from([numbers, numbers, tokens]))
    count = draw(st.integers(min_value=1, max_value=12))  # evenly, past FROMITER_MIN too
    rows = draw(st.lists(st.lists(values, min_size=3, max_size=5), min_size=count, max_size=count))
    if draw(st.integers(0, 3)):
        rows = [row[:4] + ["0"] * (4 - len(row[:4])) for row in rows]
    inner = f",{space}".join(f"[{space}" + f"{space},".join(row) + "]" for row in rows)
    return f"[{space}{inner}{space}]"


data_texts = st.one_of(rows_texts(), rows_texts(), rows_texts(), json_values.map(json.dumps))
models = st.sampled_from(['"sklearn"', '"pytorch"', '"keras"'])


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=data_texts, model=st.one_of(models, json_values.map(json.dumps)))
def test_random_droid_bodies_decode_as_before(data: str, model: str) -> None:
    """Every body decodes or is refused as before; what decodes holds Python's reading of it."""
    result = crystal(data_body(data), SMALL_LIMITS)
    event(result[0])
    if result[0] == "decoded":
        python = np.array(json.loads(data), dtype=np.float64)
        assert result[1] == (python.dtype.str, python.shape, python.tobytes())
    astromech(data_body(data, model=model))
    astromech(f'{{"model": {model}, "crystalData": {data}}}'.encode())


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=data_texts,
    more_rows=st.sampled_from([0, 0, 0, 1, -1]),
    datatype=st.sampled_from(["FP64", "FP32"]),
    flat=st.booleans(),
)
def test_random_tensors_decode_as_before(
    data: str, more_rows: int, datatype: str, flat: bool
) -> None:
    rows = data.count("[") - 1 + more_rows
    if flat:
        data = data.replace("[", "").replace("]", "").join("[]")
    tensor = f'{{"name": "input", "shape": [{rows}, 4], "datatype": "{datatype}", "data": {data}}}'
    event(infer(f'{{"inputs": [{tensor}]}}'.encode(), limits=SMALL_LIMITS)[0])
