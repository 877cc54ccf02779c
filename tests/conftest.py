"""Fixtures shared by the whole suite."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.server import REPO_ROOT, ServerProcess

HANDOUT_DIR = REPO_ROOT.parent / "shared" / "handout"
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/serve first, each module's tests still together and in order: those in-process tests
    show a failure within seconds, and they run before any server is started."""
    items.sort(key=lambda item: not item.path.is_relative_to(TESTS / "serve"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def handout_dir() -> Path:
    """The data team's original models; absent outside this team's checkout layout."""
    if (
        not (HANDOUT_DIR / "sklearn.model").is_file()
        or not (HANDOUT_DIR / "pytorch.model").is_file()
    ):
        pytest.skip(f"handout models not found in {HANDOUT_DIR} (expected beside the checkout)")
    return HANDOUT_DIR


@pytest.fixture(scope="session")
def handout_models(handout_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The handout models exported once for the whole run by the export's command line (run
    in this process): the folder it wrote."""
    from export.__main__ import main

    out = tmp_path_factory.mktemp("handout") / "onnx_models"
    sources = ("--sklearn-model", handout_dir / "sklearn.model")
    sources += ("--pytorch-model", handout_dir / "pytorch.model")
    assert main([*map(str, sources), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """The service as shipped (`python -m serve`, 2 workers, default settings), started once for
    every end-to-end test that needs no settings of its own; a module that does overrides
    `server` with its own. It must stop cleanly and never have logged a traceback."""
    live = ServerProcess().wait_ready()
    yield live
    assert live.stop() == 0, live.output[-3000:]
    assert "Traceback" not in live.output


@pytest.fixture(scope="session")
def one_worker_server() -> Iterator[ServerProcess]:
    """The service with a single worker, otherwise as shipped: for the tests that load one
    worker and watch it (its memory, its probes)."""
    live = ServerProcess({"WORKERS": "1"}).wait_ready()
    yield live
    assert live.stop() == 0, live.output[-3000:]
    assert "Traceback" not in live.output
