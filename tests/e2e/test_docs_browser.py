"""The API page in a real browser: Debian's headless Chromium opens /docs on the live server, with
every host but the server unresolvable, and Swagger UI must render every operation of the served
document. `make chromium` installs the browser; without it the test skips and says why."""

import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from harness.server import ServerProcess

pytestmark = pytest.mark.e2e

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Simulated time for the page to fetch its assets and the document and render them; virtual
# time runs ahead while nothing is pending, so a fast page takes far less in real time.
VIRTUAL_TIME_MS = 20_000


def chromium() -> str:
    """Skips, saying why, where Debian's chromium package is not installed."""
    path = shutil.which("chromium")
    if path is None:
        if shutil.which("apt-get"):
            how = "`make chromium` installs Debian's chromium package (as root)"
        else:
            how = "apt-get is not available to install Debian's chromium package"
        pytest.skip(f"chromium not on PATH: {how}")
    return path


def dump_dom(browser: str, url: str, profile: Path) -> str:
    """The page's DOM once rendered. Only 127.0.0.1 resolves: an asset from anywhere else would
    fail to load. --no-sandbox: Chromium will not start as root with its sandbox."""
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_page_renders_every_served_operation(server: ServerProcess, tmp_path: Path) -> None:
    browser = chromium()
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    dom = dump_dom(browser, server.url + "/docs", tmp_path / "profile")

    assert f">{spec['info']['title']}" in dom
    assert "Failed to load API definition" not in dom
    # Swagger UI renders one block per operation, its path in a data-path attribute.
    assert {"/sklearn", "/pytorch", "/astromech", "/v2/models/{name}/infer"} <= set(spec["paths"])
    for path, item in spec["paths"].items():
        operations = [method for method in item if method in METHODS]
        assert dom.count(f'data-path="{path}"') == len(operations), path
