"""The benchmark's smoke run: `python -m bench --quick` yields a complete result, not a speed.

It starts the service, the floor and the native baseline under gunicorn on loopback ports and
drives each for about a second with the Python client, so neither wrk nor root is needed.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_quick_run_writes_a_complete_result(repo_root: Path, tmp_path: Path) -> None:
    sources = [repo_root / "export" / "sources" / n for n in ("sklearn.joblib", "pytorch.pt")]
    if not all(path.is_file() for path in sources):
        pytest.skip("the native baseline needs export/sources/ (make sources)")
    chart = importlib.util.find_spec("matplotlib") is not None
    command = [sys.executable, "-m", "bench", "--quick", "--client", "python"]
    command += ["--out", str(tmp_path)] + ([] if chart else ["--no-chart"])

    done = subprocess.run(
        command, cwd=repo_root, capture_output=True, text=True, timeout=300, check=False
    )

    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    assert {cell["server"] for cell in results["cells"]} == {"service", "floor", "native"}
    for cell in results["cells"]:
        assert cell["requests"] > 0, cell
        assert cell["errors"] == 0, cell
        assert cell["vs_floor"]["rps"] is not None and cell["vs_native"]["rps"] is not None
    for server in ("service", "floor", "native"):
        assert results["servers"][server]["ready_s"] > 0
        assert results["servers"][server]["worker_rss_mb"] > 0
    assert len(results["targets"]) == 7
    assert "## Targets" in (tmp_path / "latest.md").read_text()
    assert (tmp_path / "latest.png").is_file() == chart
