"""The export from start to finish: load, convert, write, prove parity, publish."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skl2onnx
import sklearn
import torch

from export import manifest
from export.convert import pytorch_to_onnx, sklearn_to_onnx
from export.network import CrystalNet
from export.output import staged_output
from export.parity import PYTORCH_BANDS, SKLEARN_BANDS, Band, check_parity
from export.sources import Source, load_pytorch, load_sklearn


@dataclass(frozen=True)
class _Conversion:
    """One model on its way to ONNX, with what the parity gate and manifest need to know."""

    name: str
    source: Source[Any]
    model: bytes
    dtype: type[np.floating]
    native: Callable[[np.ndarray], np.ndarray]
    bands: Sequence[Band]
    frameworks: dict[str, str]

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


@dataclass(frozen=True)
class ExportedModel:
    """What was written for one model: its name, where it came from, and its manifest entry."""

    name: str
    source: Path
    entry: dict[str, Any]


def export_models(sklearn_path: Path, pytorch_path: Path, out: Path) -> list[ExportedModel]:
    """Write sklearn.onnx, pytorch.onnx and manifest.json to `out`.

    Raises an ExportError subclass, with `out` untouched, when anything is wrong.
    """
    sklearn_source = load_sklearn(sklearn_path)
    pytorch_source = load_pytorch(pytorch_path)
    conversions = [
        _Conversion(
            name="sklearn",
            source=sklearn_source,
            model=sklearn_to_onnx(sklearn_source),
            dtype=np.float64,
            native=sklearn_source.model.predict_proba,
            bands=SKLEARN_BANDS,
            frameworks={"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__},
        ),
        _Conversion(
            name="pytorch",
            source=pytorch_source,
            model=pytorch_to_onnx(pytorch_source),
            dtype=np.float32,
            native=_native_probabilities(pytorch_source.model),
            bands=PYTORCH_BANDS,
            frameworks={"torch": torch.__version__},
        ),
    ]
    names = [conversion.file for conversion in conversions] + [manifest.MANIFEST_NAME]
    entries = {}
    with staged_output(out, names) as stage:
        for conversion in conversions:
            (stage / conversion.file).write_bytes(conversion.model)
            written = (stage / conversion.file).read_bytes()
            entries[conversion.name] = manifest.model_entry(
                file=conversion.file,
                model=written,
                source=conversion.source,
                input_dtype=np.dtype(conversion.dtype).name,
                frameworks=conversion.frameworks,
                parity=check_parity(
                    conversion.name, written, conversion.native, conversion.dtype, conversion.bands
                ),
            )
        (stage / manifest.MANIFEST_NAME).write_bytes(manifest.render(entries))
    return [
        ExportedModel(conversion.name, conversion.source.path, entries[conversion.name])
        for conversion in conversions
    ]


def _native_probabilities(network: CrystalNet) -> Callable[[np.ndarray], np.ndarray]:
    def predict(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return network(torch.from_numpy(rows)).numpy()

    return predict
