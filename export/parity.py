"""The parity gate: an ONNX file ships only if onnxruntime reproduces its source model.

Both run on the same probe rows: the published example, seeded random rows from the unit cube
(where real measurements lie) out to the thousands, and hand-picked edge rows.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnxruntime as ort

from export.errors import NotProbabilities, ParityError, SourceModelError, first_line
from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME

# The batch of the data team's published /sklearn example.
PUBLISHED_EXAMPLE = ((0.92, 0.12, 0.31, 0.09), (0.31, 0.54, 0.78, 0.17), (0.38, 0.04, 0.21, 0.98))
PROBE_SEED = 20240917
# How far from 1 a row of probabilities may sum, and from [0, 1] a value may lie: float32 rounding
# of a softmax is a few 1e-8; logits are off by far more.
PROBABILITY_SLACK = 1e-5


def probe_rows() -> np.ndarray:
    """The float64 rows every model is checked on, the same on every run.

    10,000 random rows: 6,000 uniform in [0, 1], 2,000 normal around the cube, and 2,000 with
    random signs and magnitudes from 0.001 to 10,000.
    """
    rng = np.random.default_rng(PROBE_SEED)
    unit = rng.uniform(0.0, 1.0, (6_000, N_FEATURES))
    normal = rng.normal(0.5, 2.0, (2_000, N_FEATURES))
    magnitudes = 10.0 ** rng.uniform(-3, 4, (2_000, N_FEATURES))
    wide = magnitudes * rng.choice([-1.0, 1.0], (2_000, N_FEATURES))
    return np.vstack([np.array(PUBLISHED_EXAMPLE), unit, normal, wide, _edge_rows()])


def _edge_rows() -> np.ndarray:
    """Zeros, integers, negatives and values in the thousands, alone and mixed."""
    one_hot = np.eye(N_FEATURES)
    rows = [np.zeros((1, N_FEATURES))]
    rows += [np.full((1, N_FEATURES), value) for value in (1.0, -1.0, 10.0, -10.0, 1e3, -1e3)]
    rows += [scale * one_hot for scale in (1.0, -1.0, 1e3, -1e3, 9999.0)]
    rows.append(
        np.array(
            [
                [1.0, 2.0, 3.0, 4.0],
                [4.0, 3.0, 2.0, 1.0],
                [0.0, 5.0, 0.0, 7.0],
                [-3.0, 2.0, -1.0, 4.0],
                [-0.5, 0.25, -0.125, 0.0625],
                [1e3, 2e3, 3e3, 4e3],
                [-4e3, 3e3, -2e3, 1e3],
                [1234.5, -2345.25, 3456.125, -4567.75],
                [1e-12, -1e-12, 1e-300, 0.0],
                [0.5, 0.5, 0.5, 0.5],
                [1.0, 0.0, 1.0, 0.0],
                [0.0, 1.0, 0.0, 1.0],
                [0.999999, 1e-6, 0.999999, 1e-6],
            ]
        )
    )
    return np.vstack(rows)


@dataclass(frozen=True)
class Band:
    """Rows whose largest |value| is at most `up_to` must agree within `tolerance`.

    `suffix` names the band's figures in the manifest (max_abs_diff<suffix>, tolerance<suffix>).
    """

    suffix: str
    up_to: float
    tolerance: float


@dataclass(frozen=True)
class Tolerance:
    """How close onnxruntime must come to the native model: `bands` by the size of the row, and
    whether a row may differ because it sits on a threshold the graph compares in float32."""

    bands: tuple[Band, ...]
    threshold_flips: bool = False


# float64 end to end: only the order of operations may differ, so the error is a few units in
# the last place of the largest intermediate value, which grows with the inputs (see
# export/frameworks/sklearn.py for what was measured).
FLOAT64 = Tolerance((Band("_within_10", 10.0, 1e-12), Band("_beyond_10", math.inf, 1e-10)))
# float32: rounding error grows with the size of the inputs, hence a looser band beyond ±10.
FLOAT32 = Tolerance((Band("_within_10", 10.0, 1e-6), Band("_beyond_10", math.inf, 1e-4)))


def onnx_probabilities(model: bytes, rows: np.ndarray) -> np.ndarray:
    """What the service computes: one onnxruntime session on one thread, as it runs by default."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures raise, with their message; nothing to print
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: rows})
    return probabilities


