"""Schema-driven fuzzing of the live multi-worker server with its own served OpenAPI spec."""

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import LiveServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    live = LiveServer().wait_ready()
    yield live
    live.stop()


def test_schemathesis_finds_no_failure(server: LiveServer, tmp_path: Path) -> None:
    """At least 1,000 generated cases; every check: no 5xx, every answer conforms to the spec."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "100",
            "--seed",
            "20261123",
            "--suppress-health-check",
            "all",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", summary).groups())
    assert generated == passed
    assert generated >= 1000, summary
    assert "Traceback" not in server.output
