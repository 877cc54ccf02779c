"""--add: one model exported into an existing folder, the others and their manifest entries kept;
and --out required, so that no export silently replaces the committed models."""

import json
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from export import __main__ as cli
from export.classes import LABELS
from export.train_sources import crystals
from support.examples import ROWS
from support.export_helpers import COMMITTED_MODELS, served, snapshot


@pytest.fixture(scope="module")
def named_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier whose classes are labels.txt's names: what a team adds."""
    features, labels = crystals(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("named") / "named.joblib"
    joblib.dump(LogisticRegression().fit(features, np.array(LABELS)[labels]), path)
    return path


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """A copy of the committed export."""
    out = tmp_path / "out"
    shutil.copytree(COMMITTED_MODELS, out)
    return out


def _models(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())["models"]


def test_add_keeps_the_other_models_and_their_entries(
    previous: Path, named_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = _models(COMMITTED_MODELS)

    exit_code = cli.main(["--add", "--model", f"named={named_model}", "--out", str(previous)])

    captured = capsys.readouterr()
    assert exit_code == 0, captured.err
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"named: {named_model} (sklearn LogisticRegression) -> ")
    assert lines[1:] == [
        f"kept pytorch, sklearn from the previous export in {previous}",
        f"wrote {previous / 'manifest.json'}",
    ]
    assert sorted(path.name for path in previous.iterdir()) == [
        "manifest.json",
        "named.onnx",
        "pytorch.onnx",
        "sklearn.onnx",
    ]
    for name in ("sklearn", "pytorch"):
        assert (previous / f"{name}.onnx").read_bytes() == (
            COMMITTED_MODELS / f"{name}.onnx"
        ).read_bytes()
    models = _models(previous)
    assert {name: models[name] for name in committed} == committed
    assert models["named"]["family"] == "LogisticRegression"


def test_the_added_model_is_served_beside_the_others(previous: Path, named_model: Path) -> None:
    assert cli.main(["--add", "--model", f"named={named_model}", "--out", str(previous)]) == 0
    client = served(previous)
    expected = joblib.load(named_model).predict_proba(np.array(ROWS))
    for name in ("sklearn", "pytorch", "named"):
        result = client.simulate_post(f"/{name}", json={"crystalData": ROWS})
        assert result.status_code == 200, result.text
    scores = client.simulate_post("/named", json={"crystalData": ROWS}).json["scores"]
    served_scores = np.array([[row[label] for label in LABELS] for row in scores])
    assert np.abs(served_scores - expected).max() <= 1e-12


def test_add_replaces_a_model_of_the_same_name(
    previous: Path, named_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = cli.main(["--add", "--model", f"sklearn={named_model}", "--out", str(previous)])

    assert exit_code == 0, capsys.readouterr().err
    models = _models(previous)
    assert sorted(models) == ["pytorch", "sklearn"]
    assert models["sklearn"]["source_file"] == "named.joblib"
    assert models["pytorch"] == _models(COMMITTED_MODELS)["pytorch"]
    assert (previous / "pytorch.onnx").read_bytes() == (
        COMMITTED_MODELS / "pytorch.onnx"
    ).read_bytes()
    assert "kept pytorch from the previous export" in capsys.readouterr().out


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        exit_code = cli.main(args)
    except SystemExit as exc:  # argparse exits by itself
        exit_code = exc.code
    captured = capsys.readouterr()
    assert exit_code == 2
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    return line


def test_add_needs_a_previous_export(
    tmp_path: Path, named_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    line = _refused(
        ["--add", "--model", f"named={named_model}", "--out", str(tmp_path / "out")], capsys
    )
    assert line == (
        f"export: error: --out {tmp_path / 'out'}: --add needs a previous export there "
        "(no manifest.json)"
    )
    assert snapshot(tmp_path) == {"out": None}


def test_add_refuses_to_keep_a_file_that_is_not_the_manifests(
    previous: Path, named_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (previous / "pytorch.onnx").write_bytes(b"changed")
    before = snapshot(previous)
    line = _refused(["--add", "--model", f"named={named_model}", "--out", str(previous)], capsys)
    assert line == (
        f"export: error: --out {previous}: --add: cannot keep model pytorch: pytorch.onnx does "
        "not match its sha256 in manifest.json (export it again, or export the whole list "
        "without --add)"
    )
    assert snapshot(previous) == before


def test_add_needs_the_models_to_add(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(["--add", "--out", str(tmp_path)], capsys)
    assert line == "export: error: --add needs the models to add (--model NAME=[FRAMEWORK:]PATH)"


def test_out_is_required_so_the_committed_models_are_never_replaced_by_default(
    named_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(COMMITTED_MODELS)
    line = _refused(["--model", f"named={named_model}"], capsys)
    assert line == "export: error: the following arguments are required: --out"
    assert snapshot(COMMITTED_MODELS) == before
