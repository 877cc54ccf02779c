"""The answers written straight from the arrays (serve/render.py) hold the same bytes as the
renderers that encoded a Python float per value, which stay here as the reference."""

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pytest

from serve import render
from serve.classifier import Classifier
from serve.droid import AnswerRenderer
from serve.render import (
    BINARY_VIEW_MIN,
    FLOAT_ARRAY_MIN,
    POSITIONAL,
    SCORE_ROWS_MAX_LABELS,
    SCORE_ROWS_MIN,
    ScoreRows,
    binary_values,
    float_array,
    json_floats,
)
from serve.v2 import (
    DATATYPES,
    OUTPUT_NAME,
    OutputRequest,
    bytes_tensor,
    render_answer,
    top_classes,
)
from support.fakes import LABELS, SKLEARN_ROWS, FakeClassifier

_encoder = msgspec.json.Encoder()
RNG_SEED = 23

EDGES = [
    5e-324,
    -5e-324,
    1e-300,
    2.2250738585072014e-308,
    2.225073858507201e-308,
    0.1,
    0.30000000000000004,
    1.0,
    0.0,
    -0.0,
    0.5,
    1 / 3,
    1 - 2**-53,
    1e-7,
    1e-6,
    1e-5,
    1e15,
    1e16,
    1e17,
    1e21,
    1e22,
    1e23,
    9007199254740993.0,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    1.3424273700413213e-08,
]


def reference_scores(labels: Sequence[str]) -> Any:
    """The droids' renderer before serve/render.py: a msgspec struct per row of Python floats."""
    fields = [f"p{i}" for i in range(len(labels))]
    scores = msgspec.defstruct("Scores", fields, rename=dict(zip(fields, labels, strict=True)))

    def render(probabilities: np.ndarray, prediction: list[str]) -> bytes:
        rows = [scores(*row) for row in probabilities.tolist()]
        return _encoder.encode({"prediction": prediction, "scores": rows})

    return render


def reference_render_answer(
    name: str,
    model: Classifier,
    request_id: str | None,
    probabilities: np.ndarray,
    predicted: list[str],
    classes: Sequence[str],
    outputs: tuple[OutputRequest, ...],
) -> tuple[bytes, int | None]:
    """serve/v2.py's render_answer before serve/render.py: probabilities through `tolist()`."""
    answer: dict[str, Any] = {"model_name": name, "model_version": model.version}
    if request_id is not None:
        answer["id"] = request_id
    answer["outputs"], binaries = [], []
    for output in outputs:
        if output.class_count:
            strings = top_classes(probabilities, classes, output.class_count)
            count = len(strings) // len(probabilities)
            datatype, shape, data = "BYTES", [len(probabilities), count], strings
            raw = bytes_tensor(strings) if output.binary else None
        elif output.name == OUTPUT_NAME:
            datatype, shape = DATATYPES[model.output_dtype], list(probabilities.shape)
            data = probabilities.ravel().tolist()
            values = probabilities.astype(model.output_dtype, copy=False)
            raw = values.tobytes() if output.binary else None
        else:
            datatype, shape, data = "BYTES", [len(predicted)], predicted
            raw = bytes_tensor(predicted) if output.binary else None
        tensor: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": shape}
        if raw is None:
            tensor["data"] = data
        else:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binaries.append(raw)
        answer["outputs"].append(tensor)
    header = _encoder.encode(answer)
    if not binaries:
        return header, None
    return b"".join([header, *binaries]), len(header)


def finite_bit_patterns(rng: np.random.Generator, count: int) -> np.ndarray:
    values = rng.integers(0, 2**64, size=4 * count, dtype=np.uint64).view(np.float64)
    return values[np.isfinite(values)][:count]


