"""Labels, manifest and settings: a broken deployment refuses to start with one clear line."""

import hashlib
import json
from pathlib import Path

import pytest

from serve.errors import StartupError
from serve.labels import load_labels
from serve.manifest import read_manifest
from serve.settings import PROJECT_ROOT, Settings
from support.onnx_builders import IDENTITY_WEIGHTS, softmax_model, write_models_dir


def test_labels_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("blue\ngreen\nyellow\n")
    assert load_labels(path) == ("blue", "green", "yellow")


def test_project_labels() -> None:
    assert load_labels(PROJECT_ROOT / "labels.txt") == ("blue", "green", "yellow")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "one non-empty label"),
        ("blue\n\nyellow\n", "one non-empty label"),
        ("blue\nblue\n", "repeats"),
    ],
)
def test_bad_labels(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(StartupError, match=message):
        load_labels(path)


def test_missing_labels(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="not found"):
        load_labels(tmp_path / "labels.txt")


def test_manifest_files_verify(tmp_path: Path) -> None:
    data = softmax_model(IDENTITY_WEIGHTS)
    write_models_dir(tmp_path, {"sklearn": data})
    (model_file,) = read_manifest(tmp_path)
    assert model_file.name == "sklearn"
    assert model_file.read_verified() == data


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    write_models_dir(tmp_path, {"sklearn": softmax_model(IDENTITY_WEIGHTS)})
    path = tmp_path / "sklearn.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    (model_file,) = read_manifest(tmp_path)
    with pytest.raises(StartupError, match="checksum mismatch"):
        model_file.read_verified()


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    write_models_dir(tmp_path, {"sklearn": softmax_model(IDENTITY_WEIGHTS)})
    (tmp_path / "sklearn.onnx").unlink()
    (model_file,) = read_manifest(tmp_path)
    with pytest.raises(StartupError, match="not found"):
        model_file.read_verified()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (None, "not found"),
        ("{", "cannot be read"),
        (json.dumps({"models": {"sklearn": {"file": "a.onnx"}}}), "'file' and 'sha256'"),
        (json.dumps({"models": []}), "'file' and 'sha256'"),
        (json.dumps({"models": {}}), "lists no models"),
        (json.dumps({"models": {"astromech": {"file": "a", "sha256": "0"}}}), "cannot name"),
        (json.dumps({"models": {"../x": {"file": "a", "sha256": "0"}}}), "cannot name"),
    ],
)
def test_bad_manifest(tmp_path: Path, document: str | None, message: str) -> None:
    if document is not None:
        (tmp_path / "manifest.json").write_text(document)
    with pytest.raises(StartupError, match=message):
        read_manifest(tmp_path)


def test_committed_manifest_matches_committed_models() -> None:
    models = read_manifest(PROJECT_ROOT / "onnx_models")
    assert {m.name for m in models} == {"sklearn", "pytorch"}
    for model_file in models:
        assert hashlib.sha256(model_file.read_verified()).hexdigest() == model_file.sha256


def test_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.port == 3000
    assert settings.host == "0.0.0.0"
    assert settings.models_dir == PROJECT_ROOT / "onnx_models"
    assert settings.labels_file == PROJECT_ROOT / "labels.txt"
    assert settings.intra_op_threads == 1
    assert settings.workers >= 1


def test_settings_from_environment() -> None:
    settings = Settings.from_env(
        {
            "PORT": "8080",
            "MODELS_DIR": "/m",
            "LABELS_FILE": "/l.txt",
            "WORKERS": "3",
            "ORT_INTRA_OP_THREADS": "2",
            "HOST": "127.0.0.1",
        }
    )
    assert (settings.port, settings.models_dir, settings.labels_file) == (
        8080,
        Path("/m"),
        Path("/l.txt"),
    )
    assert (settings.workers, settings.intra_op_threads, settings.host) == (3, 2, "127.0.0.1")


def test_web_concurrency_sets_workers_unless_workers_is_given() -> None:
    assert Settings.from_env({"WEB_CONCURRENCY": "5"}).workers == 5
    assert Settings.from_env({"WEB_CONCURRENCY": "5", "WORKERS": "2"}).workers == 2


@pytest.mark.parametrize(("name", "value"), [("PORT", "abc"), ("WORKERS", "0"), ("PORT", "-1")])
def test_bad_settings(name: str, value: str) -> None:
    with pytest.raises(StartupError, match=name):
        Settings.from_env({name: value})
