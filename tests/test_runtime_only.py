"""The runtime is torch-free: it never imports the build-time frameworks, and a venv made from
requirements.txt alone serves both models."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import requests
from live_server import REPO_ROOT, LiveServer

BUILD_TIME = ("torch", "sklearn", "skl2onnx", "joblib", "onnx", "scipy")
ROWS = [[0.92, 0.12, 0.31, 0.09], [0.31, 0.54, 0.78, 0.17]]


def test_serving_imports_no_build_time_package() -> None:
    probe = (
        "import sys\n"
        "import serve.__main__, serve.wsgi\n"
        "serve.wsgi.application()\n"
        f"print(sorted(m for m in {BUILD_TIME!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.e2e
def test_runtime_venv_serves_both_models(tmp_path: Path) -> None:
    env_dir = tmp_path / "runtime-venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REPO_ROOT / "requirements.txt"),
        ],
        check=True,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    installed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for package in ("torch", "scikit-learn", "skl2onnx", "onnx=", "joblib"):
        assert package not in installed
    live = LiveServer(python=python).wait_ready()
    try:
        for path, body in [
            ("/sklearn", {"crystalData": ROWS}),
            ("/pytorch", {"crystalData": ROWS}),
            ("/astromech", {"crystalData": ROWS, "model": "pytorch"}),
        ]:
            response = requests.post(live.url + path, json=body, timeout=10)
            assert response.status_code == 200, response.text
            assert len(response.json()["prediction"]) == 2
    finally:
        assert live.stop() == 0
