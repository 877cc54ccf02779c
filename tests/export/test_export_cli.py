"""`python -m export` as `make export` runs it: bad inputs, the parity gate, the output folder."""

import hashlib
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression

from export import __main__ as cli
from export import pipeline
from export.frameworks import FRAMEWORKS
from export.frameworks.base import Source
from export.network import CrystalNet
from serve.manifest import MODEL_NAME, RESERVED_NAMES
from support.export_helpers import (
    REPO_ROOT,
    STAND_IN_PYTORCH,
    STAND_IN_SKLEARN,
    run_concurrently,
    run_forked,
    snapshot,
)

# A previous export: its manifest lists its files, so a new export may replace them all.
PREVIOUS_EXPORT = {
    "sklearn.onnx": b"previous sklearn",
    "pytorch.onnx": b"previous pytorch",
    "manifest.json": json.dumps(
        {
            "format_version": 1,
            "models": {
                name: {"file": f"{name}.onnx", "sha256": "0" * 64}
                for name in ("sklearn", "pytorch")
            },
        }
    ).encode(),
}


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    exit_code: int
    message: str
    out: str = "out"  # relative to the case's own folder
    out_exists: bool = True


def _bad_sources(folder: Path) -> None:
    """Every kind of broken source file the CLI must refuse."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    features, labels = rng.uniform(size=(60, 4)), np.arange(60) % 3
    stand_in_sklearn = STAND_IN_SKLEARN.read_bytes()
    stand_in_pytorch = STAND_IN_PYTORCH.read_bytes()
    (folder / "text.txt").write_text("blue green yellow\n")
    (folder / "empty.joblib").write_bytes(b"")
    (folder / "truncated.joblib").write_bytes(stand_in_sklearn[: len(stand_in_sklearn) // 2])
    (folder / "truncated.pt").write_bytes(stand_in_pytorch[: len(stand_in_pytorch) // 2])
    joblib.dump({"coef": [1, 2, 3]}, folder / "dict.joblib")
    joblib.dump(LinearRegression().fit(features, labels), folder / "linear.joblib")
    joblib.dump(
        LogisticRegression().fit(np.hstack([features, features[:, :1]]), labels),
        folder / "five_features.joblib",
    )
    joblib.dump(LogisticRegression().fit(features, labels % 2), folder / "two_classes.joblib")

    state = torch.load(STAND_IN_PYTORCH, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "layer3.bias"}, folder / "missing.pt")
    torch.save({**state, "layer4.weight": torch.zeros(3, 3)}, folder / "extra.pt")
    torch.save({**state, "layer1.weight": torch.zeros(50, 5)}, folder / "misshaped.pt")
    torch.save(list(state.values()), folder / "list.pt")
    torch.save(CrystalNet(), folder / "module.pt")
    nan_bias = state["layer3.bias"].clone()
    nan_bias[0] = float("nan")
    torch.save({**state, "layer3.bias": nan_bias}, folder / "nan.pt")


def _sklearn(path: str) -> tuple[str, ...]:
    return ("--sklearn-model", path)


def _pytorch(path: str) -> tuple[str, ...]:
    return ("--pytorch-model", path)


NOT_A_CLASSIFIER = "not a scikit-learn classifier with predict_proba"
DOES_NOT_FIT = "the state_dict does not fit the crystal network"
OTHER_ARCHITECTURES = (
    " (a network of another architecture is saved with torch.export.save or torch.jit.save)"
)
TORCH_FILE = "a PyTorch file (torch.save, torch.jit.save or torch.export.save)"

# {bad} is the folder of broken sources, {case} the case's own folder.
CASES = {
    "sklearn-missing": Case(
        _sklearn("{bad}/absent.joblib"), 2, "model sklearn: {bad}/absent.joblib: no such file"
    ),
    "sklearn-empty": Case(
        _sklearn("{bad}/empty.joblib"), 2, "model sklearn: {bad}/empty.joblib: the file is empty"
    ),
    "sklearn-not-pickle": Case(
        _sklearn("{bad}/text.txt"), 2, "model sklearn: {bad}/text.txt: not a joblib pickle"
    ),
    "sklearn-given-torch-file": Case(
        _sklearn(str(STAND_IN_PYTORCH)),
        2,
        f"model sklearn: {STAND_IN_PYTORCH}: is {TORCH_FILE}, not a pickle (joblib.dump): name "
        f"its framework pytorch (sklearn=pytorch:{STAND_IN_PYTORCH}) or leave it out",
    ),
    "sklearn-truncated": Case(
        _sklearn("{bad}/truncated.joblib"),
        2,
        "model sklearn: {bad}/truncated.joblib: truncated (the pickle ends early)",
        out_exists=False,
    ),
    "sklearn-dict": Case(
        _sklearn("{bad}/dict.joblib"),
        2,
        f"model sklearn: {{bad}}/dict.joblib: holds a dict, {NOT_A_CLASSIFIER}",
    ),
    "sklearn-regressor": Case(
        _sklearn("{bad}/linear.joblib"),
        2,
        f"model sklearn: {{bad}}/linear.joblib: holds a LinearRegression, {NOT_A_CLASSIFIER}",
        out_exists=False,
    ),
    "sklearn-five-features": Case(
        _sklearn("{bad}/five_features.joblib"),
        2,
        "model sklearn: {bad}/five_features.joblib: "
        "the LogisticRegression takes 5 features, expected 4",
    ),
    "sklearn-two-classes": Case(
        _sklearn("{bad}/two_classes.joblib"),
        2,
        "model sklearn: {bad}/two_classes.joblib: "
        "the LogisticRegression has classes [0, 1], expected [0, 1, 2] or "
        "['blue', 'green', 'yellow'] (labels.txt)",
    ),
    "pytorch-missing": Case(
        _pytorch("{bad}/absent.pt"),
        2,
        "model pytorch: {bad}/absent.pt: no such file",
        out_exists=False,
    ),
    "pytorch-truncated": Case(
        _pytorch("{bad}/truncated.pt"),
        2,
        "model pytorch: {bad}/truncated.pt: truncated (the archive ends early)",
    ),
    "pytorch-not-torch-file": Case(
        _pytorch("{bad}/text.txt"),
        2,
        "model pytorch: {bad}/text.txt: "
        "not a file saved with torch.save, torch.jit.save or torch.export.save",
    ),
    "pytorch-missing-parameter": Case(
        _pytorch("{bad}/missing.pt"),
        2,
        f"model pytorch: {{bad}}/missing.pt: {DOES_NOT_FIT}: missing layer3.bias"
        + OTHER_ARCHITECTURES,
    ),
    "pytorch-extra-parameter": Case(
        _pytorch("{bad}/extra.pt"),
        2,
        f"model pytorch: {{bad}}/extra.pt: {DOES_NOT_FIT}: unexpected layer4.weight"
        + OTHER_ARCHITECTURES,
        out_exists=False,
    ),
    "pytorch-misshaped-parameter": Case(
        _pytorch("{bad}/misshaped.pt"),
        2,
        f"model pytorch: {{bad}}/misshaped.pt: {DOES_NOT_FIT}: "
        "layer1.weight has shape [50, 5], expected [50, 4]" + OTHER_ARCHITECTURES,
    ),
    "pytorch-not-state-dict": Case(
        _pytorch("{bad}/list.pt"),
        2,
        "model pytorch: {bad}/list.pt: holds a list, "
        "not a state_dict (a mapping of parameter names to tensors)",
    ),
    "pytorch-whole-module": Case(
        _pytorch("{bad}/module.pt"),
        2,
        "model pytorch: {bad}/module.pt: holds Python objects, not only tensors (a whole module "
        "saved with torch.save needs its class to load, and torch.load with weights_only=True "
        "refuses it); save the network with torch.export.save or torch.jit.save, or save the "
        "crystal network's state_dict()",
    ),
    "pytorch-nan-weights": Case(
        _pytorch("{bad}/nan.pt"),
        3,
        "model pytorch: the native model gives a non-finite probability on probe row 0",
    ),
    "out-is-a-file": Case(
        (), 2, "--out {case}/file: exists and is not a folder", out="file", out_exists=False
    ),
    "out-parent-missing": Case(
        (),
        2,
        "--out {case}/absent/out: its parent folder does not exist",
        out="absent/out",
        out_exists=False,
    ),
    "out-holds-other-files": Case(
        (),
        2,
        "--out {case}/out: refusing to replace a folder that holds files the export does not "
        "write: notes.txt",
    ),
}


@pytest.fixture(scope="module")
def case_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, dict, subprocess.CompletedProcess[str]]]:
    """All cases run at once; each gets a folder whose contents must survive the failure."""
    root = tmp_path_factory.mktemp("cli")
    bad = root / "bad"
    _bad_sources(bad)
    commands, folders = {}, {}
    for name, case in CASES.items():
        folder = root / name
        folder.mkdir()
        if case.out_exists:
            (folder / "out").mkdir()
            for file, data in PREVIOUS_EXPORT.items():
                (folder / "out" / file).write_bytes(data)
        if name == "out-is-a-file":
            (folder / "file").write_text("not a folder\n")
        if name == "out-holds-other-files":
            (folder / "out" / "notes.txt").write_text("keep me\n")
        args = [arg.format(bad=bad) for arg in case.args]
        commands[name] = (*args, "--out", str(folder / case.out))
        folders[name] = (folder, snapshot(folder))
    results = run_forked("export", commands)
    return {name: (*folders[name], results[name]) for name in CASES}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_cleanly_and_leaves_out_as_it_was(name: str, case_results: dict) -> None:
    case = CASES[name]
    folder, before, result = case_results[name]
    kind = "parity failure" if case.exit_code == 3 else "error"
    bad = folder.parent / "bad"
    assert result.returncode == case.exit_code, result.stderr
    assert result.stderr.splitlines() == [
        f"export: {kind}: " + case.message.format(bad=bad, case=folder)
    ]
    assert result.stdout == ""
    # --out not created, or untouched, and no staging folder left beside it.
    assert snapshot(folder) == before
    assert (folder / "out").exists() == case.out_exists


def test_parity_failure_after_writing_leaves_out_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A converted file that computes something else is caught after it was written."""
    rng = np.random.default_rng(1)
    features = rng.uniform(size=(300, 4))
    other = LogisticRegression().fit(features, rng.integers(0, 3, 300))
    other_onnx = pipeline.convert(
        Source("other", FRAMEWORKS["sklearn"], Path("other.joblib"), "", other)
    )
    convert = pipeline.convert
    monkeypatch.setattr(
        pipeline,
        "convert",
        lambda source: other_onnx if source.name == "sklearn" else convert(source),
    )
    out = tmp_path / "out"
    out.mkdir()
    for file, data in PREVIOUS_EXPORT.items():
        (out / file).write_bytes(data)
    before = snapshot(tmp_path)

    exit_code = cli.main(
        [
            *("--sklearn-model", str(STAND_IN_SKLEARN)),
            *("--pytorch-model", str(STAND_IN_PYTORCH)),
            *("--out", str(out)),
        ]
    )

    captured = capsys.readouterr()
    assert exit_code == 3
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(
        "export: parity failure: model sklearn: onnxruntime differs from the native"
    )
    assert "(tolerance 1e-12)" in line
    assert snapshot(tmp_path) == before


