"""manifest.json: what the service loads, the checksums it verifies, and how each file was made.

Deterministic (sorted keys, no timestamps), so the same export always gives the same bytes.
"""

import hashlib
import json
from typing import Any

import onnx
import onnxruntime

from export.classes import N_CLASSES
from export.sources import Source
from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def model_entry(
    *,
    file: str,
    model: bytes,
    source: Source[Any],
    input_dtype: str,
    frameworks: dict[str, str],
    parity: dict[str, float | int],
) -> dict[str, Any]:
    """One model's entry; `frameworks` are the versions of the libraries that loaded and converted
    the source, so that a changed file can be traced to a changed library."""
    return {
        "file": file,
        "sha256": hashlib.sha256(model).hexdigest(),
        "source_file": source.path.name,
        "source_sha256": source.sha256,
        "input_name": INPUT_NAME,
        "input_dtype": input_dtype,
        "output_name": OUTPUT_NAME,
        "n_features": N_FEATURES,
        "n_classes": N_CLASSES,
        "opsets": opsets(model),
        "exporter": {
            **frameworks,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "parity": parity,
    }


def opsets(model: bytes) -> dict[str, int]:
    """The opsets the file declares, by domain ("" is the default ONNX domain)."""
    return {entry.domain: entry.version for entry in onnx.load_from_string(model).opset_import}


def render(models: dict[str, dict[str, Any]]) -> bytes:
    document = {"format_version": FORMAT_VERSION, "models": models}
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("utf-8")
