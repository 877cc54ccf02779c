"""The models to export, as the command line names them, loaded through their frameworks.

Each file is read once: its checksum, its framework and the loaded model come from the same bytes.
A model that the service cannot use is refused with one line naming the model and the file.
"""

import hashlib
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from export.errors import ExportError, SourceModelError
from export.frameworks import FRAMEWORKS
from export.frameworks.base import Framework, Source
from export.reference import Reference
from serve.manifest import MODEL_NAME, RESERVED_NAMES

# What could be meant as a framework in NAME=FRAMEWORK:PATH, to tell a typo from a path.
_FRAMEWORK_WORD = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class ModelSpec:
    """One --model: the name to serve it under, the file, and its framework if named; whether its
    outputs are logits to append a softmax to (--softmax), and its --reference if any."""

    name: str
    path: Path
    framework: Framework | None = None
    softmax: bool = False
    reference: Reference | None = None


def parse_model_specs(
    texts: Iterable[str],
    softmax: Collection[str] = (),
    references: Mapping[str, Reference] | None = None,
) -> list[ModelSpec]:
    """NAME=PATH or NAME=FRAMEWORK:PATH, each; names must be valid and distinct. `softmax` and
    `references` name models among them."""
    specs = [_parse(text) for text in texts]
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ExportError(f"--model: each model needs its own name; given twice: {duplicates[0]}")
    references = references or {}
    for option, named in (("--softmax", softmax), ("--reference", references)):
        unknown = sorted(set(named) - set(names))
        if unknown:
            raise ExportError(f"{option} {unknown[0]}: no --model of that name")
    return [
        replace(spec, softmax=spec.name in softmax, reference=references.get(spec.name))
        for spec in specs
    ]


def _parse(text: str) -> ModelSpec:
    name, equals, target = text.partition("=")
    if not equals or not name or not target:
        raise ExportError(f"--model {text}: expected NAME=PATH or NAME=FRAMEWORK:PATH")
    # The service's own rule: a model name becomes a URL path.
    if not MODEL_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise ExportError(
            f"--model {text}: {name!r} cannot name a model (it becomes a URL path: it must match "
            f"{MODEL_NAME.pattern} and not be {', '.join(sorted(RESERVED_NAMES))})"
        )
    prefix, colon, path = target.partition(":")
    if colon and prefix in FRAMEWORKS:
        return ModelSpec(name, Path(path), FRAMEWORKS[prefix])
    if colon and _FRAMEWORK_WORD.fullmatch(prefix) and not Path(target).exists():
        raise ExportError(
            f"--model {text}: unknown framework {prefix!r} (known: {', '.join(sorted(FRAMEWORKS))})"
        )
    return ModelSpec(name, Path(target))


def load_source(spec: ModelSpec) -> Source:
    """The model of `spec`, loaded by its named framework or by the one that recognises the file."""
    with naming(spec.name, spec.path):
        data = _read(spec.path)
        framework = spec.framework or _recognise(data)
        if spec.framework is not None:
            _check_named_framework(spec.framework, spec, data)
        if spec.reference is not None and framework.runs_original:
            raise SourceModelError(
                "--reference is for ready-made ONNX graphs, whose original model is not here to "
                f"run; a {framework.name} model is compared with {framework.name} itself"
            )
        model = framework.load(data)
    return Source(
        spec.name,
        framework,
        spec.path,
        hashlib.sha256(data).hexdigest(),
        model,
        softmax=spec.softmax,
        reference=spec.reference,
    )


def _check_named_framework(named: Framework, spec: ModelSpec, data: bytes) -> None:
    """A file that the named framework does not recognise, but another does, is that other's."""
    if named.recognises(data):
        return
    others = [framework for framework in FRAMEWORKS.values() if framework.recognises(data)]
    if len(others) == 1:
        (other,) = others
        raise SourceModelError(
            f"is {other.files}, not {named.files}: name its framework {other.name} "
            f"({spec.name}={other.name}:{spec.path}) or leave it out"
        )


@contextmanager
def naming(name: str, path: Path) -> Iterator[None]:
    """A SourceModelError raised inside names the model and its file, which the reason does not."""
    try:
        yield
    except SourceModelError as exc:
        raise SourceModelError(f"model {name}: {path}: {exc}") from None


def load_sklearn(path: Path) -> Source:
    """A scikit-learn model exactly as the export loads it, for comparing with its ONNX file."""
    return load_source(ModelSpec("sklearn", path, FRAMEWORKS["sklearn"]))


def load_pytorch(path: Path) -> Source:
    """A PyTorch model exactly as the export loads it, for comparing with its ONNX file."""
    return load_source(ModelSpec("pytorch", path, FRAMEWORKS["pytorch"]))


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceModelError("no such file") from None
    except IsADirectoryError:
        raise SourceModelError("is a folder, not a file") from None
    except OSError as exc:
        raise SourceModelError(f"cannot read it: {exc.strerror}") from None
    if not data:
        raise SourceModelError("the file is empty")
    return data


def _recognise(data: bytes) -> Framework:
    matches = [framework for framework in FRAMEWORKS.values() if framework.recognises(data)]
    if len(matches) != 1:
        raise SourceModelError(
            "cannot tell which framework saved it; name it as NAME=FRAMEWORK:PATH "
            f"(frameworks: {', '.join(sorted(FRAMEWORKS))})"
        )
    return matches[0]