# Command lines refused before any model is loaded, each with its one line on stderr.
NAME_RULE = (
    f"it becomes a URL path: it must match {MODEL_NAME.pattern} and not be "
    f"{', '.join(sorted(RESERVED_NAMES))}"
)
RESERVED = sorted(RESERVED_NAMES)[0]
BAD_COMMAND_LINES = {
    "name-not-a-url-path": (
        ["--model", "Blue=x.joblib"],
        f"--model Blue=x.joblib: 'Blue' cannot name a model ({NAME_RULE})",
    ),
    "reserved-name": (
        ["--model", f"{RESERVED}=x.joblib"],
        f"--model {RESERVED}=x.joblib: {RESERVED!r} cannot name a model ({NAME_RULE})",
    ),
    "no-path": (["--model", "blue"], "--model blue: expected NAME=PATH or NAME=FRAMEWORK:PATH"),
    "unknown-framework": (
        ["--model", "blue=keras:blue.h5"],
        "--model blue=keras:blue.h5: unknown framework 'keras' (known: onnx, pytorch, sklearn)",
    ),
    "name-twice": (
        ["--model", "blue=a.joblib", "--sklearn-model", "b.joblib", "--model", "blue=c.pt"],
        "--model: each model needs its own name; given twice: blue",
    ),
    "shorthand-and-model-share-a-name": (
        ["--model", "sklearn=a.joblib", "--sklearn-model", "b.joblib"],
        "--model: each model needs its own name; given twice: sklearn",
    ),
    "unknown-option": (["--keras-model", "x.h5"], "unrecognized arguments: --keras-model x.h5"),
}


