"""Running the export's command lines from tests, and comparing folders."""

import os
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
STAND_IN_SKLEARN = REPO_ROOT / "export" / "sources" / "sklearn.joblib"
STAND_IN_PYTORCH = REPO_ROOT / "export" / "sources" / "pytorch.pt"
COMMITTED_MODELS = REPO_ROOT / "onnx_models"

K = TypeVar("K")


def run_module(
    module: str, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m module args` from the repository root, as `make` runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def run_concurrently(
    commands: Mapping[K, tuple[str, ...]], env: Mapping[K, Mapping[str, str]] | None = None
) -> dict[K, subprocess.CompletedProcess[str]]:
    """Each command is (module, *args); they run side by side, as each mostly imports torch."""
    env = env or {}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {
            key: pool.submit(run_module, *command, env=env.get(key))
            for key, command in commands.items()
        }
        return {key: future.result() for key, future in futures.items()}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under `folder` by relative path (folders map to None)."""
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }
