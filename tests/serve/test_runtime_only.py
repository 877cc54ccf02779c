"""The runtime is torch-free: it never imports the build-time frameworks. That a venv made from
requirements.lock alone serves both models is proven by tests/deploy/test_deploy_image.py, which
replays the image's runtime stage."""

import subprocess
import sys

from harness.server import REPO_ROOT

BUILD_TIME = ("torch", "sklearn", "skl2onnx", "joblib", "onnx", "scipy")


def test_serving_imports_no_build_time_package() -> None:
    probe = (
        "import sys\n"
        "import serve.__main__, serve.asgi\n"
        "serve.asgi.application()\n"
        f"print(sorted(m for m in {BUILD_TIME!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