def probe(model: bytes, dtype: type[np.floating], tolerance: Tolerance) -> None:
    """What the service will get from the file: finite probabilities on every probe row, and the
    same answer for a row alone as in a batch (the batch dimension is dynamic: a request may be
    one row). Raises SourceModelError."""
    rows = probe_rows().astype(dtype)
    try:
        alone = onnx_probabilities(model, rows[:1])
        probabilities = onnx_probabilities(model, rows)
    except Exception as exc:
        raise SourceModelError(f"onnxruntime fails on the probe rows: {first_line(exc)}") from None
    if not np.isfinite(probabilities).all():
        row = int(np.argwhere(~np.isfinite(probabilities))[0][0])
        raise SourceModelError(f"onnxruntime gives a non-finite probability on probe row {row}")
    problem = not_probabilities(probabilities.astype(np.float64), rows)
    if problem:
        raise NotProbabilities(f"the served file's outputs are not probabilities: {problem}")
    # The first probe row is the published example, within the first band.
    if alone.shape != probabilities[:1].shape or not np.allclose(
        alone, probabilities[:1], rtol=0.0, atol=tolerance.bands[0].tolerance
    ):
        raise SourceModelError(
            f"onnxruntime answers {alone.tolist()} for one row alone and "
            f"{probabilities[:1].tolist()} for it in a batch: the graph's batch dimension is "
            "not dynamic"
        )


def not_probabilities(values: np.ndarray, rows: np.ndarray) -> str | None:
    """Why `values` are not class probabilities, row by row: a value outside [0, 1] or a row
    that does not sum to 1 (a non-finite row does not). None when they are."""
    sums = values.sum(axis=1)
    outside = (values < -PROBABILITY_SLACK) | (values > 1.0 + PROBABILITY_SLACK)
    bad = ~(np.abs(sums - 1.0) <= PROBABILITY_SLACK) | outside.any(axis=1)
    if not bad.any():
        return None
    row = int(np.flatnonzero(bad)[0])
    given = [float(f"{value:.6g}") for value in rows[row]]
    shown = [float(f"{value:.4g}") for value in values[row]]
    return (
        f"on {int(bad.sum())} of {len(values)} rows, e.g. {given} gives {shown}, "
        f"which sums to {sums[row]:.4g}"
    )


