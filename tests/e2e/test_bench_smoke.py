"""The benchmark's smoke run: `python -m bench --quick` yields a complete result, not a speed.

It starts the service, the ASGI floor and the native baseline under gunicorn on loopback ports,
drives each with the Python client for half a second per cell (1 and 1,000 rows), runs the
overload and slow-client scenarios on the service, and checks that every target has a figure,
every load its spread over the workers. Neither wrk nor root is needed.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

# One phrase per target row of the report; each must name exactly one row.
TARGETS = (
    "x floor (ASGI)",
    "1-row req/s >= 3x native",
    "rows/s >= 8x native",
    "1-row p99 <= 3 ms",
    "only 200 or 503",
    "p99 <= 1.5x the floor's",
    "probes answered",
    "silent",
    "RSS per worker",
    "start to ready",
    "0 errors",
)


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
    assert {cell["rows"] for cell in results["cells"]} == {1, 1000}
    for cell in results["cells"]:
        assert cell["requests"] > 0, cell
        assert cell["errors"] == 0, cell
        assert cell["vs_floor"]["rps"] is not None and cell["vs_native"]["rps"] is not None
        assert cell["worker_share_min"] is not None, cell  # the spread over workers measured
    for server in ("service", "floor", "native"):
        assert results["servers"][server]["ready_s"] > 0
        assert results["servers"][server]["workers"] == 2
        assert results["servers"][server]["worker_rss_mb_idle"] > 0
    scenarios = {(run["server"], run["scenario"]): run for run in results["raw"]["scenarios"]}
    assert set(scenarios) == {
        ("service", "overload"),
        ("floor", "overload"),
        ("service", "slow-clients"),
    }
    overload = scenarios["service", "overload"]
    assert overload["requests"] > 0 and overload["probes"]["count"] > 0
    assert scenarios["floor", "overload"]["requests"] > 0
    assert scenarios["service", "slow-clients"]["requests"] > 0
    # 300 silent, 50 slow-header and 32 stalled uploads.
    assert sum(scenarios["service", "slow-clients"]["held_at_end"].values()) == 382
    rows = results["targets"]
    assert len(rows) == len(TARGETS)
    for phrase in TARGETS:
        matching = [row for row in rows if phrase in row["target"]]
        assert len(matching) == 1, (phrase, [row["target"] for row in rows])
        assert matching[0]["figure"] is not None and matching[0]["met"] in (True, False)
    report = (tmp_path / "latest.md").read_text()
    for section in ("## Targets", "## Spread over workers", "## Overload and slow clients"):
        assert section in report
    assert (tmp_path / "latest.png").is_file() == chart
