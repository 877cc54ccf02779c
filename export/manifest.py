"""manifest.json: what the service loads, the checksums it verifies, and how each file was made.

Deterministic (sorted keys, no timestamps), so the same export always gives the same bytes.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime

from export.classes import N_CLASSES
from export.errors import OutputError
from export.frameworks.base import Source
from serve.contract import INPUT_NAME, N_FEATURES, OUTPUT_NAME

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
# A ready-made graph's parity without a reference: the served file computes what the given graph
# computes, and nothing more is known of the model it was converted from.
PARITY_AGAINST_ITSELF = "the given graph"


def file_name(model_name: str) -> str:
    """The ONNX file of a model, named after it."""
    return f"{model_name}.onnx"


def model_entry(source: Source, model: bytes, parity: dict[str, float | int]) -> dict[str, Any]:
    """One model's entry. `exporter` gives the versions of the libraries that loaded, converted
    and checked the source, so that a changed file can be traced to a changed library.

    Where the parity was not proved against the original framework (a ready-made ONNX graph),
    `parity_against` says against what: the given graph itself, or the --reference files.
    """
    entry: dict[str, Any] = {
        "file": file_name(source.name),
        "sha256": hashlib.sha256(model).hexdigest(),
        "framework": source.framework.name,
        "family": source.family,
        "source_file": source.path.name,
        "source_sha256": source.sha256,
        "input_name": INPUT_NAME,
        "input_dtype": np.dtype(source.dtype).name,
        "output_name": OUTPUT_NAME,
        "n_features": N_FEATURES,
        "n_classes": N_CLASSES,
        "opsets": opsets(model),
        "exporter": {
            **source.framework.versions(source.model),
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "parity": parity,
    }
    if source.reference is not None:
        entry["parity_against"] = {"reference": source.reference.manifest()}
    elif not source.framework.runs_original:
        entry["parity_against"] = PARITY_AGAINST_ITSELF
    if source.softmax:
        entry["softmax_appended"] = True
    return entry


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


@dataclass(frozen=True)
class KeptModel:
    """A model of a previous export that --add keeps: its manifest entry and its file's bytes."""

    entry: dict[str, Any]
    data: bytes


def previous_models(folder: Path) -> dict[str, KeptModel]:
    """The models a previous export in `folder` lists, each file checked against its sha256:
    --add keeps them as they are. Raises OutputError when there is no such export."""
    where = f"--out {folder}: --add"
    try:
        document = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputError(f"{where} needs a previous export there (no {MANIFEST_NAME})") from None
    except (OSError, ValueError) as exc:
        raise OutputError(f"{where}: its {MANIFEST_NAME} cannot be read: {exc}") from None
    if (
        not isinstance(document, dict)
        or document.get("format_version") != FORMAT_VERSION
        or not isinstance(document.get("models"), dict)
    ):
        raise OutputError(f"{where}: its {MANIFEST_NAME} is not one this export writes")
    kept = {}
    for name, entry in document["models"].items():
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str) or Path(file).name != file:
            raise OutputError(f"{where}: model {name} has no file of its own in {MANIFEST_NAME}")
        try:
            data = (folder / file).read_bytes()
        except OSError as exc:
            raise OutputError(
                f"{where}: cannot keep model {name}: {file}: {exc.strerror}"
            ) from None
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise OutputError(
                f"{where}: cannot keep model {name}: {file} does not match its sha256 in "
                f"{MANIFEST_NAME} (export it again, or export the whole list without --add)"
            )
        kept[name] = KeptModel(entry, data)
    return kept


def render(models: dict[str, dict[str, Any]]) -> bytes:
    document = {"format_version": FORMAT_VERSION, "models": models}
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("utf-8")
