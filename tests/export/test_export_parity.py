"""The parity gate on graphs whose output is known, against deliberately perturbed references."""

from collections.abc import Callable

import numpy as np
import pytest

from export.errors import ParityError
from export.frameworks.pytorch import FLOAT32
from export.frameworks.sklearn import FLOAT64, TREES
from export.parity import PUBLISHED_EXAMPLE, check_parity, onnx_probabilities, probe_rows
from support.onnx_builders import softmax_model

ROWS = probe_rows()
WITHIN_10 = int(np.flatnonzero(np.abs(ROWS).max(axis=1) <= 10)[100])
BEYOND_10 = int(np.flatnonzero(np.abs(ROWS).max(axis=1) > 10)[100])


def constant_model(probabilities: list[float], dtype: type) -> bytes:
    """Zero weights: every row gets softmax(log(probabilities)), whatever its values."""
    with np.errstate(divide="ignore"):
        bias = np.maximum(np.log(probabilities), -1000.0)
    return softmax_model(np.zeros((4, 3)), dtype=dtype, bias=bias)


def reference(model: bytes, row: int, change: list[float]) -> Callable[[np.ndarray], np.ndarray]:
    """What onnxruntime computes, with `change` added to one row's probabilities."""

    def native(rows: np.ndarray) -> np.ndarray:
        probabilities = onnx_probabilities(model, rows).astype(np.float64)
        probabilities[row] += change
        return probabilities

    return native


def test_probe_rows_cover_the_published_example_random_rows_and_edges() -> None:
    assert np.array_equal(probe_rows(), ROWS)
    assert len(ROWS) >= 10_000 + len(PUBLISHED_EXAMPLE)
    assert ROWS.shape[1] == 4
    assert ROWS[:3].tolist() == [list(row) for row in PUBLISHED_EXAMPLE]
    largest = np.abs(ROWS).max(axis=1)
    assert (largest == 0).any()
    assert ((ROWS < 0).all(axis=1)).any()
    assert ((np.round(ROWS) == ROWS).all(axis=1) & (largest > 1)).any()
    assert (largest >= 1_000).sum() > 100
    assert ((ROWS >= 0) & (ROWS <= 1)).all(axis=1).sum() >= 6_000


SKLEARN_MODEL = constant_model([0.2, 0.3, 0.5], np.float64)
PYTORCH_MODEL = constant_model([0.2, 0.3, 0.5], np.float32)


def test_identical_outputs_pass_with_zero_difference() -> None:
    figures = check_parity(
        "m", SKLEARN_MODEL, reference(SKLEARN_MODEL, 0, [0, 0, 0]), np.float64, FLOAT64
    )
    assert figures == {
        "rows": len(ROWS),
        "max_abs_diff_within_10": 0.0,
        "tolerance_within_10": 1e-12,
        "max_abs_diff_beyond_10": 0.0,
        "tolerance_beyond_10": 1e-10,
        "class_mismatches": 0,
    }


def test_float64_difference_within_tolerance_is_measured() -> None:
    native = reference(SKLEARN_MODEL, 5, [0.0, 9e-13, -9e-13])
    figures = check_parity("m", SKLEARN_MODEL, native, np.float64, FLOAT64)
    assert figures["max_abs_diff_within_10"] == pytest.approx(9e-13, rel=1e-3)


def test_float64_difference_beyond_tolerance_fails() -> None:
    native = reference(SKLEARN_MODEL, 5, [0.0, 2e-12, -2e-12])
    with pytest.raises(
        ParityError, match=r"^m: onnxruntime differs .* by 2e-12 \(tolerance 1e-12\)"
    ):
        check_parity("m", SKLEARN_MODEL, native, np.float64, FLOAT64)


