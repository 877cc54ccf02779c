"""`python -m export`: convert source models to ONNX files the service can load.

    python -m export --model NAME=[FRAMEWORK:]PATH [--model ...] --out DIR

Exit codes: 0 exported, 2 bad command line, source model or output folder, 3 parity failure.
Expected failures print one line on stderr, never a traceback.
"""

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from export.errors import ExportError, ParityError
from export.frameworks import FRAMEWORKS
from export.manifest import MANIFEST_NAME
from export.pipeline import ExportedModel, export_models
from export.sources import parse_model_specs

EXIT_BAD_INPUT = 2  # argparse uses 2 for usage errors too
EXIT_PARITY = 3
# The project's stand-ins, exported when no model is named (as `make export` does by default).
DEFAULT_MODELS = ("sklearn=export/sources/sklearn.joblib", "pytorch=export/sources/pytorch.pt")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, like every other failure, instead of the usage text."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="export",
        description="Convert classifiers to ONNX, prove parity, write a manifest.",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=[FRAMEWORK:]PATH",
        help="a model to serve as /NAME; the framework ("
        + ", ".join(sorted(FRAMEWORKS))
        + ") is recognised from the file unless named; repeat for more models "
        f"(default: {' '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--sklearn-model",
        metavar="PATH",
        help="short for --model sklearn=sklearn:PATH",
    )
    parser.add_argument(
        "--pytorch-model",
        metavar="PATH",
        help="short for --model pytorch=pytorch:PATH",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("onnx_models"),
        help="folder to write, replaced as a whole on success (default: %(default)s)",
    )
    return parser


def _model_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.model)
    for framework, path in (("sklearn", args.sklearn_model), ("pytorch", args.pytorch_model)):
        if path is not None:
            texts.append(f"{framework}={framework}:{path}")
    return texts or list(DEFAULT_MODELS)


def _summary(model: ExportedModel, out: Path) -> str:
    entry, parity = model.entry, model.entry["parity"]
    bands = [key.removeprefix("max_abs_diff") for key in parity if key.startswith("max_abs_diff")]
    diffs = ", ".join(
        f"{parity['max_abs_diff' + band]:.2g}{band.replace('_', ' ')} "
        f"(tolerance {parity['tolerance' + band]:g})"
        for band in bands
    )
    flips = f", threshold flips: {parity['threshold_flips']}" if "threshold_flips" in parity else ""
    opsets = ", ".join(
        f"{domain or 'ai.onnx'} {version}" for domain, version in entry["opsets"].items()
    )
    return (
        f"{model.name}: {model.source} ({entry['framework']} {entry['family']}) -> "
        f"{out / entry['file']} sha256 {entry['sha256']}, opsets {opsets}; "
        f"parity on {parity['rows']} rows: max |diff| {diffs}, "
        f"{parity['class_mismatches']} class mismatches{flips}"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        exported = export_models(parse_model_specs(_model_texts(args)), args.out)
    except ParityError as exc:
        print(f"export: parity failure: {exc}", file=sys.stderr)
        return EXIT_PARITY
    except ExportError as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for model in exported:
        print(_summary(model, args.out))
    print(f"wrote {args.out / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
