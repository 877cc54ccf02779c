"""Every start-up misconfiguration ends `python -m serve` with one JSON line naming the setting
and exit code 2, before gunicorn starts; and every line a full run writes is JSON. `--check`
stops after the same checks, `--help` lists the settings; docs/operations.md lists them as the
source."""

import json
import os
import socket
from pathlib import Path

import pytest
import requests

from harness.server import REPO_ROOT, SERVE, ServerProcess
from serve import settings
from serve.errors import StartupError
from serve.settings import SETTINGS

pytestmark = pytest.mark.e2e

CHECK = (*SERVE, "--check")
# Settings that take any text: what they name (a host, a folder) is refused later, at the check.
ANY_TEXT = (settings.text, settings.path)


def refusal_line(live: ServerProcess) -> dict:
    """The one line, JSON, of a server that exited with code 2 (so no traceback either)."""
    assert live.process.wait(timeout=30) == 2
    lines = live.output.splitlines()
    assert len(lines) == 1, live.output
    line = json.loads(lines[0])
    assert (line["level"], line["logger"], line["exit_code"]) == ("error", "serve", 2)
    return line


def refused(env: dict[str, str]) -> dict:
    return refusal_line(ServerProcess(env))


def left_nothing(live: ServerProcess) -> None:
    """After its exit, no process of its session runs and its port is free."""
    with pytest.raises(ProcessLookupError):
        os.killpg(live.process.pid, 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", live.port))


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


# Any text is a valid host or path: what it names is refused at start, in the cases above
# (HOST, METRICS_DIR) and in tests/serve/test_startup_files.py (MODELS_DIR, LABELS_FILE).
@pytest.mark.parametrize(
    "setting",
    [pytest.param(s, id=s.name) for s in SETTINGS if s.parse not in ANY_TEXT],
)
def test_every_setting_with_a_bad_value_is_one_json_line_and_exit_2(
    setting: settings.Setting,
) -> None:
    """ "abc" is neither an integer, a number nor a boolean; WEB_CONCURRENCY=abc included, which
    gunicorn's config would end in a traceback if it were imported first."""
    line = refused({setting.name: "abc"})
    assert line["message"].startswith(f"cannot start: {setting.name} must be ")


def test_each_shown_default_is_the_default() -> None:
    """--help and docs/operations.md show the default that applies, where it is a plain value."""
    for setting in SETTINGS:
        if setting.parse in ANY_TEXT:
            continue
        try:
            value = setting.parse(setting.name, setting.shown.split()[0])
        except StartupError:
            continue  # a description, e.g. "WEB_CONCURRENCY, else the number of cores"
        assert value == setting.default, setting.name


def test_an_unknown_argument_is_one_json_line_and_exit_2() -> None:
    line = refusal_line(ServerProcess(command=(*SERVE, "--chek")))
    assert line["message"] == (
        "cannot start: arguments '--chek' not understood; usage: python -m serve [--check | --help]"
    )


def test_help_lists_every_setting_and_serves_nothing() -> None:
    """Help needs no valid setting: WEB_CONCURRENCY=abc would stop gunicorn's config import."""
    live = ServerProcess({"WEB_CONCURRENCY": "abc"}, command=(*SERVE, "--help"))
    assert live.process.wait(timeout=10) == 0
    assert live.output.startswith("usage: python -m serve [--check | --help]\n")
    for setting in SETTINGS:
        assert f"  {setting.name} (default: {setting.shown})\n" in live.output
    left_nothing(live)


def test_check_passes_the_committed_models_and_serves_nothing() -> None:
    live = ServerProcess(command=CHECK)
    assert live.process.wait(timeout=60) == 0, live.output
    lines = [json.loads(line) for line in live.output.splitlines()]
    manifest = json.loads((REPO_ROOT / "onnx_models" / "manifest.json").read_text())["models"]
    assert sorted(line["model"] for line in lines) == sorted(manifest)
    assert {line["message"] for line in lines} == {"model"}
    left_nothing(live)


def test_check_refuses_an_empty_models_dir_with_one_json_line(tmp_path: Path) -> None:
    live = ServerProcess({"MODELS_DIR": str(tmp_path)}, command=CHECK)
    line = refusal_line(live)
    assert line["message"] == f"cannot start: manifest {tmp_path / 'manifest.json'} not found"
    left_nothing(live)


def test_check_refuses_a_bad_setting_with_one_json_line() -> None:
    live = ServerProcess({"BODY_TIMEOUT": "0"}, command=CHECK)
    line = refusal_line(live)
    assert line["message"] == "cannot start: BODY_TIMEOUT must be positive and finite, got '0'"
    left_nothing(live)


def readme_settings() -> list[tuple[str, ...]]:
    """(name, default, meaning) of every row of the settings table (docs/operations.md, linked
    from the README), markup removed."""
    readme = (REPO_ROOT / "docs" / "operations.md").read_text()
    table = readme.split("| setting | default | meaning |\n| --- | --- | --- |\n", 1)[1]
    rows = table.split("\n\n", 1)[0].splitlines()
    return [
        tuple(cell.strip().replace("`", "") for cell in row.strip("|").split(" | ")) for row in rows
    ]


def test_the_readme_table_lists_the_settings_of_the_source() -> None:
    assert readme_settings() == [(s.name, s.shown, s.meaning) for s in SETTINGS]


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
