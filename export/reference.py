"""--reference NAME=ROWS,PROBABILITIES: what a ready-made ONNX graph must give on rows of its own.

A graph converted elsewhere has no framework here to compare it with, so by default its parity is
proved against itself: the served file computes what the given graph computes. The team that
converted it knows what its original model gives; two .npy files (numpy.save) say so: rows of
shape [n, 4] and the original model's probabilities on them, shape [n, 3]. The parity gate then
compares the graph with those, and the manifest records the two files.
"""

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.classes import N_CLASSES
from export.errors import ExportError
from serve.contract import N_FEATURES


@dataclass(frozen=True)
class Reference:
    """Rows and the probabilities the original model gives on them, both float64."""

    rows: np.ndarray
    probabilities: np.ndarray
    files: tuple[Path, Path]
    sha256: tuple[str, str]

    def manifest(self) -> dict[str, str]:
        """What the manifest records of it: the two files, by name and checksum."""
        return {
            "rows_file": self.files[0].name,
            "rows_sha256": self.sha256[0],
            "probabilities_file": self.files[1].name,
            "probabilities_sha256": self.sha256[1],
        }


def parse_references(texts: list[str]) -> dict[str, Reference]:
    """Each NAME=ROWS,PROBABILITIES loaded and checked; one reference per name."""
    references: dict[str, Reference] = {}
    for text in texts:
        name, equals, target = text.partition("=")
        rows, comma, probabilities = target.partition(",")
        if not (name and equals and rows and comma and probabilities):
            raise ExportError(f"--reference {text}: expected NAME=ROWS.npy,PROBABILITIES.npy")
        if name in references:
            raise ExportError(f"--reference: one reference per model; given twice: {name}")
        references[name] = _load(text, Path(rows), Path(probabilities))
    return references


def _load(text: str, rows_path: Path, probabilities_path: Path) -> Reference:
    rows, rows_sha256 = _array(text, rows_path)
    probabilities, probabilities_sha256 = _array(text, probabilities_path)
    if rows.ndim != 2 or rows.shape[1] != N_FEATURES or len(rows) == 0:
        raise ExportError(
            f"--reference {text}: {rows_path} has shape {list(rows.shape)}, "
            f"expected [rows, {N_FEATURES}]"
        )
    if probabilities.shape != (len(rows), N_CLASSES):
        raise ExportError(
            f"--reference {text}: {probabilities_path} has shape {list(probabilities.shape)}, "
            f"expected [{len(rows)}, {N_CLASSES}] (one row of probabilities per row)"
        )
    return Reference(
        rows,
        probabilities,
        (rows_path, probabilities_path),
        (rows_sha256, probabilities_sha256),
    )


def _array(text: str, path: Path) -> tuple[np.ndarray, str]:
    """A finite float64 array from a .npy file, and the file's sha256."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExportError(f"--reference {text}: {path}: cannot read it: {exc.strerror}") from None
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:
        raise ExportError(
            f"--reference {text}: {path}: not a .npy file of numbers (numpy.save)"
        ) from None
    if not isinstance(array, np.ndarray) or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ExportError(f"--reference {text}: {path}: not a .npy file of numbers (numpy.save)")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ExportError(f"--reference {text}: {path}: holds a value that is not finite")
    return array, hashlib.sha256(data).hexdigest()
