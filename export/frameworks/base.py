"""What the export needs from a framework, and a source model loaded through one."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.parity import Tolerance


@dataclass(frozen=True)
class Framework:
    """One framework's exporter. The pipeline takes the same steps for every framework; its
    module supplies each step. `load` and `to_onnx` raise SourceModelError with the reason."""

    name: str  # as in --model NAME=FRAMEWORK:PATH, and in the manifest
    dtype: type[np.floating]  # of the graph's input and output
    versions: dict[str, str]  # the libraries that load and convert its models
    recognises: Callable[[bytes], bool]  # whether a file's first bytes are this framework's format
    load: Callable[[bytes], Any]
    family: Callable[[Any], str]  # what kind of model it is, by class name
    to_onnx: Callable[[Any], onnx.ModelProto]
    predict: Callable[[Any, np.ndarray], np.ndarray]  # probabilities, from the framework itself
    tolerance: Callable[[onnx.ModelProto], Tolerance]  # the parity gate's, for a converted graph


@dataclass(frozen=True)
class Source:
    """A loaded source model: the name it is served under, its framework, and the file (path and
    sha256 of the very bytes it was loaded from)."""

    name: str
    framework: Framework
    path: Path
    sha256: str
    model: Any

    @property
    def family(self) -> str:
        return self.framework.family(self.model)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.framework.predict(self.model, rows)