def value_sets(width: int) -> dict[str, np.ndarray]:
    """Named float64 arrays of `width` columns: every class of value the renderers may meet."""
    rng = np.random.default_rng(RNG_SEED)
    logits = rng.normal(size=(1000, width)) * 20
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax = exp / exp.sum(axis=1, keepdims=True)
    edges = np.array(EDGES + [np.nextafter(x, np.inf) for x in EDGES if abs(x) < 1e308])
    powers = np.array([10.0**k for k in range(-323, 309)] + [2.0**k for k in range(-1074, 1024)])
    mantissas = np.ldexp(rng.random(3000) + 1, rng.integers(-1074, 1024, size=3000))
    subnormals = rng.integers(0, 2**52, size=3000, dtype=np.uint64).view(np.float64)
    float32_bits = rng.integers(0, 2**32, size=12000, dtype=np.uint64).astype(np.uint32)
    float32s = float32_bits.view(np.float32)
    sets = {
        "uniform": rng.random((1000, width)),
        "softmax": softmax,
        "softmax float32": softmax.astype(np.float32),
        "one row": softmax[:1],
        "no rows": softmax[:0],
        "bit patterns": finite_bit_patterns(rng, 3000 * width),
        "edges": np.concatenate([edges, -edges]),
        "powers": np.concatenate([powers, -powers]),
        "mantissas at every exponent": mantissas,
        "subnormals": np.concatenate([subnormals, -subnormals]),
        "float32 bit patterns": float32s[np.isfinite(float32s)],
        "non-finite": np.array([np.nan, np.inf, -np.inf, 1.0]),
        "non-finite among large": np.concatenate([[np.nan, np.inf, -np.inf], powers[-600:]]),
        "large after nan": np.concatenate([[np.nan], rng.random(3000) * 1e20]),
    }
    return {name: fill(values, width) for name, values in sets.items()}


