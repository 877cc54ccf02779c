"""Every kind of scikit-learn classifier the export takes: trained here on small seeded data,
exported by the CLI, and checked against scikit-learn itself; and the ones it must refuse."""

import json
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest
import skl2onnx
from sklearn.base import ClassifierMixin
from sklearn.ensemble import (
    AdaBoostClassifier,
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from export.frameworks.sklearn import FLOAT64, SVMS, TREES
from export.parity import Tolerance, probe_rows
from export.train_sources import crystals
from support.export_helpers import run_forked

pytestmark = pytest.mark.slow  # whole exports: left out of make test-fast

SEED = 0
TRAINING_ROWS = 300


@dataclass(frozen=True)
class Kind:
    model: ClassifierMixin
    family: str
    tolerance: Tolerance


# Small, so that training and export stay fast; the tolerance is the one its ONNX ops call for.
EXPORTED = {
    "logistic": Kind(LogisticRegression(max_iter=1_000), "LogisticRegression", FLOAT64),
    "forest": Kind(
        RandomForestClassifier(n_estimators=10, random_state=SEED),
        "RandomForestClassifier",
        TREES,
    ),
    "extra-trees": Kind(
        ExtraTreesClassifier(n_estimators=10, random_state=SEED), "ExtraTreesClassifier", TREES
    ),
    # Three classes: skl2onnx declares float64 probabilities that its float32 ops do not compute.
    "boosting": Kind(
        GradientBoostingClassifier(n_estimators=10, random_state=SEED),
        "GradientBoostingClassifier",
        TREES,
    ),
    "mlp": Kind(
        MLPClassifier(hidden_layer_sizes=(16,), max_iter=2_000, random_state=SEED),
        "MLPClassifier",
        FLOAT64,
    ),
    "svc": Kind(SVC(probability=True, random_state=SEED), "SVC", SVMS),
    "pipeline": Kind(
        make_pipeline(StandardScaler(), LogisticRegression()),
        "Pipeline(StandardScaler, LogisticRegression)",
        FLOAT64,
    ),
    # skl2onnx mixes float32 tree outputs and float64 weights in one Where node: the export
    # widens the float32 side (export/convert.py).
    "adaboost": Kind(
        AdaBoostClassifier(n_estimators=5, random_state=SEED), "AdaBoostClassifier", TREES
    ),
}
# Refused with exit code 2 and the start of their one line, after "model NAME: PATH: ".
REFUSED = {
    # skl2onnx 1.20.0 writes a Python bool into an integer attribute of its TreeEnsembleClassifier,
    # which onnx 1.23 rejects; once a release converts it, it belongs in EXPORTED.
    "hist-boosting": (
        HistGradientBoostingClassifier(max_iter=5, random_state=SEED),
        f"skl2onnx {skl2onnx.__version__} cannot convert the HistGradientBoostingClassifier: ",
    ),
    # No converter at all.
    "label-spreading": (
        LabelSpreading(),
        f"skl2onnx {skl2onnx.__version__} cannot convert the LabelSpreading: "
        "Unable to find a shape calculator",
    ),
}


def _stump_on_a_probe_row() -> tuple[DecisionTreeClassifier, int]:
    """A one-split tree whose threshold sits on a probe row, and that row.

    scikit-learn compares float32(x) with the float64 threshold t; onnxruntime compares x with t
    rounded by skl2onnx to float32. For t = float32(x) < x with an even float32 mantissa, the
    rounded threshold is t itself: scikit-learn sends the row left, onnxruntime right.
    """
    first = probe_rows()[:, 0]
    rounded = first.astype(np.float32)
    row = int(
        np.flatnonzero((rounded < first) & (rounded.view(np.uint32) % 2 == 0) & (first > 0.1))[0]
    )
    rng = np.random.default_rng(SEED)
    features = rng.uniform(size=(TRAINING_ROWS, 4))
    stump = DecisionTreeClassifier(max_depth=1, random_state=SEED)
    stump.fit(features, np.digitize(features[:, 0], [0.5, 0.75]))
    assert stump.tree_.feature[0] == 0
    stump.tree_.threshold[0] = float(rounded[row])
    return stump, row


@dataclass(frozen=True)
class Exports:
    sources: Path
    models: dict[str, ClassifierMixin]
    flipped_row: int
    results: dict[str, subprocess.CompletedProcess[str]]
    outs: dict[str, Path]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    """Every exported kind in one run of the CLI, each refused kind in a run of its own."""
    root = tmp_path_factory.mktemp("classifiers")
    sources = root / "sources"
    sources.mkdir()
    features, labels = crystals(np.random.default_rng(SEED))
    models = {name: kind.model for name, kind in EXPORTED.items()}
    models |= {name: model for name, (model, _) in REFUSED.items()}
    with warnings.catch_warnings():
        # scikit-learn 1.9 deprecates SVC(probability=True); it is what the data team may send.
        warnings.simplefilter("ignore", FutureWarning)
        for model in models.values():
            model.fit(features[:TRAINING_ROWS], labels[:TRAINING_ROWS])
    models["stump"], flipped_row = _stump_on_a_probe_row()
    for name, model in models.items():
        joblib.dump(model, sources / f"{name}.joblib")

    exported = [*EXPORTED, "stump"]
    outs = {run: root / run / "out" for run in ("exported", *REFUSED)}
    for out in outs.values():
        out.parent.mkdir()
    commands = {
        "exported": (
            *(arg for name in exported for arg in ("--model", f"{name}={sources / name}.joblib")),
            *("--out", str(outs["exported"])),
        )
    }
    for name in REFUSED:
        model = f"{name}={sources / name}.joblib"
        commands[name] = ("--model", model, "--out", str(outs[name]))
    return Exports(sources, models, flipped_row, run_forked("export", commands), outs)


def _manifest(exports: Exports) -> dict:
    return json.loads((exports.outs["exported"] / "manifest.json").read_text())


def _test_rows() -> np.ndarray:
    """Rows of their own, not the export's probe rows: crystals and beyond."""
    rng = np.random.default_rng(SEED + 1)
    return np.vstack([rng.uniform(0, 1, (2_000, 4)), rng.normal(0.5, 5.0, (500, 4))])


def test_every_kind_exports_in_one_run(exports: Exports) -> None:
    result = exports.results["exported"]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert [line.split(":")[0] for line in result.stdout.splitlines()[:-1]] == [
        *EXPORTED,
        "stump",
    ]
    assert sorted(_manifest(exports)["models"]) == sorted([*EXPORTED, "stump"])


@pytest.mark.parametrize("name", EXPORTED)
def test_manifest_entry_names_the_kind_and_its_parity(exports: Exports, name: str) -> None:
    kind = EXPORTED[name]
    entry = _manifest(exports)["models"][name]
    assert (entry["framework"], entry["family"]) == ("sklearn", kind.family)
    assert (entry["file"], entry["source_file"], entry["input_dtype"]) == (
        f"{name}.onnx",
        f"{name}.joblib",
        "float64",
    )
    parity = entry["parity"]
    assert parity["class_mismatches"] == 0
    for band in kind.tolerance.bands:
        assert parity[f"tolerance{band.suffix}"] == band.tolerance
        assert 0 <= parity[f"max_abs_diff{band.suffix}"] <= band.tolerance
    assert ("threshold_flips" in parity) == kind.tolerance.threshold_flips


@pytest.mark.parametrize("name", EXPORTED)
def test_onnxruntime_reproduces_scikit_learn(exports: Exports, name: str) -> None:
    """On rows of their own, in the served file's contract: float64 in, float64 out."""
    session = ort.InferenceSession(
        exports.outs["exported"] / f"{name}.onnx", providers=["CPUExecutionProvider"]
    )
    rows = _test_rows()
    (actual,) = session.run(["probabilities"], {"input": rows})
    expected = exports.models[name].predict_proba(rows)
    bands = EXPORTED[name].tolerance.bands
    band = np.searchsorted([band.up_to for band in bands], np.abs(rows).max(axis=1))
    tolerance = np.array([band.tolerance for band in bands])[band]

    assert actual.dtype == np.float64
    assert actual.shape == (len(rows), 3)
    assert (np.abs(actual - expected).max(axis=1) <= tolerance).all()
    top_two = np.sort(expected, axis=1)[:, -2:]
    decided = top_two[:, 1] - top_two[:, 0] > tolerance
    assert (actual.argmax(axis=1) == expected.argmax(axis=1))[decided].all()


def test_a_row_on_a_tree_threshold_is_counted_as_a_flip(exports: Exports) -> None:
    session = ort.InferenceSession(
        exports.outs["exported"] / "stump.onnx", providers=["CPUExecutionProvider"]
    )
    row = probe_rows()[exports.flipped_row : exports.flipped_row + 1]
    (actual,) = session.run(["probabilities"], {"input": row})
    # The premise: the two really take different branches on this row.
    assert np.abs(actual - exports.models["stump"].predict_proba(row)).max() > 0.1
    parity = _manifest(exports)["models"]["stump"]["parity"]
    assert parity["threshold_flips"] == 1
    assert parity["max_abs_diff"] <= TREES.bands[0].tolerance


@pytest.mark.parametrize("name", REFUSED)
def test_a_classifier_that_cannot_be_converted_fails_in_one_line(
    exports: Exports, name: str
) -> None:
    result = exports.results[name]
    _, reason = REFUSED[name]
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"export: error: model {name}: {exports.sources / name}.joblib: {reason}"
    )
    assert "array(" not in line
    assert result.stdout == ""
    assert not exports.outs[name].exists()
