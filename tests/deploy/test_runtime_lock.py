"""requirements.lock, what the image and `make serve` install with --require-hashes, agrees with
requirements.txt: the same pins, every file hashed, nothing missing and nothing left over. pip
refuses a wheel whose hash the lock does not list, and the install recipes use the lock."""

import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.server import REPO_ROOT
from support.deploy_files import LOCK, REQUIREMENTS, read_requirements, runtime_stage

SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
REGENERATE = "requirements.lock is out of date: run `make lock`"


def locked_here() -> dict[str, str]:
    """The lock's packages for this interpreter and platform, name → version."""
    return {
        name: str(entry.version)
        for name, entry in read_requirements(LOCK).items()
        if entry.marker is None or entry.marker.evaluate()
    }


def installed_closure(names: Iterable[str]) -> dict[str, str]:
    """The installed distributions that `names` pull in, themselves included, name → version:
    their Requires-Dist whose markers hold here, without extras."""
    found: dict[str, str] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise AssertionError(f"{name} is not installed: run `make install`") from None
        found[name] = distribution.version
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(requirement.name))
    return found


def test_every_pin_of_requirements_txt_is_locked_at_its_version() -> None:
    locked = read_requirements(LOCK)
    for name, entry in read_requirements(REQUIREMENTS).items():
        assert entry.version is not None, f"requirements.txt: pin {name} with =="
        assert name in locked, f"{name}: {REGENERATE}"
        assert locked[name].version == entry.version, f"{name}: {REGENERATE}"


def test_every_locked_package_is_pinned_with_sha256_hashes() -> None:
    for name, entry in read_requirements(LOCK).items():
        assert entry.version is not None, name
        assert entry.hashes, name
        for digest in entry.hashes:
            assert SHA256.fullmatch(digest), (name, digest)


def test_the_lock_holds_what_requirements_txt_pulls_in_and_no_more() -> None:
    """The installed requirements.txt, followed through its dependencies' metadata: no resolver
    and no index needed. The venv is the one `make install` built from requirements.txt."""
    closure = installed_closure(read_requirements(REQUIREMENTS))
    locked = locked_here()
    assert closure.keys() - locked.keys() == set(), REGENERATE
    assert locked.keys() - closure.keys() == set(), REGENERATE
    assert closure == locked, "the venv differs from the lock: run `make install`"


def fake_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel of that name and version with nothing in it: a substitute for the real one."""
    folder.mkdir()
    info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def pip_dry_run(requirements: Path, wheels: Path) -> subprocess.CompletedProcess[str]:
    """pip as the recipes run it (--require-hashes), offered only the wheels in `wheels`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index or find-links of this machine's own
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    command += ["--no-index", "--find-links", str(wheels), "--require-hashes", "-r"]
    return subprocess.run(
        [*command, str(requirements)], env=env, capture_output=True, text=True, check=False
    )


def test_pip_refuses_a_wheel_whose_hash_is_not_locked(tmp_path: Path) -> None:
    """A substituted wheel of a locked version: refused with the lock's hashes, taken once its
    own hash is added (so the hash was the only reason)."""
    entry = read_requirements(LOCK)["packaging"]
    wheel = fake_wheel(tmp_path / "wheels", "packaging", str(entry.version))
    locked = tmp_path / "locked.txt"
    locked.write_text(
        " ".join(["packaging==" + str(entry.version), *(f"--hash={h}" for h in entry.hashes)])
    )
    refused = pip_dry_run(locked, wheel.parent)
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr, refused.stderr
    own = hashlib.sha256(wheel.read_bytes()).hexdigest()
    locked.write_text(locked.read_text() + f" --hash=sha256:{own}")
    taken = pip_dry_run(locked, wheel.parent)
    assert taken.returncode == 0, taken.stdout + taken.stderr


def test_make_and_the_image_install_the_runtime_from_the_lock() -> None:
    """`make serve` and the image's runtime stage install the lock with --require-hashes; the
    dev install puts the build and test set on top of it."""
    (pip,) = [args for args in runtime_stage().args("RUN") if args.startswith("pip install")]
    assert "--require-hashes -r requirements.lock" in pip
    dry_run = subprocess.run(
        ["make", "-n", "-B", "install"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    installs = [line for line in dry_run.stdout.splitlines() if "pip install" in line]
    assert len(installs) == 2, dry_run.stdout
    assert "--require-hashes -r requirements.lock" in installs[0]
    assert installs[1].endswith("-r tests/requirements.txt")
