"""The export from start to finish: load, convert, write, prove parity, publish."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export import manifest
from export.convert import to_contract
from export.errors import NotProbabilities, SourceModelError
from export.frameworks.base import Source
from export.output import staged_output
from export.parity import check_parity, not_probabilities, probe, probe_rows
from export.sources import ModelSpec, load_source, naming


@dataclass(frozen=True)
class ExportedModel:
    """What was written for one model: its name, where it came from, and its manifest entry."""

    name: str
    source: Path
    entry: dict[str, Any]


@dataclass(frozen=True)
class Export:
    """The models written, and those of a previous export kept as they were (--add)."""

    exported: list[ExportedModel]
    kept: list[str]


def export_models(specs: Sequence[ModelSpec], out: Path, add: bool = False) -> Export:
    """Write one ONNX file per model and manifest.json to `out`.

    Without `add` the models are the whole folder: a previous export is replaced. With `add` the
    models of a previous export in `out` are kept, file and manifest entry, except those of the
    same names. Every model is loaded and converted before anything is written. Raises an
    ExportError subclass, with `out` untouched, when anything is wrong.
    """
    previous = manifest.previous_models(out) if add else {}
    sources = [load_source(spec) for spec in specs]
    models = [convert(source) for source in sources]
    files = [manifest.file_name(source.name) for source in sources]
    names = {spec.name for spec in specs}
    kept = {name: model for name, model in previous.items() if name not in names}
    # A previous export's files are its own: replaced whole, or kept with --add.
    replaced = {*files, manifest.MANIFEST_NAME, *manifest.listed_files(out)}
    entries = {name: model.entry for name, model in kept.items()}
    with staged_output(out, replaced) as stage:
        for model in kept.values():
            (stage / model.entry["file"]).write_bytes(model.data)
        for source, model, file in zip(sources, models, files, strict=True):
            (stage / file).write_bytes(model)
            written = (stage / file).read_bytes()
            entries[source.name] = manifest.model_entry(source, written, prove(source, written))
        (stage / manifest.MANIFEST_NAME).write_bytes(manifest.render(entries))
    exported = [ExportedModel(source.name, source.path, entries[source.name]) for source in sources]
    return Export(exported, sorted(kept))


def convert(source: Source) -> bytes:
    """The ONNX file of a source model, in the service's contract."""
    framework = source.framework
    with naming(source.name, source.path):
        if source.softmax:
            _check_logits(source)
        return to_contract(
            framework.to_onnx(source.model), framework.name, source.dtype, source.softmax
        )


def prove(source: Source, written: bytes) -> dict[str, float | int]:
    """The parity figures of the written file, and the probe of what the service will get.

    Against the framework itself on the probe rows, or against a --reference on its rows (the
    reference cannot answer for other rows, so a row on a tree's threshold is no excuse there).
    """
    tolerance = source.framework.tolerance(onnx.load_from_string(written))
    rows, native = None, source.predict
    reference = source.reference
    if reference is not None:
        rows, native = reference.rows, lambda _: reference.probabilities
        tolerance = replace(tolerance, threshold_flips=False)
    with naming(source.name, source.path):
        try:
            parity = check_parity(
                f"model {source.name}", written, native, source.dtype, tolerance, rows
            )
            probe(written, source.dtype, tolerance)
        except NotProbabilities as exc:
            if source.softmax:
                raise
            raise SourceModelError(
                f"{exc}; if they are logits, end the model in a softmax before saving it, "
                f"or export it with --softmax {source.name}"
            ) from None
    return parity


def _check_logits(source: Source) -> None:
    """--softmax is for outputs that are not probabilities yet: appended to probabilities, a
    softmax would serve other numbers than the model's."""
    rows = probe_rows().astype(source.dtype)
    try:
        outputs = source.outputs(rows)
    except Exception:
        return  # the parity gate reports a model that fails on the probe rows
    if not_probabilities(outputs.astype(np.float64), rows) is None:
        raise SourceModelError(
            f"--softmax {source.name}: its outputs are probabilities already (every probe row "
            "sums to 1), and a softmax would change them; leave out --softmax"
        )
