"""Large plain /<model> and /astromech bodies read straight into their batch, without a Python
float per value.

msgspec decodes `{"crystalData": [[...], ...]}` into a Python float per value, which
serve/decode.py then copies into the batch: at 1,000 rows that is nearly all the time a request
spends before the model. simdjson parses the same body into float64 values in C, in less than
half the time, but proves less: `as_buffer` flattens nested arrays, so ragged rows or rows at
other depths would pass unnoticed, and it knows no bound. So a body is read here only when it is
proved to be one msgspec accepts, into the values msgspec gives; any other body (None) is left
to msgspec, which decodes it or refuses it with its own message, naming the JSON path at fault.

The proof, in this order:
- no number has an exponent (`e` or `E`; see below);
- the body without JSON's whitespace and the characters of numbers (`0-9 + - . e E`), its
  skeleton, is exactly `{"crystalData":[` `[,,,]` `,[,,,]` (once per further row) `]}`: one key
  and no other string, no escape, no `true`, `false` or `null`, no BOM nor any other byte, every
  row four scalars at the one right depth. An /astromech body has one member more, before or
  after the rows, whose skeleton is that of `"model":"<name>"` for a served model;
- simdjson parses it and finds the key `crystalData` (not `crystal0Data`, say, whose skeleton is
  the same), so it is valid JSON and each scalar one valid JSON number (simdjson refuses numbers
  past float64's range and integers past 64 bits: those are left to msgspec); an /astromech
  body's `model` is exactly a served model's name (a space inside it, say, leaves the skeleton
  as it was: an unserved model is msgspec's to refuse);
- every value lies within ±bound, as msgspec's `ge` and `le` check the float64 it decodes.
Both parsers read every such number to the same float64, bit for bit: both round correctly, and
both read the integer `-0` as 0.0 (tests/serve/test_decode.py holds them to it). Exponents are
where they part: msgspec reads only an exponent's first five significant digits (`0.` and 99,999
zeros, then `1e100000`, is 0.0 to it, 1.0 to simdjson). A body whose numbers have an exponent is
left to msgspec: telling the long exponents from the others cost as much as msgspec's decoding
saved, and the droids' measurements are written without one.

A simdjson parser is not thread-safe, and it cannot parse again while a proxy of its last
document lives: each thread has its own, and no proxy outlives `_parsed`, error or not. A parser
takes about 13 times the size of the body it parses, and keeps it for the next: bodies past
MAX_BYTES (some 25,000 rows) are left to msgspec, whose Python floats take about 4 times their
size, so a worker's memory under the largest bodies is what it was, and each parser keeps at
most some 13 MiB.
"""

import threading
from functools import cache

import msgspec
import numpy as np
import simdjson

from serve.contract import N_FEATURES

# Below this size msgspec is as quick: its cost is per value, this path's about 5 µs a body, then
# per byte. Both paths in one run, at 2 KiB: 24 rows of 17-digit values 9.5 against 9.5 µs, 48
# rows of six-decimal ones 15 against 11 µs; those at 1,000 rows (41 KB) 294 against 119 µs.
MIN_BYTES = 2048
MAX_BYTES = 1024 * 1024
NUMBERS_AND_SPACE = b"0123456789+-.eE \t\n\r"
ROWS_KEY = b'"crystalData":'
FIRST_ROW, NEXT_ROW, END = b"[[,,,]", b",[,,,]", b"]"
PLAIN_SHAPE = frozenset({(b"{" + ROWS_KEY, b"}")})  # what a /<model> body holds around its rows
# What pysimdjson raises for a document it cannot read as float64 values.
PARSE_ERRORS = (ValueError, TypeError, KeyError, RuntimeError, MemoryError)

_local = threading.local()


def plain_batch(body: bytes, bound: float) -> np.ndarray | None:
    """The [rows, N_FEATURES] float64 batch msgspec decodes from a /<model> `body`, or None when
    the body is outside MIN_BYTES to MAX_BYTES or not proved plain and within ±bound."""
    rows = _rows(body, PLAIN_SHAPE)
    if rows is None:
        return None
    parsed = _parsed(body, rows, bound, with_model=False)
    return None if parsed is None else parsed[1]


def plain_astromech(
    body: bytes, bound: float, model_names: frozenset[str]
) -> tuple[str, np.ndarray] | None:
    """The served model an /astromech `body` names and the batch msgspec decodes from it, or None
    as for plain_batch, or when the model is not exactly a served model's name."""
    rows = _rows(body, _astromech_shapes(model_names))
    if rows is None:
        return None
    parsed = _parsed(body, rows, bound, with_model=True)
    if parsed is None or parsed[0] not in model_names:
        return None
    return parsed


@cache
def _astromech_shapes(model_names: frozenset[str]) -> frozenset[tuple[bytes, bytes]]:
    """What an /astromech body's skeleton holds before and after its rows: the `model` member of
    a served model after the rows, or before them."""
    members = [_skeleton(b'"model":' + msgspec.json.encode(name)) for name in model_names]
    after = {(b"{" + ROWS_KEY, b"," + member + b"}") for member in members}
    before = {(b"{" + member + b"," + ROWS_KEY, b"}") for member in members}
    return frozenset(after | before)


def _skeleton(text: bytes) -> bytes:
    return text.translate(None, NUMBERS_AND_SPACE)


def _rows(body: bytes, around: frozenset[tuple[bytes, bytes]]) -> int | None:
    """The number of rows when the body, of MIN_BYTES to MAX_BYTES, has a skeleton of rows of four
    scalars with one of the (before, after) pairs of `around` on either side, else None."""
    if not MIN_BYTES <= len(body) <= MAX_BYTES or _has_exponent(body):
        return None
    skeleton = _skeleton(body)
    start, end = skeleton.find(b"["), skeleton.rfind(b"]") + 1
    if start < 0 or (skeleton[:start], skeleton[end:]) not in around:
        return None
    further = (end - start - len(FIRST_ROW) - len(END)) // len(NEXT_ROW)
    if skeleton[start:end] != FIRST_ROW + NEXT_ROW * further + END:
        return None
    return further + 1


def _has_exponent(body: bytes) -> bool:
    """Whether a number in the body's rows has an exponent: the rows run from the first `[` to the
    last `]`, and a key or a model's name holds no bracket. Two scans in C."""
    start, end = body.find(b"["), body.rfind(b"]")
    return body.find(b"e", start, end) >= 0 or body.find(b"E", start, end) >= 0


def _parsed(
    body: bytes, rows: int, bound: float, with_model: bool
) -> tuple[str | None, np.ndarray] | None:
    """The body's `model` (with_model) and its `rows` rows of values, or None when simdjson
    refuses the body or finds another count of values or a value past ±bound."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        document = parser.parse(body)
        try:
            model = document["model"] if with_model else None
            buffer = document["crystalData"].as_buffer(of_type="d")
        finally:
            del document  # no proxy may outlive the call: the parser is the next call's
    except PARSE_ERRORS:
        return None
    values = np.frombuffer(buffer, dtype=np.float64)
    if values.size != rows * N_FEATURES or not (values.min() >= -bound and values.max() <= bound):
        return None
    return model, values.reshape(rows, N_FEATURES)
