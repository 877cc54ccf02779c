"""Every start-up misconfiguration ends `python -m serve` with one JSON line naming the setting
and exit code 2, before gunicorn starts; and every line a full run writes is JSON."""

import json
import socket
from pathlib import Path

import pytest
import requests

from harness.server import REPO_ROOT, ServerProcess

pytestmark = pytest.mark.e2e


def refused(env: dict[str, str]) -> dict:
    live = ServerProcess(env)
    assert live.process.wait(timeout=30) == 2
    lines = live.output.splitlines()
    assert len(lines) == 1, live.output
    line = json.loads(lines[0])
    assert (line["level"], line["logger"], line["exit_code"]) == ("error", "serve", 2)
    return line


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "70000"}, "cannot start: PORT must be at most 65535, got 70000"),
        ({"PORT": "http"}, "cannot start: PORT must be an integer, got 'http'"),
        ({"WORKERS": "0"}, "cannot start: WORKERS must be at least 1, got 0"),
        ({"MAX_IN_FLIGHT": "-1"}, "cannot start: MAX_IN_FLIGHT must be at least 1, got -1"),
        ({"LOG_PROBES": "sometimes"}, "cannot start: LOG_PROBES must be true or false"),
        ({"HOST": "droid.invalid"}, "cannot start: HOST 'droid.invalid' cannot be resolved"),
        ({"METRICS_DIR": "/proc/metrics"}, "cannot start: METRICS_DIR /proc/metrics cannot hold"),
    ],
)
def test_a_bad_setting_is_one_json_line_and_exit_2(env: dict[str, str], message: str) -> None:
    assert refused(env)["message"].startswith(message)


def test_a_port_in_use_is_one_json_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused({"PORT": str(port)})
    assert line["message"] == (
        f"cannot start: PORT {port} on HOST 127.0.0.1 cannot be bound: Address already in use"
    )


def test_a_missing_metrics_dir_is_made(tmp_path: Path) -> None:
    parent = tmp_path / "metrics" / "deeper"
    live = ServerProcess({"METRICS_DIR": str(parent)}).wait_ready()
    try:
        assert len(list(parent.glob("crystal-metrics-*"))) == 1
    finally:
        assert live.stop() == 0


def test_every_line_of_a_full_run_is_json() -> None:
    live = ServerProcess().wait_ready()
    requests.post(live.url + "/sklearn", json={"crystalData": [[1, 2, 3, 4]]}, timeout=10)
    requests.post(live.url + "/sklearn", json={"crystalData": [[1, 2]]}, timeout=10)
    requests.get(live.url + "/v2/health/ready", timeout=10)
    assert live.stop() == 0
    lines = [json.loads(line) for line in live.output.splitlines()]
    loggers = {line["logger"] for line in lines}
    assert loggers == {"serve", "gunicorn.error", "serve.access"}
    assert {"ts", "level", "logger", "message", "pid"} <= set.intersection(*map(set, lines))
    messages = [line["message"] for line in lines]
    assert messages[:3] == ["model", "model", "Starting gunicorn 27.0.1"]
    assert messages[-1] == "Shutting down: Master"
    manifest = json.loads((REPO_ROOT / "onnx_models" / "manifest.json").read_text())["models"]
    for line in lines[:2]:
        entry = manifest[line["model"]]
        assert line["version"] == entry["sha256"][:12]
        assert line["source_sha256"] == entry["source_sha256"]
        assert (line["opsets"], line["parity"]) == (entry["opsets"], entry["parity"])
    assert messages.count("request") == 2  # the probe is left out of the access log
