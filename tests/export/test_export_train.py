"""`python -m export.train_sources`: the stand-in source models are reproducible and usable."""

from pathlib import Path

import pytest

from export.sources import load_pytorch, load_sklearn
from support.export_helpers import run_concurrently, snapshot

pytestmark = pytest.mark.slow  # trains the stand-ins twice: left out of make test-fast


def test_training_twice_writes_identical_usable_models(tmp_path: Path) -> None:
    results = run_concurrently(
        {run: ("export.train_sources", "--out", str(tmp_path / run)) for run in ("first", "second")}
    )
    for result in results.values():
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    first = snapshot(tmp_path / "first")
    assert sorted(first) == ["pytorch.pt", "sklearn.joblib"]
    assert first == snapshot(tmp_path / "second")
    # Both load as models the export accepts (classes 0, 1, 2 over four features).
    load_sklearn(tmp_path / "first" / "sklearn.joblib")
    load_pytorch(tmp_path / "first" / "pytorch.pt")
