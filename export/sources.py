"""Loading the two source models and refusing, with one clear line, any the service cannot use.

Each file is read once: its checksum and the loaded model come from the same bytes.
"""

import hashlib
import io
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import joblib
import numpy as np
import torch
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import InconsistentVersionWarning, NotFittedError
from sklearn.utils.validation import check_is_fitted

from export.classes import CLASSES
from export.errors import SourceModelError
from export.network import CrystalNet
from serve.contract import N_FEATURES

M = TypeVar("M")


@dataclass(frozen=True)
class Source(Generic[M]):
    """A loaded source model with the path and checksum of the bytes it came from."""

    path: Path
    sha256: str
    model: M


def _read(kind: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceModelError(f"{kind} model {path}: no such file") from None
    except IsADirectoryError:
        raise SourceModelError(f"{kind} model {path}: is a folder, not a file") from None
    except OSError as exc:
        raise SourceModelError(f"{kind} model {path}: cannot read it: {exc.strerror}") from None
    if not data:
        raise SourceModelError(f"{kind} model {path}: the file is empty")
    return data


def load_sklearn(path: Path) -> Source[Any]:
    """A fitted scikit-learn classifier with predict_proba over 4 features and classes 0, 1, 2.

    Unpickling runs code from the file: export only models from people you trust.
    """
    data = _read("sklearn", path)
    try:
        with warnings.catch_warnings():
            # A model pickled by an older scikit-learn warns here; the parity gate is what proves
            # that it still predicts the same under the installed version.
            warnings.simplefilter("ignore", InconsistentVersionWarning)
            model = joblib.load(io.BytesIO(data))
    except EOFError:
        raise SourceModelError(f"sklearn model {path}: truncated (the pickle ends early)") from None
    except (ImportError, AttributeError) as exc:
        raise SourceModelError(f"sklearn model {path}: cannot be unpickled: {exc}") from None
    except Exception:
        raise SourceModelError(f"sklearn model {path}: not a joblib pickle") from None
    _check_classifier(path, model)
    return Source(path, hashlib.sha256(data).hexdigest(), model)


def _check_classifier(path: Path, model: Any) -> None:
    kind = type(model).__name__
    if not (
        isinstance(model, BaseEstimator)
        and is_classifier(model)
        and hasattr(model, "predict_proba")
    ):
        raise SourceModelError(
            f"sklearn model {path}: holds a {kind}, "
            "not a scikit-learn classifier with predict_proba"
        )
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise SourceModelError(f"sklearn model {path}: the {kind} is not fitted") from None
    n_features = getattr(model, "n_features_in_", None)
    if n_features != N_FEATURES:
        raise SourceModelError(
            f"sklearn model {path}: the {kind} takes {n_features} features, expected {N_FEATURES}"
        )
    classes = getattr(model, "classes_", None)
    if classes is None or not np.array_equal(classes, CLASSES):
        found = None if classes is None else np.asarray(classes).tolist()
        raise SourceModelError(
            f"sklearn model {path}: the {kind} has classes {found}, expected {list(CLASSES)}"
        )


_ZIP_MAGIC = b"PK\x03\x04"


def load_pytorch(path: Path) -> Source[CrystalNet]:
    """A CrystalNet in eval mode with the file's state_dict, which must fit it exactly."""
    data = _read("pytorch", path)
    try:
        with warnings.catch_warnings():
            # Any pickle that is not torch's own protocol warns first; the error below says more.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        raise SourceModelError(f"pytorch model {path}: {_torch_load_failure(data, exc)}") from None
    _check_state_dict(path, state)
    network = CrystalNet()
    network.load_state_dict(state, strict=True)
    network.eval()
    return Source(path, hashlib.sha256(data).hexdigest(), network)


def _torch_load_failure(data: bytes, exc: Exception) -> str:
    """Why torch.load refused the file, in words instead of torch's multi-paragraph messages."""
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
        return (
            "holds Python objects, not only tensors (torch.load with weights_only=True refuses "
            "them); save the network's state_dict() instead"
        )
    if isinstance(exc, EOFError) or (
        data.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(io.BytesIO(data))
    ):
        return "truncated (the archive ends early)"
    return "not a file saved with torch.save"


def _check_state_dict(path: Path, state: object) -> None:
    """Name every missing, extra and mis-shaped parameter in one line."""
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise SourceModelError(
            f"pytorch model {path}: holds a {type(state).__name__}, "
            "not a state_dict (a mapping of parameter names to tensors)"
        )
    expected = {name: tuple(tensor.shape) for name, tensor in CrystalNet().state_dict().items()}
    problems = [f"missing {name}" for name in expected if name not in state]
    problems += [f"unexpected {name}" for name in state if name not in expected]
    problems += [
        f"{name} has shape {list(state[name].shape)}, expected {list(shape)}"
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != shape
    ]
    if problems:
        raise SourceModelError(
            f"pytorch model {path}: the state_dict does not fit the crystal network: "
            + "; ".join(problems)
        )
