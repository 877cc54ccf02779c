"""The parity gate: an ONNX file ships only if onnxruntime reproduces its source model.

Both run on the same probe rows: the published example, seeded random rows from the unit cube
(where real measurements lie) out to the thousands, and hand-picked edge rows.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from export.errors import ParityError
from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME

# The batch of the data team's published /sklearn example.
PUBLISHED_EXAMPLE = ((0.92, 0.12, 0.31, 0.09), (0.31, 0.54, 0.78, 0.17), (0.38, 0.04, 0.21, 0.98))
PROBE_SEED = 20240917


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


# float64 end to end: only summation order may differ.
SKLEARN_BANDS = (Band("", math.inf, 1e-12),)
# float32: rounding error grows with the size of the inputs, hence a looser band beyond ±10.
PYTORCH_BANDS = (Band("_within_10", 10.0, 1e-6), Band("_beyond_10", math.inf, 1e-4))


def onnx_probabilities(model: bytes, rows: np.ndarray) -> np.ndarray:
    """What the service computes: one onnxruntime session on one thread, as it runs by default."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: rows})
    return probabilities


def check_parity(
    name: str,
    model: bytes,
    native: Callable[[np.ndarray], np.ndarray],
    dtype: type[np.floating],
    bands: Sequence[Band],
) -> dict[str, float | int]:
    """The manifest's parity figures, or ParityError if the ONNX model strays from `native`.

    A row's predicted class (argmax) must also agree, except on ties: rows where the native
    model's top two probabilities are within the row's tolerance, so either answer is right.
    """
    rows = probe_rows().astype(dtype)
    expected = np.asarray(native(rows), dtype=np.float64)
    actual = np.asarray(onnx_probabilities(model, rows), dtype=np.float64)
    if actual.shape != expected.shape:
        raise ParityError(
            f"{name}: onnxruntime returned shape {actual.shape}, expected {expected.shape}"
        )
    for label, values in (("the native model", expected), ("onnxruntime", actual)):
        if not np.isfinite(values).all():
            row = int(np.argwhere(~np.isfinite(values))[0][0])
            raise ParityError(f"{name}: {label} gives a non-finite probability on probe row {row}")

    largest = np.abs(rows).max(axis=1)
    band_of_row = np.searchsorted([band.up_to for band in bands], largest)
    tolerance = np.array([band.tolerance for band in bands])[band_of_row]
    diff = np.abs(actual - expected).max(axis=1)
    figures: dict[str, float | int] = {"rows": len(rows)}
    for index, band in enumerate(bands):
        in_band = band_of_row == index
        worst = float(diff[in_band].max()) if in_band.any() else 0.0
        figures[f"max_abs_diff{band.suffix}"] = worst
        figures[f"tolerance{band.suffix}"] = band.tolerance
        if worst > band.tolerance:
            row = int(np.flatnonzero(in_band & (diff > tolerance))[0])
            raise ParityError(
                f"{name}: onnxruntime differs from the native model by {worst:.3g} "
                f"(tolerance {band.tolerance:g}) on probe rows like {rows[row].tolist()}"
            )

    top_two = np.sort(expected, axis=1)[:, -2:]
    tie = top_two[:, 1] - top_two[:, 0] <= tolerance
    mismatches = (actual.argmax(axis=1) != expected.argmax(axis=1)) & ~tie
    figures["class_mismatches"] = int(mismatches.sum())
    if mismatches.any():
        row = int(np.flatnonzero(mismatches)[0])
        raise ParityError(
            f"{name}: onnxruntime predicts another class than the native model on "
            f"{int(mismatches.sum())} of {len(rows)} probe rows, e.g. {rows[row].tolist()}"
        )
    return figures
