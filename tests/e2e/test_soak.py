"""The short form of the soak: mixed load while a worker is killed, the server reloaded and
stopped. The long form and its figures are in RELIABILITY.md."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.server import REPO_ROOT

pytestmark = pytest.mark.e2e
CLIENTS = 6


def test_short_soak(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.soak",
            "--seconds",
            "5",
            "--clients",
            str(CLIENTS),
            "--json",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert figures["wrong_answers"] == 0
    assert figures["tracebacks_in_log"] == 0
    # The call without a token was refused, and the token the others sent was never written.
    assert figures["answered_by_status"]["401"] > 0
    assert figures["tokens_in_log"] == 0
    assert figures["exit_code"] == 0
    assert figures["answered_by_status"]["200"] > 100
    assert set(figures["answered_by_status"]) <= {"200", "400", "401", "422"}
    # After SIGTERM only connections that never reached the app fail (refused once the listener
    # closed, or dropped from its backlog); after SIGKILL only those in flight on that worker.
    killed = 0
    for where, count in figures["failures"].items():
        phase, cause = where.split(": ")
        if phase == "after SIGTERM":
            assert cause in {"ConnectionRefusedError", "ConnectionResetError", "RemoteDisconnected"}
        else:
            assert phase == "after SIGKILL", figures["failures"]
            killed += count
    assert killed <= CLIENTS
    assert 0 <= figures["handled_but_not_answered"] <= killed
    assert figures["exit_after_sigterm_s"] < 10
