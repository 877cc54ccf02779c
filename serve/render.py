"""The answers' values straight from their arrays: JSON text without a Python float per value,
and the binary tensor data extension's bytes without a copy where one costs.

orjson writes a float64 array's values natively with the same shortest round-trip digits as
msgspec writes a Python float; the one difference is the exponent's sign, `1e+16` where msgspec
writes `1e16`, so `e+` becomes `e` (no other text in a number array holds it). NaN and infinities
are `null` in both. tests/serve/test_render.py holds the two to the same bytes.
"""

from collections.abc import Sequence

import msgspec
import numpy as np
import orjson

# Below this magnitude both write a double without an exponent's sign, so the replace, as slow as
# the encoding itself, is skipped (orjson and msgspec switch to `1e16` form at 1e16).
POSITIONAL = 1e15
# Sizes (values) from which writing from the array beats Python floats, measured in one run.
FLOAT_ARRAY_MIN = 256
# Rows from which ScoreRows beats a msgspec struct per row, and labels up to which it does: it
# costs some 10 µs whatever the size, and a pass over the whole text per label. In one run, 3
# labels: level at 64 to 80 rows, 0.56 of the structs' time at 1,000 rows; 8 labels: level at
# 100 rows, 0.91 at 1,000; 10 labels: 1.22 at 1,000.
SCORE_ROWS_MIN = 80
SCORE_ROWS_MAX_LABELS = 8
# Bytes found neither in a value's text nor in a label's JSON text (control characters, which
# msgspec escapes): ScoreRows stands one per label where that label's key goes.
MARKERS = bytes(range(SCORE_ROWS_MAX_LABELS))
# Bytes from which a binary output is joined from its array's buffer; in one run, joined after a
# 200-byte header: 1 row of 3 float64 0.17 µs copied against 0.34 µs viewed, 1,000 rows 1.8
# against 1.4 µs, 100,000 rows 1,957 against 184 µs.
BINARY_VIEW_MIN = 65536


def json_floats(values: np.ndarray) -> list[float] | msgspec.Raw:
    """What msgspec is handed for `values` in C order: their text from the array, or Python floats
    below FLOAT_ARRAY_MIN values, where numpy's fixed cost is more than the floats'."""
    if values.size < FLOAT_ARRAY_MIN:
        return values.ravel().tolist()
    return msgspec.Raw(float_array(values))


def float_array(values: np.ndarray) -> bytes:
    """`[v, ...]` for every value in C order, widened to float64 exactly as `tolist()` widens."""
    flat = np.ascontiguousarray(values, dtype=np.float64).ravel()
    text = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)
    if flat.size and not (flat.min() > -POSITIONAL and flat.max() < POSITIONAL):
        return text.replace(b"e+", b"e")  # NaN fails both tests: replaced too, to be safe
    return text


class ScoreRows:
    """`[{label: p, ...}, ...]` for a 2-D array, one object per row, keys in the labels' order.

    float_array writes every value in one call, its text final (`e+` fixed, NaN and infinities
    `null`) and without a comma inside a value; the comma before each value then becomes the
    marker of the value's column, and one `bytes.replace` per label writes that label's key in
    its marker's place. No key holds a marker, so no later pass touches one: a pass in C per
    label, where a bytes object per value cost more than the encoding. Up to
    SCORE_ROWS_MAX_LABELS labels."""

    def __init__(self, labels: Sequence[str]):
        if len(labels) > SCORE_ROWS_MAX_LABELS:
            raise ValueError(f"{len(labels)} labels, more than {SCORE_ROWS_MAX_LABELS}")
        keys = [msgspec.json.encode(label) + b":" for label in labels]
        self._width = len(keys)
        # The first label's key also closes the row before it; the first row's opens the list.
        self._keys = [
            (MARKERS[column : column + 1], (b"," if column else b"},{") + key)
            for column, key in enumerate(keys)
        ]
        self._first = b"[{" + keys[0] if keys else b""

    def __call__(self, probabilities: np.ndarray) -> bytes:
        rows, columns = probabilities.shape
        if columns != self._width:
            raise ValueError(f"{columns} score columns for {self._width} labels")
        if not rows:
            return b"[]"
        if not columns:
            return b"[" + b",".join([b"{}"] * rows) + b"]"
        text = bytearray(float_array(probabilities))
        marked = np.frombuffer(text, dtype=np.uint8)
        # The comma before value i (i >= 1) is commas[i - 1]; value i is in column i % columns.
        commas = np.flatnonzero(marked == ord(","))
        for start in range(columns):
            marked[commas[start::columns]] = MARKERS[(start + 1) % columns]
        for marker, key in self._keys:
            text = text.replace(marker, key)
        return b"".join([self._first, memoryview(text)[1:-1], b"}]"])


def binary_values(values: np.ndarray) -> bytes | memoryview:
    """The bytes of `values` in C order, as `tobytes()` gives them, for the binary tensor data
    extension. From BINARY_VIEW_MIN bytes they are read from the array itself: the answer is
    joined from it without a copy of its own; below it the copy costs less than the view."""
    if values.nbytes < BINARY_VIEW_MIN or not values.flags.c_contiguous:
        return values.tobytes()
    return values.data.cast("B")
