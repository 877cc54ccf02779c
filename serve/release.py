"""The models a server serves, as one release: read and verified once by the gunicorn master,
proven by `python -m serve.check` on exactly those bytes, and inherited by every worker through
fork. All workers of a server therefore serve the same versions, whatever happens to MODELS_DIR
meanwhile: a worker that replaces a dead one gets the master's release, not the folder's files.
SIGHUP prepares a new release the same way and keeps the old one when it fails. The bearer
tokens (serve/auth.py) are part of a release: read, refused and replaced with the models."""

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serve.auth import BearerTokens
from serve.errors import StartupError
from serve.labels import load_labels
from serve.logs import REFUSED
from serve.manifest import MANIFEST_NAME, ModelFile, read_manifest
from serve.settings import Settings

LABELS_NAME = "labels.txt"


@dataclass(frozen=True)
class Release:
    models: tuple[ModelFile, ...]
    data: dict[str, bytes]
    labels: tuple[str, ...]
    tokens: BearerTokens | None = None


_current: Release | None = None


def current() -> Release | None:
    """The release the master published before forking this worker, if any."""
    return _current


def publish(release: Release) -> None:
    global _current
    _current = release


def read(settings: Settings) -> Release:
    """MODELS_DIR, LABELS_FILE and AUTH_TOKENS_FILE as they are now, every model file checked
    against the manifest."""
    models = tuple(read_manifest(settings.models_dir))
    data = {model.name: model.read_verified() for model in models}
    path = settings.auth_tokens_file
    tokens = None if path is None else BearerTokens.read(path)
    return Release(models, data, load_labels(settings.labels_file), tokens)


def prepare(settings: Settings, listen: bool) -> Release:
    """A release proven to serve: its bytes are written to a private folder and the app is built
    from them in a separate process, so the master never holds an onnxruntime session.

    `listen` also checks HOST, PORT and METRICS_DIR (at start; on reload the port is ours).
    """
    release = read(settings)
    with tempfile.TemporaryDirectory(prefix="crystal-release-") as folder:
        root = Path(folder)
        manifest = {
            "models": {
                m.name: {"file": f"{m.name}.onnx", "sha256": m.sha256} for m in release.models
            }
        }
        (root / MANIFEST_NAME).write_text(json.dumps(manifest))
        for name, data in release.data.items():
            (root / f"{name}.onnx").write_bytes(data)
        (root / LABELS_NAME).write_text("\n".join(release.labels) + "\n")
        env = {**os.environ, "MODELS_DIR": folder, "LABELS_FILE": str(root / LABELS_NAME)}
        command = [sys.executable, "-m", "serve.check"] + ([] if listen else ["--models-only"])
        done = subprocess.run(command, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["(no output)"]
        try:
            message = json.loads(lines[-1])["message"].removeprefix(REFUSED)
        except (ValueError, KeyError, TypeError):
            message = lines[-1][:300]
        raise StartupError(message)
    return release
