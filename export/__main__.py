"""`python -m export`: convert the two source models to ONNX files the service can load.

Exit codes: 0 exported, 2 bad command line, source model or output folder, 3 parity failure.
Expected failures print one line on stderr, never a traceback.
"""

import argparse
import sys
from pathlib import Path

from export.errors import ExportError, ParityError
from export.manifest import MANIFEST_NAME
from export.pipeline import ExportedModel, export_models

EXIT_BAD_INPUT = 2  # argparse uses 2 for usage errors too
EXIT_PARITY = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export",
        description="Convert the crystal classifiers to ONNX, prove parity, write a manifest.",
    )
    parser.add_argument(
        "--sklearn-model",
        type=Path,
        default=Path("export/sources/sklearn.joblib"),
        help="scikit-learn classifier saved with joblib.dump (default: %(default)s)",
    )
    parser.add_argument(
        "--pytorch-model",
        type=Path,
        default=Path("export/sources/pytorch.pt"),
        help="state_dict of the crystal network saved with torch.save (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("onnx_models"),
        help="folder to write, replaced as a whole on success (default: %(default)s)",
    )
    return parser


def _summary(model: ExportedModel, out: Path) -> str:
    entry, parity = model.entry, model.entry["parity"]
    bands = [key.removeprefix("max_abs_diff") for key in parity if key.startswith("max_abs_diff")]
    diffs = ", ".join(
        f"{parity['max_abs_diff' + band]:.2g}{band.replace('_', ' ')} "
        f"(tolerance {parity['tolerance' + band]:g})"
        for band in bands
    )
    opsets = ", ".join(
        f"{domain or 'ai.onnx'} {version}" for domain, version in entry["opsets"].items()
    )
    return (
        f"{model.name}: {model.source} -> {out / entry['file']} sha256 {entry['sha256']}, "
        f"opsets {opsets}; "
        f"parity on {parity['rows']} rows: max |diff| {diffs}, "
        f"{parity['class_mismatches']} class mismatches"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        exported = export_models(args.sklearn_model, args.pytorch_model, args.out)
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