def fill(values: np.ndarray, width: int) -> np.ndarray:
    """`values` as rows of `width`, repeated to at least SCORE_ROWS_MIN rows and FLOAT_ARRAY_MIN
    values when they are more than one row, so that the paths from the array are taken."""
    if values.ndim == 2:
        return values
    rows = -(-len(values) // width)
    if rows > 1:
        rows = max(rows, SCORE_ROWS_MIN, -(-FLOAT_ARRAY_MIN // width))
    return np.resize(values, rows * width).reshape(rows, width)


WIDTHS = {
    "the served labels": LABELS,
    "one label": ("only",),
    "two labels": ("no", "yes"),
    "labels beyond ascii": ("ünï©ødé 🤖", "<b>&amp;</b>", "it's / so", "\u2028", " "),
    # As many as ScoreRows writes, each like a piece of the text it writes them into.
    "labels like the text": ("null", "e+", "1e+16", ",", "a,null,b", "],[", "}]", ":"),
}
# Labels the struct refuses; ScoreRows escapes them, "\x00" and "\x01" among them.
ESCAPED_LABELS = ('qu"ote', "back\\slash", "tab\there", "\x01", "", "\x00", 'e+",null,"')


@pytest.mark.parametrize("labels", WIDTHS.values(), ids=WIDTHS.keys())
def test_droid_answer_matches_the_reference_byte_for_byte(labels: tuple[str, ...]) -> None:
    render, reference = AnswerRenderer(labels), reference_scores(labels)
    for name, values in value_sets(len(labels)).items():
        prediction = [labels[i % len(labels)] for i in range(len(values))]
        assert render(values, prediction) == reference(values, prediction), name


def test_labels_needing_escapes_are_refused_as_today_and_escaped_from_the_array() -> None:
    """The struct refuses them as renamed fields at start-up, as it did; ScoreRows escapes them."""
    with pytest.raises(ValueError, match="Renamed field names"):
        AnswerRenderer(ESCAPED_LABELS)
    values = value_sets(len(ESCAPED_LABELS))["uniform"]
    scores = msgspec.json.decode(ScoreRows(ESCAPED_LABELS)(values))
    assert [list(row) for row in scores] == [list(ESCAPED_LABELS)] * len(values)
    assert [list(row.values()) for row in scores] == values.tolist()


def test_both_paths_are_taken() -> None:
    sets = value_sets(len(LABELS))
    assert len(sets["one row"]) < SCORE_ROWS_MIN <= len(sets["edges"])
    assert sets["one row"].size < FLOAT_ARRAY_MIN <= sets["edges"].size
    assert isinstance(json_floats(sets["one row"]), list)
    assert isinstance(json_floats(sets["edges"]), msgspec.Raw)
    assert sets["powers"].max() >= POSITIONAL and sets["uniform"].max() < POSITIONAL


OUTPUT_CHOICES = {
    "probabilities": (OutputRequest("probabilities", False),),
    "both": (OutputRequest("probabilities", False), OutputRequest("label", False)),
    "probabilities binary, label json": (
        OutputRequest("probabilities", True),
        OutputRequest("label", False),
    ),
    "classification and probabilities": (
        OutputRequest("probabilities", False, 2),
        OutputRequest("probabilities", False),
    ),
}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("output_dtype", [np.float64, np.float32])
@pytest.mark.parametrize("outputs", OUTPUT_CHOICES.values(), ids=OUTPUT_CHOICES.keys())
def test_v2_answer_matches_the_reference_byte_for_byte(
    output_dtype: type, outputs: tuple[OutputRequest, ...]
) -> None:
    model = FakeClassifier(SKLEARN_ROWS, output_dtype)
    for name, values in value_sets(len(LABELS)).items():
        if any(output.class_count for output in outputs) and not np.isfinite(values).all():
            continue
        if not len(values) and any(output.class_count for output in outputs):
            continue
        probabilities = values.astype(np.float64)
        predicted = [LABELS[i % len(LABELS)] for i in range(len(values))]
        for request_id in (None, "7"):
            given = (name, model, request_id, probabilities, predicted, LABELS, outputs)
            assert render_answer(*given) == reference_render_answer(*given), name


def test_float_array_is_msgspecs_text_of_the_python_floats() -> None:
    for name, values in value_sets(1).items():
        assert float_array(values) == _encoder.encode(values.ravel().tolist()), name


@pytest.mark.parametrize("labels", WIDTHS.values(), ids=WIDTHS.keys())
def test_score_rows_are_the_structs_text_at_every_size(labels: tuple[str, ...]) -> None:
    reference = reference_scores(labels)
    for name, values in value_sets(len(labels)).items():
        expected = reference(values, [])[len(b'{"prediction":[],"scores":') : -1]
        assert ScoreRows(labels)(values) == expected, name


def test_score_rows_refuse_a_width_other_than_the_labels() -> None:
    with pytest.raises(ValueError, match="2 score columns for 3 labels"):
        ScoreRows(LABELS)(np.zeros((1, 2)))


def reference_rows(labels: Sequence[str], values: np.ndarray) -> bytes:
    """`[{label: p}, ...]` through a dict of Python floats per row: any label, escaped or not."""
    return _encoder.encode([dict(zip(labels, row, strict=True)) for row in values.tolist()])


SIZES = (1, 2, SCORE_ROWS_MIN - 1, SCORE_ROWS_MIN, 1000, 10_000)
SCORE_ROWS_LABELS = {**WIDTHS, "labels needing escapes": ESCAPED_LABELS}


def sized_values(rows: int, width: int) -> dict[str, np.ndarray]:
    """`rows` of `width` values: softmax scores as the models give them, in float64 and float32,
    and the edge values (large exponents, subnormals, negatives) with NaN and infinities."""
    rng = np.random.default_rng(RNG_SEED)
    logits = rng.normal(size=(rows, width)) * 20
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax = exp / exp.sum(axis=1, keepdims=True)
    edges = np.array([*EDGES, *(-x for x in EDGES), np.nan, np.inf, -np.inf])
    return {
        "softmax": softmax,
        "softmax float32": softmax.astype(np.float32),
        "edges": rng.choice(edges, size=(rows, width)),
    }


@pytest.mark.parametrize("labels", WIDTHS.values(), ids=WIDTHS.keys())
def test_droid_answer_matches_the_reference_at_every_size(labels: tuple[str, ...]) -> None:
    """On either side of SCORE_ROWS_MIN and far above it, at every width ScoreRows writes."""
    render_answer, reference = AnswerRenderer(labels), reference_scores(labels)
    for rows in SIZES:
        prediction = [labels[i % len(labels)] for i in range(rows)]
        for name, values in sized_values(rows, len(labels)).items():
            assert render_answer(values, prediction) == reference(values, prediction), (rows, name)


@pytest.mark.parametrize("labels", SCORE_ROWS_LABELS.values(), ids=SCORE_ROWS_LABELS.keys())
def test_score_rows_match_the_reference_at_every_size(labels: tuple[str, ...]) -> None:
    score_rows = ScoreRows(labels)
    for rows in SIZES:
        for name, values in sized_values(rows, len(labels)).items():
            assert score_rows(values) == reference_rows(labels, values), (rows, name)


def test_the_droid_answer_is_written_from_the_array_from_score_rows_min_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Below SCORE_ROWS_MIN rows a struct per row; from it ScoreRows, its values written by
    float_array in one call: neither path stands in for the other unseen."""
    rows_given: list[int] = []
    shapes_written: list[tuple[int, ...]] = []
    score_rows = ScoreRows.__call__

    def counted_score_rows(self: ScoreRows, probabilities: np.ndarray) -> bytes:
        rows_given.append(len(probabilities))
        return score_rows(self, probabilities)

    def counted_float_array(values: np.ndarray) -> bytes:
        shapes_written.append(values.shape)
        return float_array(values)

    monkeypatch.setattr(ScoreRows, "__call__", counted_score_rows)
    monkeypatch.setattr(render, "float_array", counted_float_array)
    render_answer, reference = AnswerRenderer(LABELS), reference_scores(LABELS)
    for rows in (1, SCORE_ROWS_MIN - 1, SCORE_ROWS_MIN, 1000):
        values = sized_values(rows, len(LABELS))["softmax"]
        prediction = [LABELS[0]] * rows
        assert render_answer(values, prediction) == reference(values, prediction)
    assert rows_given == [SCORE_ROWS_MIN, 1000]
    assert shapes_written == [(SCORE_ROWS_MIN, 3), (1000, 3)]


def test_more_labels_than_score_rows_writes_are_rendered_by_the_struct() -> None:
    labels = tuple(f"class {i}" for i in range(SCORE_ROWS_MAX_LABELS + 1))
    with pytest.raises(ValueError, match=f"{len(labels)} labels, more than {len(labels) - 1}"):
        ScoreRows(labels)
    render_answer, reference = AnswerRenderer(labels), reference_scores(labels)
    for name, values in sized_values(1000, len(labels)).items():
        prediction = [labels[i % len(labels)] for i in range(len(values))]
        assert render_answer(values, prediction) == reference(values, prediction), name


@pytest.mark.parametrize("labels", WIDTHS.values(), ids=WIDTHS.keys())
def test_non_finite_scores_are_null_as_today(labels: tuple[str, ...]) -> None:
    """The classifier refuses them before an answer is rendered; were one to pass, it would be
    `null`, as msgspec writes a NaN or an infinity, at its own place in the rows."""
    width = len(labels)
    values = sized_values(1000, width)["softmax"]
    places = {(0, 0): np.nan, (0, width - 1): np.inf, (500, width // 2): -np.inf, (999, 0): np.nan}
    for place, value in places.items():
        values[place] = value
    prediction = [labels[i % width] for i in range(len(values))]
    answer = AnswerRenderer(labels)(values, prediction)
    assert answer == reference_scores(labels)(values, prediction)
    rows = msgspec.json.decode(answer)["scores"]
    nulls = {
        (row, labels.index(label))
        for row, scores in enumerate(rows)
        for label, score in scores.items()
        if score is None
    }
    assert nulls == set(places)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_binary_values_are_the_arrays_bytes_read_in_place_when_large(dtype: type) -> None:
    """The bytes `tobytes()` gives at every size; from BINARY_VIEW_MIN bytes on, read from the
    array itself; a column slice (not C-contiguous) is copied in C order."""
    rng = np.random.default_rng(RNG_SEED)
    row_bytes = 3 * np.dtype(dtype).itemsize
    for rows in (0, 1, BINARY_VIEW_MIN // row_bytes, BINARY_VIEW_MIN // row_bytes + 1, 10_000):
        values = rng.random((rows, 3)).astype(dtype)
        raw = binary_values(values)
        assert bytes(raw) == values.tobytes() and len(raw) == values.nbytes
        in_place = np.shares_memory(np.frombuffer(raw, dtype=np.uint8), values)
        assert in_place == (values.nbytes >= BINARY_VIEW_MIN)
    columns = rng.random((10_000, 4)).astype(dtype)[:, :3]
    assert binary_values(columns) == columns.tobytes()


@pytest.mark.parametrize("output_dtype", [np.float64, np.float32])
def test_a_large_binary_answer_matches_the_reference_byte_for_byte(output_dtype: type) -> None:
    model = FakeClassifier(SKLEARN_ROWS, output_dtype)
    probabilities = value_sets(len(LABELS))["softmax"].repeat(10, axis=0)
    assert probabilities.astype(output_dtype).nbytes >= BINARY_VIEW_MIN
    predicted = [LABELS[i % len(LABELS)] for i in range(len(probabilities))]
    for outputs in OUTPUT_CHOICES.values():
        given = ("m", model, "7", probabilities, predicted, LABELS, outputs)
        assert render_answer(*given) == reference_render_answer(*given)
