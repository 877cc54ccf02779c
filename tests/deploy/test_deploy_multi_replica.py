"""python -m deploy.multi_replica --quick: three replicas behind nginx, one killed under load and
restarted; clients get only right answers and lose at most the requests in flight."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.server import REPO_ROOT
from support.served import exported_models

pytestmark = pytest.mark.e2e

CLIENT_THREADS = 8


def nginx_available() -> bool:
    """Present, or installable by the script (it runs apt-get when root)."""
    on_path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    return bool(on_path) or (os.geteuid() == 0 and shutil.which("apt-get") is not None)


@pytest.mark.skipif(not nginx_available(), reason="nginx is not installed and cannot be (not root)")
def test_quick_run_loses_nothing_and_scales_to_three(tmp_path: Path) -> None:
    report_path = tmp_path / "multi-replica.json"
    command = [sys.executable, "-m", "deploy.multi_replica", "--quick", "--json", str(report_path)]
    command += ["--models-dir", str(exported_models(tmp_path))]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())

    runs = [*report["throughput"], report["failover"]]
    assert all(run["wrong"] == 0 for run in runs)
    assert [run["replicas"] for run in report["throughput"]] == [1, 2, 3]
    for run in report["throughput"]:
        assert run["failures"] == 0
        assert run["requests_per_second"] > 0
    failover = report["failover"]
    assert failover["in_flight_bound"] == CLIENT_THREADS
    assert failover["failures"] <= CLIENT_THREADS
    assert failover["by_status"].get("200", 0) > 0
    assert failover["killed_at_s"] < failover["restarted_at_s"] < failover["ready_again_at_s"]
    assert failover["served_by_restarted_replica"] > 0
