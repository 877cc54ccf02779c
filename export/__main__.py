"""`python -m export`: convert source models to ONNX files the service can load.

    python -m export --model NAME=[FRAMEWORK:]PATH [--model ...] --out DIR [--add]

Exit codes: 0 exported, 2 bad command line, source model or output folder, 3 parity failure.
Expected failures print one line on stderr, never a traceback; what the libraries warn on the way
is summarised on that line (or on one line of its own after a success), not printed as it comes.
"""

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from export.errors import ExportError, ParityError
from export.frameworks import FRAMEWORKS
from export.manifest import MANIFEST_NAME
from export.pipeline import ExportedModel, export_models
from export.reference import parse_references
from export.sources import parse_model_specs
from export.warned import captured, summary, with_summary

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
        required=True,
        metavar="DIR",
        help="folder to write, replaced as a whole on success (`make export` passes "
        "onnx_models, the committed models)",
    )
    parser.add_argument(
        "--add",
        action="store_true",
        help="keep the models of the previous export in --out (a model of the same name is "
        "replaced) instead of replacing the folder",
    )
    parser.add_argument(
        "--softmax",
        action="append",
        default=[],
        metavar="NAME",
        help="model NAME's outputs are logits: append a softmax (its outputs are refused "
        "otherwise, as they are not probabilities)",
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME=ROWS.npy,PROBABILITIES.npy",
        help="for a ready-made ONNX model NAME: rows [n, 4] and the probabilities [n, 3] its "
        "original model gives on them, to prove parity against (default: the graph itself)",
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
        f"parity on {parity['rows']} rows{_against(entry)}: max |diff| {diffs}, "
        f"{parity['class_mismatches']} class mismatches{flips}"
    )


def _against(entry: dict) -> str:
    against = entry.get("parity_against")
    if against is None:
        return ""
    if isinstance(against, dict):
        reference = against["reference"]
        return f" against {reference['rows_file']}, {reference['probabilities_file']}"
    return f" against {against}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.add and not (args.model or args.sklearn_model or args.pytorch_model):
        _parser().error("--add needs the models to add (--model NAME=[FRAMEWORK:]PATH)")
    failure: tuple[int, str] | None = None
    with captured() as notes:
        try:
            specs = parse_model_specs(
                _model_texts(args), args.softmax, parse_references(args.reference)
            )
            done = export_models(specs, args.out, add=args.add)
        except ParityError as exc:
            failure = EXIT_PARITY, f"export: parity failure: {exc}"
        except ExportError as exc:
            failure = EXIT_BAD_INPUT, f"export: error: {exc}"
    if failure is not None:
        code, message = failure
        print(with_summary(message, notes), file=sys.stderr)
        return code
    for model in done.exported:
        print(_summary(model, args.out))
    if done.kept:
        print(f"kept {', '.join(done.kept)} from the previous export in {args.out}")
    print(f"wrote {args.out / MANIFEST_NAME}")
    if notes:
        print(f"export: note: {summary(notes)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
