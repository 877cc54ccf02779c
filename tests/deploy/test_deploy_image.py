"""The Dockerfile's runtime stage, step by step, without a container engine: its WORKDIR, ENV,
COPY and pip steps replayed into a fresh venv and folder, then its CMD served and its HEALTHCHECK
run. The test reads the steps from the Dockerfile, so it follows any change made there."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from packaging.utils import canonicalize_name

from harness.server import REPO_ROOT, ServerProcess
from support.deploy_files import (
    LOCK,
    Stage,
    copy_args,
    env_args,
    exec_form,
    read_requirements,
    read_stages,
)
from support.examples import ROWS
from support.served import exported_models

pytestmark = pytest.mark.e2e

BUILD_TIME = ("torch", "scikit-learn", "skl2onnx", "onnx", "joblib", "scipy")
# What the runtime needs is under this (about 205 MiB: onnxruntime 76, numpy 68 with its
# libraries, grpc 18, pysimdjson 14); torch alone (some 750 MiB) or scipy is far over it.
MAX_SITE_PACKAGES_BYTES = 224 * 1024 * 1024


@dataclass
class Image:
    """The runtime stage replayed: its WORKDIR folder, venv and ENV."""

    workdir: Path
    venv: Path
    env: dict[str, str]

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def copy_into(source: Path, destination: str, workdir: Path) -> None:
    """COPY's rules: a folder's contents go into the destination folder; a file goes into a
    destination ending in / (or .) or becomes the destination. .dockerignore'd files stay out."""
    target = workdir / destination
    if source.is_dir():
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
    elif destination.endswith("/") or destination in (".", "./"):
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / source.name)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def make_venv(env_dir: Path) -> None:
    """A venv whose `pip` is the test environment's pip aimed at it (pip --python): the same
    packages get installed, without the ~15 s that ensurepip takes here."""
    venv.create(env_dir, with_pip=False)
    shim = env_dir / "bin" / "pip"
    pip = f"{shlex.quote(sys.executable)} -m pip"
    shim.write_text(f'#!/bin/sh\nexec {pip} --python "{env_dir}/bin/python" "$@"\n')
    shim.chmod(0o755)


def replay(runtime: Stage, build_workdir: str, build_root: Path, root: Path) -> Image:
    """Runs the stage's steps; RUN steps other than pip (creating the user) need an image."""
    image = Image(workdir=root / "image", venv=root / "venv", env={})
    make_venv(image.venv)
    for keyword, args in runtime.instructions:
        if keyword == "WORKDIR":
            image.workdir = root / "image" / args.lstrip("/")
        elif keyword == "ENV":
            image.env.update(env_args(args))
        elif keyword == "COPY":
            flags, sources, destination = copy_args(args)
            assert flags.keys() <= {"from", "chown", "chmod"}, args
            for source in sources:
                if "from" in flags:
                    assert flags["from"] == "build", args
                    origin = build_root / Path(source).relative_to(build_workdir)
                else:
                    origin = REPO_ROOT / source
                copy_into(origin, destination, image.workdir)
        elif keyword == "RUN" and args.startswith("pip install"):
            # The local pip cache only makes the test faster; what gets installed is the same.
            command = args.replace("--no-cache-dir", "")
            path = f"{image.venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
            env = {**os.environ, **image.env, "PATH": path, "PIP_NO_INPUT": "1"}
            subprocess.run(["sh", "-c", command], cwd=image.workdir, env=env, check=True)
        elif keyword == "RUN":
            assert args.startswith(("groupadd", "useradd")), f"a step the test cannot run: {args}"
    return image


def wait_for_workers(live: ServerProcess, timeout: float = 60.0) -> None:
    """gunicorn listens before its workers have booted (imports, model loads, warm-up): wait
    with a generous read timeout, so a slow first boot is not taken for a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and live.process.poll() is None:
        try:
            requests.get(f"{live.url}/v2/health/live", timeout=10)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)


def healthcheck(runtime: Stage, image: Image, port: int) -> int:
    """The image's HEALTHCHECK command, run with the image's python: its exit code."""
    (args,) = runtime.args("HEALTHCHECK")
    probe = exec_form(args)
    assert probe[0] == "python"
    env = {**os.environ, **image.env, "PORT": str(port)}
    result = subprocess.run(
        [image.python, *probe[1:]], env=env, capture_output=True, timeout=10, check=False
    )
    return result.returncode


def site_packages_bytes(env_dir: Path) -> int:
    (site,) = env_dir.glob("lib/python*/site-packages")
    return sum(path.stat().st_size for path in site.rglob("*") if path.is_file())


def test_runtime_stage_serves_from_a_fresh_venv(tmp_path: Path) -> None:
    stages = read_stages()
    runtime = list(stages.values())[-1]
    (build_workdir,) = stages["build"].args("WORKDIR")
    build_root = exported_models(tmp_path).parent  # the build stage's WORKDIR after the export
    image = replay(runtime, build_workdir, build_root, tmp_path)

    assert sorted(p.name for p in image.workdir.iterdir()) == [
        "labels.txt",
        "onnx_models",
        "requirements.lock",
        "serve",
    ]
    listing = subprocess.run(
        [image.venv / "bin" / "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {canonicalize_name(item["name"]) for item in json.loads(listing.stdout)}
    assert installed.isdisjoint(BUILD_TIME), installed & set(BUILD_TIME)
    # --require-hashes installs nothing the lock does not list, so what is there is the lock.
    assert installed == set(read_requirements(LOCK))
    size = site_packages_bytes(image.venv)
    print(f"runtime site-packages: {size / 2**20:.0f} MiB")
    assert size < MAX_SITE_PACKAGES_BYTES

    (cmd,) = runtime.args("CMD")
    assert exec_form(cmd) == ["python", "-m", "serve"]  # what ServerProcess runs
    server_env = {k: v for k, v in image.env.items() if k != "PORT"}
    live = ServerProcess(env=server_env, python=image.python, cwd=image.workdir)
    try:
        wait_for_workers(live)
        live.wait_ready()
        for path, body in [
            ("/sklearn", {"crystalData": ROWS}),
            ("/pytorch", {"crystalData": ROWS}),
            ("/astromech", {"crystalData": ROWS, "model": "sklearn"}),
        ]:
            response = requests.post(live.url + path, json=body, timeout=10)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert len(answer["prediction"]) == len(answer["scores"]) == len(ROWS)
        assert healthcheck(runtime, image, live.port) == 0
    finally:
        assert live.stop() == 0, live.output
    assert healthcheck(runtime, image, live.port) != 0


@pytest.mark.parametrize("recipe", ["Dockerfile", "Makefile"])
def test_every_test_path_a_recipe_names_exists(recipe: str) -> None:
    """The image's build stage runs the parity tests by path, and make test-upstream the
    transport tests: a moved test file would fail the build, or run nothing, unnoticed."""
    text = (REPO_ROOT / recipe).read_text()
    patterns = re.findall(r"tests/[\w/*.-]+\.py", text)
    assert patterns
    for pattern in patterns:
        assert list(REPO_ROOT.glob(pattern)), f"{recipe} names {pattern}, which matches no file"