def test_float32_tolerance_depends_on_the_size_of_the_inputs() -> None:
    change = [0.0, 5e-6, -5e-6]
    beyond = check_parity(
        "m", PYTORCH_MODEL, reference(PYTORCH_MODEL, BEYOND_10, change), np.float32, FLOAT32
    )
    assert beyond["max_abs_diff_within_10"] == 0.0
    assert beyond["max_abs_diff_beyond_10"] == pytest.approx(5e-6, rel=1e-3)
    with pytest.raises(ParityError, match=r"tolerance 1e-06"):
        check_parity(
            "m",
            PYTORCH_MODEL,
            reference(PYTORCH_MODEL, WITHIN_10, change),
            np.float32,
            FLOAT32,
        )


TIED = constant_model([0.5, 0.5, 0.0], np.float64)


def test_a_tie_may_be_broken_either_way() -> None:
    # Native top two 8e-13 apart (within tolerance): picking class 0 instead of 1 is no error.
    native = reference(TIED, 7, [-4e-13, 4e-13, 0.0])
    figures = check_parity("m", TIED, native, np.float64, FLOAT64)
    assert figures["class_mismatches"] == 0


def test_another_class_fails_even_when_values_are_within_tolerance() -> None:
    # Native top two 1.6e-12 apart: a decided answer that onnxruntime (class 0) contradicts.
    native = reference(TIED, 7, [-8e-13, 8e-13, 0.0])
    expected = r"^m: onnxruntime predicts another class .* on 1 of \d+ probe rows"
    with pytest.raises(ParityError, match=expected):
        check_parity("m", TIED, native, np.float64, FLOAT64)


def test_non_finite_probabilities_fail() -> None:
    native = reference(SKLEARN_MODEL, 9, [np.nan, 0.0, 0.0])
    with pytest.raises(ParityError, match=r"^m: the native model gives a non-finite .* row 9$"):
        check_parity("m", SKLEARN_MODEL, native, np.float64, FLOAT64)


def on_a_threshold(
    model: bytes, row: int, change: list[float]
) -> Callable[[np.ndarray], np.ndarray]:
    """What onnxruntime computes, with `change` added where the first feature lies in the float64
    interval (threshold, x] of probe row `row`'s x: that row sits right on the threshold."""
    x = ROWS[row, 0]
    threshold = np.nextafter(x, -np.inf)

    def native(rows: np.ndarray) -> np.ndarray:
        probabilities = onnx_probabilities(model, rows).astype(np.float64)
        probabilities[(rows[:, 0] > threshold) & (rows[:, 0] <= x)] += change
        return probabilities

    return native


# Moves class 0 ahead: a flipped row may also predict another class.
FLIP = [0.6, -0.3, -0.3]


def test_a_row_on_a_float32_threshold_is_a_flip_where_trees_compare_in_float32() -> None:
    figures = check_parity(
        "m", SKLEARN_MODEL, on_a_threshold(SKLEARN_MODEL, 5, FLIP), np.float64, TREES
    )
    assert figures["threshold_flips"] == 1
    assert figures["max_abs_diff"] == 0.0
    assert figures["class_mismatches"] == 0


def test_a_row_on_a_threshold_fails_where_the_graph_computes_in_float64() -> None:
    native = on_a_threshold(SKLEARN_MODEL, 5, FLIP)
    with pytest.raises(
        ParityError, match=r"^m: onnxruntime differs .* by 0\.6 \(tolerance 1e-12\)"
    ):
        check_parity("m", SKLEARN_MODEL, native, np.float64, FLOAT64)


def test_a_difference_beyond_a_float32_step_is_no_flip() -> None:
    """A model that differs over a whole region differs one float32 step away as well."""

    def native(rows: np.ndarray) -> np.ndarray:
        probabilities = onnx_probabilities(SKLEARN_MODEL, rows).astype(np.float64)
        probabilities[rows[:, 0] > 0.5] += FLIP
        return probabilities

    with pytest.raises(
        ParityError, match=r"^m: onnxruntime differs .* by 0\.6 \(tolerance 1e-05\)"
    ):
        check_parity("m", SKLEARN_MODEL, native, np.float64, TREES)