def check_parity(
    name: str,
    model: bytes,
    native: Callable[[np.ndarray], np.ndarray],
    dtype: type[np.floating],
    tolerance: Tolerance,
    rows: np.ndarray | None = None,
) -> dict[str, float | int]:
    """The manifest's parity figures, or ParityError if the ONNX model strays from `native`.

    On the probe rows unless `rows` are given (a reference's). What `native` gives must be class
    probabilities, or NotProbabilities says why not.

    A row's predicted class (argmax) must also agree, except on ties: rows where the native
    model's top two probabilities are within the row's tolerance, so either answer is right.
    Where `tolerance` allows threshold flips, rows explained by one (see `_threshold_flips`) are
    counted apart and left out of the other figures.
    """
    rows = (probe_rows() if rows is None else rows).astype(dtype)
    expected = _probabilities(f"{name}: the native model", native, rows)
    actual = _probabilities(f"{name}: onnxruntime", partial(onnx_probabilities, model), rows)
    if actual.shape != expected.shape:
        raise ParityError(
            f"{name}: onnxruntime returned shape {actual.shape}, expected {expected.shape}"
        )
    for label, values in (("the native model", expected), ("onnxruntime", actual)):
        if not np.isfinite(values).all():
            row = int(np.argwhere(~np.isfinite(values))[0][0])
            raise ParityError(f"{name}: {label} gives a non-finite probability on probe row {row}")
    problem = not_probabilities(expected, rows)
    if problem:
        raise NotProbabilities(f"its outputs are not probabilities: {problem}")

    bands = tolerance.bands
    largest = np.abs(rows).max(axis=1)
    band_of_row = np.searchsorted([band.up_to for band in bands], largest)
    row_tolerance = np.array([band.tolerance for band in bands])[band_of_row]
    diff = np.abs(actual - expected).max(axis=1)
    flipped = np.zeros(len(rows), dtype=bool)
    if tolerance.threshold_flips:
        flipped = _threshold_flips(rows, actual, native, diff > row_tolerance, row_tolerance)
    figures: dict[str, float | int] = {"rows": len(rows)}
    for index, band in enumerate(bands):
        in_band = (band_of_row == index) & ~flipped
        worst = float(diff[in_band].max()) if in_band.any() else 0.0
        figures[f"max_abs_diff{band.suffix}"] = worst
        figures[f"tolerance{band.suffix}"] = band.tolerance
        if worst > band.tolerance:
            row = int(np.flatnonzero(in_band & (diff > row_tolerance))[0])
            raise ParityError(
                f"{name}: onnxruntime differs from the native model by {worst:.3g} "
                f"(tolerance {band.tolerance:g}) on probe rows like {rows[row].tolist()}"
            )
    if tolerance.threshold_flips:
        figures["threshold_flips"] = int(flipped.sum())

    top_two = np.sort(expected, axis=1)[:, -2:]
    tie = top_two[:, 1] - top_two[:, 0] <= row_tolerance
    mismatches = (actual.argmax(axis=1) != expected.argmax(axis=1)) & ~tie & ~flipped
    figures["class_mismatches"] = int(mismatches.sum())
    if mismatches.any():
        row = int(np.flatnonzero(mismatches)[0])
        raise ParityError(
            f"{name}: onnxruntime predicts another class than the native model on "
            f"{int(mismatches.sum())} of {len(rows)} probe rows, e.g. {rows[row].tolist()}"
        )
    return figures


def _probabilities(
    what: str, predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray
) -> np.ndarray:
    """`predict(rows)` as float64; a model that fails on them fails the gate, in one line."""
    try:
        return np.asarray(predict(rows), dtype=np.float64)
    except Exception as exc:
        raise ParityError(f"{what} fails on the probe rows: {first_line(exc)}") from None


def _threshold_flips(
    rows: np.ndarray,
    actual: np.ndarray,
    native: Callable[[np.ndarray], np.ndarray],
    differing: np.ndarray,
    row_tolerance: np.ndarray,
) -> np.ndarray:
    """Which `differing` rows sit on a threshold that the ONNX graph compares in float32.

    scikit-learn's trees compare float32(x) with a float64 threshold; onnxruntime's TreeEnsemble
    compares x with that threshold rounded to float32, so a row within one float32 step of a
    threshold may take the other branch. Such a row is a flip when moving one of its features to
    the neighbouring float32 value, down or up, makes the native model give onnxruntime's answer:
    for a measurement on the threshold, either answer is right.
    """
    index = np.flatnonzero(differing)
    flipped = np.zeros(len(rows), dtype=bool)
    if index.size == 0:
        return flipped
    moves = []
    for feature in range(rows.shape[1]):
        for direction in (-np.inf, np.inf):
            moved = rows[index].copy()
            moved[:, feature] = np.nextafter(
                moved[:, feature].astype(np.float32), np.float32(direction)
            )
            moves.append(moved)
    answers = np.asarray(native(np.vstack(moves)), dtype=np.float64)
    answers = answers.reshape(len(moves), len(index), -1)
    explained = np.abs(answers - actual[index]).max(axis=2) <= row_tolerance[index]
    flipped[index[explained.any(axis=0)]] = True
    return flipped
