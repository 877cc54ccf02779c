"""Large plain /<model> bodies read straight into their batch, without a Python float per value.

msgspec decodes `{"crystalData": [[...], ...]}` into a Python float per value, which
serve/decode.py then copies into the batch: at 1,000 rows that is nearly all the time a request
spends before the model. simdjson parses the same body into float64 values in C, in less than
half the time, but proves less: `as_buffer` flattens nested arrays, so ragged rows or rows at
other depths would pass unnoticed, and it knows no bound. So a body is read here only when it is
proved to be one msgspec accepts, into the values msgspec gives; any other body (None) is left
to msgspec, which decodes it or refuses it with its own message, naming the JSON path at fault.

The proof, in this order:
- the body without JSON's whitespace and the characters of numbers (`0-9 + - . e E`) is exactly
  `{"crystalData":[` `[,,,]` `,[,,,]` (once per further row) `]}`: one key and no other string,
  no escape, no `true`, `false` or `null`, no BOM nor any other byte, every row four scalars at
  the one right depth;
- simdjson parses it and finds the key `crystalData` (not `crystal0Data`, say, whose skeleton is
  the same), so it is valid JSON and each scalar one valid JSON number (simdjson refuses numbers
  past float64's range and integers past 64 bits: those are left to msgspec);
- every value lies within ±bound, as msgspec's `ge` and `le` check the float64 it decodes.
Both parsers read every such number to the same float64, bit for bit: both round correctly, and
both read the integer `-0` as 0.0 (tests/serve/test_decode.py holds them to it).

A simdjson parser is not thread-safe, and it cannot parse again while a proxy of its last
document lives: each thread has its own, and no proxy outlives the expression in `_values`,
error or not. A parser takes about 13 times the size of the body it parses, and keeps it for
the next: bodies past MAX_BYTES (some 25,000 rows) are left to msgspec, whose Python floats
take about 4 times their size, so a worker's memory under the largest bodies is what it was,
and each parser keeps at most some 13 MiB.
"""

import threading

import numpy as np
import simdjson

from serve.contract import N_FEATURES

# Below this size msgspec is as quick: its cost is per value, this path's about 5 µs a body, then
# per byte. Both paths in one run, at 2 KiB: 24 rows of 17-digit values 9.5 against 9.5 µs, 48
# rows of six-decimal ones 15 against 11 µs; those at 1,000 rows (41 KB) 294 against 119 µs.
MIN_BYTES = 2048
MAX_BYTES = 1024 * 1024
NUMBERS_AND_SPACE = b"0123456789+-.eE \t\n\r"
FIRST_ROW, NEXT_ROW = b'{"crystalData":[[,,,]', b",[,,,]"
END = b"]}"
# What pysimdjson raises for a document it cannot read as float64 values.
PARSE_ERRORS = (ValueError, TypeError, KeyError, RuntimeError, MemoryError)

_local = threading.local()


def plain_batch(body: bytes, bound: float) -> np.ndarray | None:
    """The [rows, N_FEATURES] float64 batch msgspec decodes from `body`, or None when the body is
    outside MIN_BYTES to MAX_BYTES or not proved plain and within ±bound."""
    if not MIN_BYTES <= len(body) <= MAX_BYTES:
        return None
    skeleton = body.translate(None, NUMBERS_AND_SPACE)
    further = (len(skeleton) - len(FIRST_ROW) - len(END)) // len(NEXT_ROW)
    if skeleton != FIRST_ROW + NEXT_ROW * further + END:
        return None
    values = _values(body)
    rows = further + 1
    if values is None or values.size != rows * N_FEATURES:
        return None
    if not (values.min() >= -bound and values.max() <= bound):
        return None
    return values.reshape(rows, N_FEATURES)


def _values(body: bytes) -> np.ndarray | None:
    """The body's numbers in order, or None when simdjson refuses the body."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        buffer = parser.parse(body)["crystalData"].as_buffer(of_type="d")
    except PARSE_ERRORS:
        return None
    return np.frombuffer(buffer, dtype=np.float64)
