"""Decoding into arrays (serve/decode.py, serve/fast_rows.py and the decoders that use them) gives
what the decoders gave before them, bit for bit and refusal for refusal: the reference decoders
here are the ones of before, msgspec's rows through `np.array` and binary values copied out of
the body. Every /<model> body is decoded at its own size and again as if it were large enough
for the fast path, which must take the plain ones and leave every other to msgspec."""

import json
import math
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness.bodies import documents
from serve import droid, fast_rows, v2
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
        mock.patch.object(droid, "plain_batch", lambda body, bound: None),
        mock.patch.object(droid, "plain_astromech", lambda body, bound, names: None),
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


@contextmanager
def fast_path_for_all() -> Iterator[None]:
    """Bodies of every size offered to the fast path."""
    with mock.patch.object(fast_rows, "MIN_BYTES", 0):
        yield


def on_both_paths(decode: Callable[[], Any]) -> tuple:
    """The outcome of a droid body's decode, the same as before at the body's own size and as a
    large one (the fast path offered every size)."""
    now = assert_same_as_before(decode)
    with fast_path_for_all():
        assert assert_same_as_before(decode) == now
    return now


def crystal(body: bytes, limits: Limits = LIMITS) -> tuple:
    """The outcome of a /<model> body."""
    decoder = CrystalDecoder(limits, MODELS)
    return on_both_paths(lambda: decoder.crystal_data(body))


def fast(body: bytes, limits: Limits = LIMITS) -> bool:
    """Whether the fast path takes the body, at any size."""
    with fast_path_for_all():
        return fast_rows.plain_batch(body, limits.max_abs_value) is not None


def astromech(body: bytes, limits: Limits = LIMITS) -> tuple:
    """The outcome of an /astromech body."""
    decoder = CrystalDecoder(limits, MODELS)
    return on_both_paths(lambda: decoder.astromech(body))


def fast_astromech(body: bytes, limits: Limits = LIMITS) -> bool:
    """Whether the fast path takes the /astromech body, at any size."""
    with fast_path_for_all():
        return fast_rows.plain_astromech(body, limits.max_abs_value, MODELS) is not None


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


def has_exponent(text: str) -> bool:
    """Whether JSON text holds an `e` or `E`: the fast path leaves such bodies to msgspec."""
    return "e" in text.lower()


# Rows enough for a body of zeros to take the fast path at its own size.
LARGE = 200


def test_large_bodies_of_zeros_take_the_fast_path_at_their_size() -> None:
    assert len(data_body(rows_text(LARGE, "0"))) >= fast_rows.MIN_BYTES


@pytest.mark.parametrize("text", NUMBER_TEXTS)
def test_numbers_decode_as_before_and_as_python_reads_them(text: str) -> None:
    """Accepted numbers hold the bits of Python's reading of their JSON text (integers such as
    `-0` are integers, then floats), at every row count; the others are beyond the bound. The
    fast path takes every body msgspec decodes but those of a number with an exponent."""
    for rows in (1, FROMITER_MIN, 50, LARGE):
        body = data_body(rows_text(rows, text))
        result = crystal(body)
        assert fast(body) == (result[0] == "decoded" and not has_exponent(text))
        if result[0] == "refused":
            assert not abs(float(text)) <= LIMITS.max_abs_value
            continue
        value = np.frombuffer(result[1][2], dtype=np.float64)[-3]
        assert bits(np.array([value])) == bits(np.array([float(json.loads(text))]))


@pytest.mark.parametrize("token", BAD_TOKENS)
@pytest.mark.parametrize("rows", [1, FROMITER_MIN, 50, LARGE])
def test_non_numbers_are_refused_as_before(token: str, rows: int) -> None:
    body = data_body(rows_text(rows, token))
    assert crystal(body)[0] == "refused"
    assert not fast(body)
    assert astromech(body.replace(b"{", b'{"model": "pytorch", ', 1))[0] == "refused"


# --- the fast path for large plain bodies ------------------------------------------------------

