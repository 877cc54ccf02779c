"""Running the export's command lines from tests, and comparing folders."""

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from falcon import testing

from serve.app import create_app
from serve.classifier import OnnxClassifier
from serve.release import read
from serve.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
STAND_IN_SKLEARN = REPO_ROOT / "export" / "sources" / "sklearn.joblib"
STAND_IN_PYTORCH = REPO_ROOT / "export" / "sources" / "pytorch.pt"
COMMITTED_MODELS = REPO_ROOT / "onnx_models"

K = TypeVar("K")


def run_module(
    module: str, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m module args` from the repository root, as `make` runs it."""
    return _python("-m", module, *args, env=env)


def _python(*argv: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
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


# Imports `module` once, then runs each command in a child forked from it with that command's
# argv and its stdout and stderr in files, as `python -m` would run it.
_FORKED_RUNS = """
import importlib, json, os, runpy, sys, traceback
module, commands, folder = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
importlib.import_module(module + ".__main__")
del sys.modules[module + ".__main__"]  # each child runs it afresh, as `python -m` does
children = {}
for index, args in enumerate(commands):
    pid = os.fork()
    if pid:
        children[pid] = index
        continue
    for fd, stream in ((1, "out"), (2, "err")):
        os.dup2(os.open(f"{folder}/{index}.{stream}", os.O_WRONLY | os.O_CREAT), fd)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (exc.code is not None)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
codes = {}
while children:
    pid, status = os.wait()
    codes[children.pop(pid)] = os.waitstatus_to_exitcode(status)
print(json.dumps([codes[i] for i in range(len(commands))]))
"""


def run_forked(
    module: str, commands: Mapping[K, tuple[str, ...]]
) -> dict[K, subprocess.CompletedProcess[str]]:
    """What `python -m module *args` gives for each command (exit code, stdout, stderr), with
    the module imported once: the export imports torch and skl2onnx, seconds per interpreter."""
    keys = list(commands)
    with tempfile.TemporaryDirectory() as folder:
        runner = _python(
            "-c", _FORKED_RUNS, module, json.dumps([commands[k] for k in keys]), folder
        )
        assert runner.returncode == 0, runner.stderr
        codes = json.loads(runner.stdout)
        return {
            key: subprocess.CompletedProcess(
                [module, *commands[key]],
                code,
                Path(folder, f"{index}.out").read_text(),
                Path(folder, f"{index}.err").read_text(),
            )
            for index, (key, code) in enumerate(zip(keys, codes, strict=True))
        }


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under `folder` by relative path (folders map to None)."""
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


def served(folder: Path) -> testing.TestClient:
    """An exported folder as the service serves it: manifest, checksums and labels read as a
    release (serve.release.read), one OnnxClassifier per model, the app through falcon's
    TestClient."""
    release = read(Settings.from_env({"MODELS_DIR": str(folder)}))
    models = {
        model.name: OnnxClassifier(model.name, release.data[model.name]) for model in release.models
    }
    return testing.TestClient(create_app(models, release.labels))
