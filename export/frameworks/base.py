"""What the export needs from a framework, and a source model loaded through one."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from export.parity import Tolerance
from export.reference import Reference


@dataclass(frozen=True)
class Framework:
    """One framework's exporter. The pipeline takes the same steps for every framework; its
    module supplies each step. `load` and `to_onnx` raise SourceModelError with the reason."""

    name: str  # as in --model NAME=FRAMEWORK:PATH, and in the manifest
    files: str  # what its files are, for a refusal that names what a file really is
    recognises: Callable[[bytes], bool]  # whether a file's bytes are this framework's format
    load: Callable[[bytes], Any]
    family: Callable[[Any], str]  # what kind of model it is, by class name
    dtype: Callable[[Any], type[np.floating]]  # of the model's input: the graph's input and output
    versions: Callable[[Any], dict[str, str]]  # the libraries that load and convert the model
    to_onnx: Callable[[Any], onnx.ModelProto]
    predict: Callable[[Any, np.ndarray], np.ndarray]  # its outputs, from the framework itself
    tolerance: Callable[[onnx.ModelProto], Tolerance]  # the parity gate's, for a converted graph
    # Whether `predict` runs the original model. A ready-made ONNX graph's original is not here:
    # `predict` runs the graph as given, and only a --reference says what the original gives.
    runs_original: bool = True

    @classmethod
    def of(cls, module: ModuleType) -> "Framework":
        """The framework a module supplies: its NAME and FILES, a function named after each step,
        and RUNS_ORIGINAL where that is False."""
        return cls(
            name=module.NAME,
            files=module.FILES,
            recognises=module.recognises,
            load=module.load,
            family=module.family,
            dtype=module.dtype,
            versions=module.versions,
            to_onnx=module.to_onnx,
            predict=module.predict,
            tolerance=module.tolerance,
            runs_original=getattr(module, "RUNS_ORIGINAL", True),
        )


@dataclass(frozen=True)
class Source:
    """A loaded source model: the name it is served under, its framework, and the file (path and
    sha256 of the very bytes it was loaded from).

    `softmax`: the model's outputs are logits, and the export appends a softmax (--softmax).
    `reference`: what the model should give on some rows, when the framework cannot run it
    natively (a ready-made ONNX graph with --reference).
    """

    name: str
    framework: Framework
    path: Path
    sha256: str
    model: Any
    softmax: bool = False
    reference: Reference | None = None

    @property
    def family(self) -> str:
        return self.framework.family(self.model)

    @property
    def dtype(self) -> type[np.floating]:
        return self.framework.dtype(self.model)

    def outputs(self, rows: np.ndarray) -> np.ndarray:
        """What the model itself computes, before any softmax the export appends."""
        return self.framework.predict(self.model, rows)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """The probabilities the ONNX file must reproduce."""
        outputs = self.outputs(rows)
        return softmax(outputs) if self.softmax else outputs


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in the logits' own precision, as the appended ONNX Softmax computes it."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