WIDE = Limits(max_rows=1000, max_abs_value=sys.float_info.max)
LONG_NUMBER_TEXTS = [
    "1.00000000000000011102230246251565404236316680908203125",  # halfway: to even
    "1.00000000000000011102230246251565404236316680908203126",
    "0.1000000000000000055511151231257827021181583404541015625",
    "4503599627370496.5", "4503599627370497.5", "-4503599627370496.5", "9007199254740993.0",
    "1e23", "8.98846567431158e307", "123456789012345678901234567890e-20",
    "2.225073858507201136057409796709131975934819546351645648e-308", "0e99999", "-0e99999",
    "1e-99999999999999999999", "0e+18446744073709551616", "1" + "0" * 308 + "e-300",
    "0." + "0" * 5000 + "1e5000", "-9223372036854775808", "-9223372036854775809",
    "12345678901234567890123", "-0.00000", "-0E-0",
]  # fmt: skip
PLAIN = ", ".join(["[0.5, -0.25, 0.001, 7]"] * 200)  # past fast_rows.MIN_BYTES as a body
PLAIN_BODY = data_body(f"[{PLAIN}]")
TOO_MANY = ", ".join([PLAIN] * 6)  # rows past LIMITS.max_rows


def keyed(key: str, data: str = f"[{PLAIN}]") -> bytes:
    return f'{{"{key}": {data}}}'.encode()


def plain_then(rows: str) -> bytes:
    """PLAIN's rows, then `rows`."""
    return data_body(f"[{PLAIN}, {rows}]")