@pytest.mark.parametrize("name", BAD_COMMAND_LINES)
def test_bad_command_line_fails_in_one_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, message = BAD_COMMAND_LINES[name]
    try:
        exit_code = cli.main([*args, "--out", str(tmp_path / "out")])
    except SystemExit as exc:  # argparse exits by itself
        exit_code = exc.code
    captured = capsys.readouterr()
    assert exit_code == 2
    assert captured.err.splitlines() == [f"export: error: {message}"]
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_a_file_no_framework_recognises_must_be_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model.bin").write_bytes(b"\x00\x01 not a model")
    exit_code = cli.main(
        ["--model", f"blue={tmp_path / 'model.bin'}", "--out", str(tmp_path / "out")]
    )
    captured = capsys.readouterr()
    assert exit_code == 2
    assert captured.err.splitlines() == [
        f"export: error: model blue: {tmp_path / 'model.bin'}: cannot tell which framework saved "
        "it; name it as NAME=FRAMEWORK:PATH (frameworks: onnx, pytorch, sklearn)"
    ]
    assert not (tmp_path / "out").exists()


def test_an_export_of_other_models_replaces_a_previous_export_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The files a previous export's manifest lists are its own, not someone else's."""
    out = tmp_path / "out"
    out.mkdir()
    for file, data in PREVIOUS_EXPORT.items():
        (out / file).write_bytes(data)

    exit_code = cli.main(["--model", f"crystal={STAND_IN_SKLEARN}", "--out", str(out)])

    assert exit_code == 0, capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["crystal.onnx", "manifest.json"]
    assert list(json.loads((out / "manifest.json").read_text())["models"]) == ["crystal"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


@pytest.fixture(scope="module")
def three_exports(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Path], dict[str, subprocess.CompletedProcess[str]]]:
    """The stand-ins exported by the CLI three ways: by default into a new folder, with the
    shorthands over a previous export, and with --model (framework named, and recognised).

    The runs use different string hash seeds: skl2onnx orders opsets through a Python set, and
    with this skl2onnx seed 116 reverses the order seed 0 gives.
    """
    root = tmp_path_factory.mktemp("thrice")
    outs = [root / run / "out" for run in ("a", "b", "c")]
    outs[0].parent.mkdir()
    outs[1].mkdir(parents=True)
    outs[2].parent.mkdir()
    for file, data in PREVIOUS_EXPORT.items():
        (outs[1] / file).write_bytes(data)
    results = run_concurrently(
        {
            "a": ("export", "--out", str(outs[0])),
            "b": (
                "export",
                *("--sklearn-model", str(STAND_IN_SKLEARN)),
                *("--pytorch-model", str(STAND_IN_PYTORCH)),
                *("--out", str(outs[1])),
            ),
            "c": (
                "export",
                *("--model", f"sklearn=sklearn:{STAND_IN_SKLEARN}"),
                *("--model", f"pytorch={STAND_IN_PYTORCH}"),
                *("--out", str(outs[2])),
            ),
        },
        env={"a": {"PYTHONHASHSEED": "0"}, "b": {"PYTHONHASHSEED": "116"}},
    )
    return outs, results


def test_export_succeeds_and_says_what_it_did(three_exports: tuple) -> None:
    (first, _, _), results = three_exports
    result = results["a"]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line, name, source, family in zip(
        lines[:2],
        ("sklearn", "pytorch"),
        (STAND_IN_SKLEARN, STAND_IN_PYTORCH),
        ("LogisticRegression", "CrystalNet"),
        strict=True,
    ):
        digest = hashlib.sha256((first / f"{name}.onnx").read_bytes()).hexdigest()
        assert line.startswith(
            f"{name}: {source.relative_to(REPO_ROOT)} ({name} {family}) -> {first / name}.onnx "
            f"sha256 {digest}, opsets ai.onnx "
        )
        assert "parity on 10043 rows: max |diff| " in line
        assert line.endswith(", 0 class mismatches")
    assert lines[2] == f"wrote {first / 'manifest.json'}"


def test_every_way_of_naming_the_models_exports_the_same_bytes(three_exports: tuple) -> None:
    outs, results = three_exports
    assert [results[key].returncode for key in ("a", "b", "c")] == [0, 0, 0]
    assert snapshot(outs[0]) == snapshot(outs[1]) == snapshot(outs[2])
    assert sorted(snapshot(outs[0])) == ["manifest.json", "pytorch.onnx", "sklearn.onnx"]


def test_export_replaces_a_previous_export_whole(three_exports: tuple) -> None:
    (_, second, _), _ = three_exports
    assert all((second / file).read_bytes() != data for file, data in PREVIOUS_EXPORT.items())
    assert [path.name for path in second.parent.iterdir()] == ["out"]


# Variables make would take from the environment (an image build passes MODELS as one) or from
# a make that runs the tests.
MAKE_ENVIRONMENT = {"MODELS", "OUT", "SKLEARN_MODEL", "PYTORCH_MODEL", "MAKEFLAGS", "MFLAGS"}


def _make_export(*variables: str) -> list[str]:
    """The arguments `make export` passes to `python -m export` (make -n prints, runs nothing)."""
    result = subprocess.run(
        ["make", "-n", "export", *variables],
        cwd=REPO_ROOT,
        env={key: value for key, value in os.environ.items() if key not in MAKE_ENVIRONMENT},
        capture_output=True,
        text=True,
        check=True,
    )
    (command,) = [line for line in result.stdout.splitlines() if " -m export " in line]
    return shlex.split(command.partition(" -m export ")[2])


def test_make_export_takes_the_list_of_models_and_the_output_folder() -> None:
    models = (
        "sklearn=../shared/handout/sklearn.model pytorch=pytorch:../shared/handout/pytorch.model"
    )
    assert _make_export(f"MODELS={models}", "OUT=/tmp/handout-models") == [
        *("--model", "sklearn=../shared/handout/sklearn.model"),
        *("--model", "pytorch=pytorch:../shared/handout/pytorch.model"),
        *("--out", "/tmp/handout-models"),
    ]


def test_make_export_and_the_image_default_to_the_stand_ins() -> None:
    defaults = [arg for text in cli.DEFAULT_MODELS for arg in ("--model", text)]
    assert _make_export() == [*defaults, "--out", "onnx_models"]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    (image_models,) = re.findall(r'^ARG MODELS="([^"]*)"$', dockerfile, re.MULTILINE)
    assert image_models.split() == list(cli.DEFAULT_MODELS)
