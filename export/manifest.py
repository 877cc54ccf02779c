"""manifest.json: what the service loads, the checksums it verifies, and how each file was made.

Deterministic (sorted keys, no timestamps), so the same export always gives the same bytes.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime

from export.classes import N_CLASSES
from export.frameworks.base import Source
from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def file_name(model_name: str) -> str:
    """The ONNX file of a model, named after it."""
    return f"{model_name}.onnx"


def model_entry(source: Source, model: bytes, parity: dict[str, float | int]) -> dict[str, Any]:
    """One model's entry. `exporter` gives the versions of the libraries that loaded, converted
    and checked the source, so that a changed file can be traced to a changed library."""
    return {
        "file": file_name(source.name),
        "sha256": hashlib.sha256(model).hexdigest(),
        "framework": source.framework.name,
        "family": source.family,
        "source_file": source.path.name,
        "source_sha256": source.sha256,
        "input_name": INPUT_NAME,
        "input_dtype": np.dtype(source.framework.dtype).name,
        "output_name": OUTPUT_NAME,
        "n_features": N_FEATURES,
        "n_classes": N_CLASSES,
        "opsets": opsets(model),
        "exporter": {
            **source.framework.versions,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "parity": parity,
    }


def opsets(model: bytes) -> dict[str, int]:
    """The opsets the file declares, by domain ("" is the default ONNX domain)."""
    return {entry.domain: entry.version for entry in onnx.load_from_string(model).opset_import}


def listed_files(folder: Path) -> set[str]:
    """The files that a previous export's manifest in `folder` lists, with the manifest itself;
    none when there is no manifest the export could have written."""
    try:
        document = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = {entry["file"] for entry in document["models"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {MANIFEST_NAME, *(file for file in files if isinstance(file, str))}


def render(models: dict[str, dict[str, Any]]) -> bytes:
    document = {"format_version": FORMAT_VERSION, "models": models}
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("utf-8")