# Large at their own size, like PLAIN_BODY; msgspec decodes each as the fast path does (and then
# refuses too many rows as it does).
PLAIN_BODIES = {
    "plain": PLAIN_BODY,
    "whitespace everywhere": b' \t\n{ \r"crystalData"\n :\t[ [ 1 ,\n2 , 3\t, 4 ] ,'
    + PLAIN.encode().replace(b" ", b"\r\n\t ")
    + b"\n]\r}\n",
    "no whitespace": PLAIN_BODY.replace(b" ", b""),
    "zeros of every sign": plain_then("[-0, -0.0, 0.0, -0.000]"),
    "values at the bound": plain_then(
        "[1000000000000, -1000000000000, 1000000000000.0, -999999999999.99999]"
    ),
    "integers": plain_then("[999999999999, -999999999999, 123456789012, -1]"),
    "subnormals": plain_then(
        f"[0.{'0' * 323}5, -0.{'0' * 323}5, 0.{'0' * 323}24703282292062328, 0.{'0' * 400}1]"
    ),
    "one row of long numbers": data_body("[[0." + "0" * 3000 + "1, 2, 3, 4]]"),
    "rows past the limit": data_body(f"[{TOO_MANY}]"),
}  # fmt: skip
NOT_PLAIN_BODIES = {
    "ragged to the right count": plain_then("[1, 2, 3], [4, 5, 6, 7, 8]"),
    "mixed depth to the right count": plain_then("[1, 2, 3, 4, 5, 6, 7], 8, [[9, 10, 11, 12]]"),
    "a row of one row": plain_then("[[1, 2, 3, 4]]"),
    "rows one deeper": data_body(f"[[{PLAIN}]]"),
    "flat values": data_body("[" + PLAIN.replace("[", "").replace("]", "") + "]"),
    "an empty row and a long one": plain_then("[], [1, 2, 3, 4, 5, 6, 7, 8]"),
    "an empty value": plain_then("[1, , 3, 4]"),
    "two numbers in one value": plain_then("[1 2, 3, 4, 5]"),
    "no rows": data_body("[]" + " " * 3000),
    "extra key": data_body(f"[{PLAIN}]", extra="1"),
    "extra key first": b'{"extra": 1, ' + PLAIN_BODY[1:],
    "duplicate key, both good": data_body(f"[{PLAIN}]", crystalData=f"[{PLAIN}]"),
    "duplicate key, bad second": data_body(f"[{PLAIN}]", crystalData="[[1, 2, 3]]"),
    "brackets in a string": data_body(f"[{PLAIN}]", note='"[[1, 2, 3, 4], [1, 2, 3, 4]]"'),
    "the rows in a string": data_body(json.dumps(f"[{PLAIN}]")),
    "key with a digit in it": keyed("crystal0Data"),
    "key with a space in it": keyed("crystal Data"),
    "key with an e after it": keyed("crystalDatae"),
    "key with a minus before it": keyed("-crystalData"),
    "escaped key": keyed("crystal\\u0044ata"),
    "key cut short": keyed("crystalDat"),
    "key in another case": keyed("crystaldata"),
    "true": plain_then("[true, 1, 2, 3]"),
    "false": plain_then("[1, false, 2, 3]"),
    "null": plain_then("[1, 2, null, 3]"),
    "NaN": plain_then("[1, 2, 3, NaN]"),
    "-Infinity": plain_then("[-Infinity, 1, 2, 3]"),
    "hex": plain_then("[0x10, 1, 2, 3]"),
    "plus sign": plain_then("[+1, 1, 2, 3]"),
    "leading zero": plain_then("[01, 1, 2, 3]"),
    "two exponents": plain_then("[1e5e5, 1, 2, 3]"),
    "two points": plain_then("[1.2.3, 1, 2, 3]"),
    "bare minus": plain_then("[-, 1, 2, 3]"),
    "past the bound": plain_then("[1000000000000.0001, 1, 2, 3]"),
    "past the bound, below": data_body(f"[[-1e13, 1, 2, 3], {PLAIN}]"),
    "integer past 64 bits": plain_then("[18446744073709551616, 1, 2, 3]"),
    "number past float64": plain_then("[1e400, 1, 2, 3]"),
    "BOM": b"\xef\xbb\xbf" + PLAIN_BODY,
    "vertical tab": PLAIN_BODY.replace(b", ", b",\x0b", 1),
    "form feed": PLAIN_BODY.replace(b", ", b",\x0c", 1),
    "no-break space": PLAIN_BODY.replace(b", ", b",\xc2\xa0", 1),
    "NUL": PLAIN_BODY.replace(b", ", b",\x00", 1),
    "trailing word": PLAIN_BODY + b" x",
    "trailing number": PLAIN_BODY + b" 5",
    "trailing NUL": PLAIN_BODY + b"\x00",
    "trailing object": PLAIN_BODY + b"{}",
    "trailing bracket": PLAIN_BODY + b"]",
    "leading number": b"5 " + PLAIN_BODY,
    "two colons": PLAIN_BODY.replace(b":", b"::"),
    "in an array": b"[" + PLAIN_BODY + b"]",
    "cut short by one": PLAIN_BODY[:-1],
    "cut short by two": PLAIN_BODY[:-2],
    "cut short in a number": PLAIN_BODY[: PLAIN_BODY.rindex(b"0.5") + 2],
    "cut in half": PLAIN_BODY[: len(PLAIN_BODY) // 2],
    "rows past the limit, one past the bound": data_body(f"[{TOO_MANY}, [1e13, 1, 2, 3]]"),
    # msgspec reads the first five significant digits of an exponent, simdjson all of them.
    "six-digit exponent, 1.0 to simdjson, 0.0 to msgspec": plain_then(
        "[0." + "0" * 99999 + "1e100000, 1, 2, 3]"
    ),
    "six-digit negative exponent, 1.0 to simdjson, past range to msgspec": plain_then(
        "[1" + "0" * 100000 + "e-100000, 1, 2, 3]"
    ),
    "six-digit exponent, -5.0 to simdjson, -0.0 to msgspec": plain_then(
        "[-0." + "0" * 99999 + "5E+100000, 1, 2, 3]"
    ),
    "six exponent digits, leading zeros": plain_then("[1e000001, 1, 2, 3]"),
    "an exponent": plain_then("[1e-3, 1, 2, 3]"),
    "an exponent in capitals": plain_then("[1, 2, 3, 4E+2]"),
    "a zero exponent": plain_then("[1, 2, 0e0, 3]"),
}  # fmt: skip


@pytest.mark.parametrize("body", PLAIN_BODIES.values(), ids=PLAIN_BODIES.keys())
def test_plain_bodies_take_the_fast_path_as_before(body: bytes) -> None:
    assert len(body) >= fast_rows.MIN_BYTES
    result = crystal(body)
    assert result[0] == "decoded" or result[1] == "PayloadTooLarge"
    assert fast(body)


@pytest.mark.parametrize("body", NOT_PLAIN_BODIES.values(), ids=NOT_PLAIN_BODIES.keys())
def test_other_bodies_are_left_to_msgspec(body: bytes) -> None:
    assert len(body) >= fast_rows.MIN_BYTES
    crystal(body)
    assert not fast(body)


def with_model(body: bytes, member: bytes = b'"model": "pytorch"', first: bool = False) -> bytes:
    """`body` with one member more, first or last (at the end of a body cut short of its `}`)."""
    if first:
        return body.replace(b"{", b"{" + member + b", ", 1)
    end = body.rfind(b"}") if b"}" in body else len(body)
    return body[:end] + b", " + member + body[end:]


@pytest.mark.parametrize("first", [False, True], ids=["model last", "model first"])
@pytest.mark.parametrize("body", PLAIN_BODIES.values(), ids=PLAIN_BODIES.keys())
def test_plain_astromech_bodies_take_the_fast_path_as_before(body: bytes, first: bool) -> None:
    result = astromech(with_model(body, first=first))
    assert result[0] == "decoded" or result[1] == "PayloadTooLarge"
    assert result[1 if result[0] == "decoded" else 4] == "pytorch"
    assert fast_astromech(with_model(body, first=first))


@pytest.mark.parametrize("body", NOT_PLAIN_BODIES.values(), ids=NOT_PLAIN_BODIES.keys())
def test_other_astromech_bodies_are_left_to_msgspec(body: bytes) -> None:
    for first in (False, True):
        astromech(with_model(body, first=first))
        assert not fast_astromech(with_model(body, first=first))


MODEL_MEMBERS = {
    "unserved model": b'"model": "keras"',
    "a served model with a space in it": b'"model": "py torch"',
    "a served model with an e more": b'"model": "pytorche"',
    "a served model with a digit more": b'"model": "pytorch1"',
    "a served model in another case": b'"model": "PyTorch"',
    "escaped model": b'"model": "pytorc\\u0068"',
    "model a number": b'"model": 5',
    "model null": b'"model": null',
    "model a list": b'"model": ["pytorch"]',
    "model an object": b'"model": {"pytorch": 1}',
    "model key with a digit in it": b'"mod3el": "pytorch"',
    "model key without its e": b'"modl": "pytorch"',
    "escaped model key": b'"mod\\u0065l": "pytorch"',
    "two models": b'"model": "pytorch", "model": "sklearn"',
    "another member too": b'"model": "pytorch", "x": 1',
}


@pytest.mark.parametrize("first", [False, True], ids=["model last", "model first"])
@pytest.mark.parametrize("member", MODEL_MEMBERS.values(), ids=MODEL_MEMBERS.keys())
def test_astromech_bodies_naming_no_served_model_plainly_are_left_to_msgspec(
    member: bytes, first: bool
) -> None:
    body = with_model(PLAIN_BODY, member, first)
    astromech(body)
    assert not fast_astromech(body)


def test_astromech_takes_either_served_model_and_no_model_is_msgspecs() -> None:
    for model in sorted(MODELS):
        body = with_model(PLAIN_BODY, f'"model": "{model}"'.encode())
        assert astromech(body)[:2] == ("decoded", model) and fast_astromech(body)
    assert astromech(PLAIN_BODY)[1:3] == ("InvalidModel", "400 Bad Request")
    assert not fast_astromech(PLAIN_BODY)


def mutants(body: bytes) -> Iterator[bytes]:
    """`body` cut short, and with a byte taken out, put in or replaced, at every place."""
    for i in range(len(body) + 1):
        yield body[:i]
        yield body[:i] + body[i + 1 :]
        for byte in b'[]{},:" 0-+eE.\t\x0bx\\':
            yield body[:i] + bytes([byte]) + body[i:]
            yield body[:i] + bytes([byte]) + body[i + 1 :]


def test_every_mutant_of_a_plain_body_decodes_as_before() -> None:
    """The fast path takes only the mutants that remain plain bodies msgspec decodes alike."""
    taken = 0
    for body in set(mutants(b'{"crystalData": [[0.5, -1, 2000, 0], [7, 8.25, 0.9, -0]]}')):
        result = crystal(body)
        taken += fast(body)
        assert not fast(body) or result[0] == "decoded"
    assert taken > 100


def test_every_mutant_of_a_plain_astromech_body_decodes_as_before() -> None:
    taken = 0
    plain = b'{"model": "sklearn", "crystalData": [[0.5, -1, 2000, 0], [7, 8.25, 0.9, -0]]}'
    for body in set(mutants(plain)):
        result = astromech(body)
        taken += fast_astromech(body)
        assert not fast_astromech(body) or result[0] == "decoded"
    assert taken > 100


@pytest.mark.parametrize("text", NUMBER_TEXTS + LONG_NUMBER_TEXTS)
def test_numbers_past_the_default_bound_decode_as_before(text: str) -> None:
    """With the widest bound, every number simdjson reads is read as msgspec reads it; numbers
    simdjson refuses are left to msgspec."""
    body = data_body(rows_text(LARGE, text))
    result = crystal(body, WIDE)
    if result[0] == "decoded":
        value = np.frombuffer(result[1][2], dtype=np.float64)[-3]
        assert bits(np.array([value])) == bits(np.array([float(json.loads(text))]))


json_numbers = st.from_regex(
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(json_numbers, min_size=4, max_size=4))
def test_random_numbers_decode_as_before(texts: list[str]) -> None:
    data = f"[[{', '.join(texts)}]]"
    result = crystal(data_body(data), WIDE)
    event("fast" if fast(data_body(data), WIDE) else "msgspec")
    if result[0] == "decoded":
        python = np.array([[float(json.loads(text)) for text in texts]])
        assert result[1] == (python.dtype.str, python.shape, python.tobytes())


def test_a_plain_large_body_is_not_decoded_by_msgspec() -> None:
    """Realistic droid bodies from fast_rows.MIN_BYTES on take the fast path; smaller do not."""
    decoder = CrystalDecoder(LIMITS, MODELS)
    for rows in (4, 16, 64, 1000):
        body = json.dumps(documents("sklearn", rows)[0]).encode()
        with as_before():
            expected = decoder.crystal_data(body)
        with mock.patch.object(decoder, "_crystal", wraps=decoder._crystal) as msgspec_decoder:
            batch = decoder.crystal_data(body)
        assert msgspec_decoder.decode.called == (len(body) < fast_rows.MIN_BYTES)
        assert (batch.dtype, batch.shape) == (np.float64, (rows, 4))
        np.testing.assert_array_equal(bits(batch), bits(expected))
    assert msgspec_decoder.decode.call_count == 0


def test_the_fast_path_is_taken_again_after_simdjson_refuses_a_body() -> None:
    """No simdjson proxy outlives a refusal: the thread's parser reads the next body."""
    for text in ["01", "1 2", "1e400", "1" + "0" * 30, "-9223372036854775809", "1e5e5"]:
        assert not fast(data_body(rows_text(LARGE, text)), WIDE)
        assert fast(PLAIN_BODY)


def test_threads_decode_at_once() -> None:
    """Each thread parses with its own parser, even when threads take turns at every step."""
    decoder = CrystalDecoder(LIMITS, MODELS)
    bodies = [json.dumps({"crystalData": [[i / 7, -i, i, 0.5]] * 300}).encode() for i in range(4)]
    with as_before():
        expected = [decoder.crystal_data(body).tobytes() for body in bodies]
    failures: list[int] = []

    def decode(i: int) -> None:
        for round_ in range(200):
            j = (i + round_) % len(bodies)
            if decoder.crystal_data(bodies[j]).tobytes() != expected[j]:
                failures.append(j)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with mock.patch.object(decoder, "_crystal", wraps=decoder._crystal) as msgspec_decoder:
            threads = [threading.Thread(target=decode, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []
    msgspec_decoder.decode.assert_not_called()


def test_a_body_past_the_fast_paths_size_is_left_to_msgspec() -> None:
    """A parser takes some 13 times the size of the body it reads and keeps it: bodies past
    fast_rows.MAX_BYTES, up to the largest a request may have, are msgspec's, as before."""
    limit = Limits().max_body_bytes
    row = "[0.123456789, -0.25, 0.001, 7], "
    body = data_body(f"[{row * ((limit - 100) // len(row))}[1, 2, 3, 4]]")
    assert fast_rows.MAX_BYTES < len(body) <= limit
    assert crystal(body, Limits(max_rows=10**6))[0] == "decoded"
    assert crystal(body, Limits())[1] == "PayloadTooLarge"
    assert not fast(body, Limits())
    largest = data_body(f"[{row * ((fast_rows.MAX_BYTES - 100) // len(row))}[1, 2, 3, 4]]")
    assert len(largest) <= fast_rows.MAX_BYTES and fast(largest, Limits(max_rows=10**6))


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
    too_many_rows = result[:2] == ("refused", "PayloadTooLarge")
    taken = (result[0] == "decoded" or too_many_rows) and not has_exponent(data)
    assert fast(data_body(data), SMALL_LIMITS) == taken
    if result[0] == "decoded":
        python = np.array(json.loads(data), dtype=np.float64)
        assert result[1] == (python.dtype.str, python.shape, python.tobytes())
    for body in (data_body(data, model=model), f'{{"model": {model}, "crystalData": {data}}}'):
        result = astromech(body.encode() if isinstance(body, str) else body, SMALL_LIMITS)
        taken = fast_astromech(body.encode() if isinstance(body, str) else body, SMALL_LIMITS)
        decodes = result[0] == "decoded" or result[:2] == ("refused", "PayloadTooLarge")
        assert taken == (decodes and not has_exponent(data))


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
