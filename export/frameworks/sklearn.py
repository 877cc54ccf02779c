"""scikit-learn: any fitted classifier saved with joblib.dump that skl2onnx can convert, with
classes numbered 0, 1, 2 or named as in labels.txt.

Unpickling runs code from the file: export only models from people you trust.
"""

import io
import math
import warnings
from typing import Any

import joblib
import numpy as np
import onnx
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import InconsistentVersionWarning, NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from export.classes import class_problem
from export.errors import SourceModelError, first_line
from export.frameworks.pytorch import LEGACY_TORCH_SAVE
from export.parity import FLOAT64, Band, Tolerance
from serve.contract import INPUT_NAME, N_FEATURES

NAME = "sklearn"
FILES = "a pickle (joblib.dump)"
# skl2onnx writes the lowest opsets each graph needs, up to these.
TARGET_OPSETS = {"": 17, "ai.onnx.ml": 3}
# Every pickle of protocol 2 or later starts with the PROTO opcode; joblib.dump writes protocol 4
# or 5 unless asked to compress (a compressed file is exported as NAME=sklearn:PATH).
PICKLE_PROTO = b"\x80"

# Tolerances by what onnxruntime computes in; the graph's ops decide, so a pipeline, a bagging or
# a voting ensemble gets the tolerance of what it contains. Measured on the 10,043 probe rows.
#
# float64 end to end (linear models, MLP, naive Bayes, neighbours, discriminant analysis and
# pipelines of scalers and these), FLOAT64: only the order of operations may differ, so the error
# is a few units in the last place of the largest intermediate value, which grows with the inputs
# (naive Bayes squares them, a network multiplies them through its layers). Measured within ±10:
# at most 4.4e-16 for linear models, 1.8e-15 for a network, 9.7e-14 for naive Bayes; beyond ±10:
# 2.2e-13 for a network.
# Tree ensembles (decision trees, random forests, extra trees, gradient boosting): skl2onnx
# writes ai.onnx.ml TreeEnsembleClassifier, whose thresholds and leaf values are float32 and whose
# sums and softmax run in float32. Measured at most 2.1e-7 (gradient boosting, 300 trees of depth
# 5); the error grows with the number of trees, hence 1e-5. A row within one float32 step of a
# threshold may take the other branch and shift a forest's probabilities by a whole tree's vote
# (measured: 1 or 2 rows of 10,043 for default 100-tree forests): such rows are accepted as
# threshold flips only when a float32 step of one feature explains them (export/parity.py).
TREES = Tolerance((Band("", math.inf, 1e-5),), threshold_flips=True)
TREE_OPS = frozenset({"TreeEnsembleClassifier", "TreeEnsembleRegressor"})
# Support vector machines (SVC, NuSVC with probability=True): ai.onnx.ml SVMClassifier holds the
# support vectors, coefficients and Platt parameters as float32 and sums the kernel expansion in
# float32, so the error grows with the kernel values. Measured, RBF kernel: at most 9.8e-7 by
# default and 2.9e-5 with C=100, gamma=10; linear kernel: 3.3e-6 within ±10, 1.1e-4 beyond.
# Polynomial kernels reach 1e-3 by default and 1e-2 with C=10, and fail the gate: their ONNX
# files are not exact.
SVMS = Tolerance((Band("_within_10", 10.0, 1e-4), Band("_beyond_10", math.inf, 1e-3)))
SVM_OPS = frozenset({"SVMClassifier", "SVMRegressor"})


def recognises(data: bytes) -> bool:
    """A pickle, but not one of torch.save before version 1.6 (a pickle too)."""
    return data.startswith(PICKLE_PROTO) and not data.startswith(LEGACY_TORCH_SAVE)


def load(data: bytes) -> Any:
    """A fitted scikit-learn classifier with predict_proba over 4 features and classes 0, 1, 2."""
    try:
        with warnings.catch_warnings():
            # A model pickled by an older scikit-learn warns here; the parity gate is what proves
            # that it still predicts the same under the installed version.
            warnings.simplefilter("ignore", InconsistentVersionWarning)
            model = joblib.load(io.BytesIO(data))
    except EOFError:
        raise SourceModelError("truncated (the pickle ends early)") from None
    except (ImportError, AttributeError) as exc:
        raise SourceModelError(f"cannot be unpickled: {exc}") from None
    except Exception:
        raise SourceModelError("not a joblib pickle") from None
    _check_classifier(model)
    return model


def _check_classifier(model: Any) -> None:
    kind = type(model).__name__
    if not (
        isinstance(model, BaseEstimator)
        and is_classifier(model)
        and hasattr(model, "predict_proba")
    ):
        raise SourceModelError(f"holds a {kind}, not a scikit-learn classifier with predict_proba")
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise SourceModelError(f"the {kind} is not fitted") from None
    n_features = getattr(model, "n_features_in_", None)
    if n_features != N_FEATURES:
        raise SourceModelError(f"the {kind} takes {n_features} features, expected {N_FEATURES}")
    found = np.asarray(getattr(model, "classes_", [])).tolist()
    problem = class_problem(found if isinstance(found, list) else [found])
    if problem:
        raise SourceModelError(f"the {kind} has {problem}")


def family(model: Any) -> str:
    """The estimator's class; a pipeline's lists its steps, e.g. Pipeline(StandardScaler, SVC)."""
    if isinstance(model, Pipeline):
        steps = (
            "passthrough" if step in (None, "passthrough") else family(step)
            for _, step in model.steps
        )
        return f"Pipeline({', '.join(steps)})"
    return type(model).__name__


def dtype(model: Any) -> type[np.floating]:
    return np.float64


def versions(model: Any) -> dict[str, str]:
    return {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__}


def to_onnx(model: Any) -> onnx.ModelProto:
    """A float64 graph (DoubleTensorType), so that onnxruntime reproduces predict_proba to the last
    bits wherever its ops compute in double precision."""
    try:
        with warnings.catch_warnings():
            # skl2onnx reads attributes that scikit-learn deprecates (SVC's probA_ and probB_);
            # the parity gate checks what it makes of them.
            warnings.simplefilter("ignore", FutureWarning)
            return convert_sklearn(
                model,
                name=NAME,  # skl2onnx names the graph with a random UUID otherwise
                initial_types=[(INPUT_NAME, DoubleTensorType([None, N_FEATURES]))],
                options={id(model): {"zipmap": False}},
                target_opset=TARGET_OPSETS,
            )
    except Exception as exc:
        raise SourceModelError(
            f"skl2onnx {skl2onnx.__version__} cannot convert the {family(model)}: {first_line(exc)}"
        ) from None


def predict(model: Any, rows: np.ndarray) -> np.ndarray:
    return model.predict_proba(rows)


def tolerance(graph: onnx.ModelProto) -> Tolerance:
    ops = {node.op_type for node in graph.graph.node}
    if ops & SVM_OPS:
        return Tolerance(SVMS.bands, threshold_flips=bool(ops & TREE_OPS))
    return TREES if ops & TREE_OPS else FLOAT64
