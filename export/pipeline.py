"""The export from start to finish: load, convert, write, prove parity, publish."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from export import manifest
from export.convert import to_contract
from export.frameworks.base import Source
from export.output import staged_output
from export.parity import check_parity
from export.sources import ModelSpec, load_source, naming


@dataclass(frozen=True)
class ExportedModel:
    """What was written for one model: its name, where it came from, and its manifest entry."""

    name: str
    source: Path
    entry: dict[str, Any]


def export_models(specs: Sequence[ModelSpec], out: Path) -> list[ExportedModel]:
    """Write one ONNX file per model and manifest.json to `out`.

    Every model is loaded and converted before anything is written. Raises an ExportError
    subclass, with `out` untouched, when anything is wrong.
    """
    sources = [load_source(spec) for spec in specs]
    models = [convert(source) for source in sources]
    files = [manifest.file_name(source.name) for source in sources]
    # A previous export is replaced whole, even when it served other models.
    replaced = {*files, manifest.MANIFEST_NAME, *manifest.listed_files(out)}
    entries = {}
    with staged_output(out, replaced) as stage:
        for source, model, file in zip(sources, models, files, strict=True):
            (stage / file).write_bytes(model)
            written = (stage / file).read_bytes()
            parity = check_parity(
                f"model {source.name}",
                written,
                source.predict,
                source.framework.dtype,
                source.framework.tolerance(onnx.load_from_string(written)),
            )
            entries[source.name] = manifest.model_entry(source, written, parity)
        (stage / manifest.MANIFEST_NAME).write_bytes(manifest.render(entries))
    return [ExportedModel(source.name, source.path, entries[source.name]) for source in sources]


def convert(source: Source) -> bytes:
    """The ONNX file of a source model, in the service's contract."""
    framework = source.framework
    with naming(source.name, source.path):
        return to_contract(framework.to_onnx(source.model), framework.name, framework.dtype)
