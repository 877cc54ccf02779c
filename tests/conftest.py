"""Fixtures shared by the whole suite."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDOUT_DIR = REPO_ROOT.parent / "shared" / "handout"


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
