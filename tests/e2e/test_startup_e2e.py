"""Every start-up misconfiguration (a setting, a model file, the labels, the port) ends
`python -m serve` with one JSON line naming it and exit code 2, before gunicorn starts. `--check`
stops after the same checks, `--help` lists the settings; docs/operations.md lists them as the
source. What a full run writes is in test_serve_e2e.py."""

import json
import os
import socket
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from harness.server import REPO_ROOT, SERVE, ServerProcess
from serve import settings
from serve.errors import StartupError
from serve.logs import REFUSED
from serve.settings import SETTINGS
from support.onnx_builders import softmax_model, write_models_dir
from support.served import copy_models

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


def left_nothing(live: ServerProcess) -> None:
    """After its exit, no process of its session runs and its port is free."""
    with pytest.raises(ProcessLookupError):
        os.killpg(live.process.pid, 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", live.port))


@dataclass(frozen=True)
class Refusal:
    """A deployment `python -m serve` must refuse: its settings (`env`, given a folder of its
    own and a stack to hold what must stay held until it exits), its arguments, and the message
    of its one line, whole or (`whole=False`) its start; `{folder}` stands for the folder."""

    env: Callable[[Path, ExitStack], dict[str, str]]
    message: str
    args: tuple[str, ...] = ()
    whole: bool = False


def given(env: dict[str, str]) -> Callable[[Path, ExitStack], dict[str, str]]:
    return lambda folder, held: env


def tampered_model(folder: Path, held: ExitStack) -> dict[str, str]:
    models = copy_models(folder)
    data = bytearray((models / "pytorch.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (models / "pytorch.onnx").write_bytes(bytes(data))
    return {"MODELS_DIR": str(models)}


def two_labels(folder: Path, held: ExitStack) -> dict[str, str]:
    (folder / "labels.txt").write_text("blue\ngreen\n")
    return {"LABELS_FILE": str(folder / "labels.txt")}


def five_inputs(folder: Path, held: ExitStack) -> dict[str, str]:
    models = {"sklearn": softmax_model(np.ones((5, 3))), "pytorch": softmax_model(np.ones((4, 3)))}
    return {"MODELS_DIR": str(write_models_dir(folder / "models", models))}


def port_in_use(folder: Path, held: ExitStack) -> dict[str, str]:
    taken = held.enter_context(socket.socket())
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return {"PORT": str(taken.getsockname()[1])}


def empty_tokens_file(folder: Path, held: ExitStack) -> dict[str, str]:
    (folder / "tokens").write_text("\n\n")
    return {"AUTH_TOKENS_FILE": str(folder / "tokens")}


REFUSALS = {
    "port-over-65535": Refusal(given({"PORT": "70000"}), "PORT must be at most 65535, got 70000"),
    "port-not-an-integer": Refusal(given({"PORT": "http"}), "PORT must be an integer, got 'http'"),
    "no-workers": Refusal(given({"WORKERS": "0"}), "WORKERS must be at least 1, got 0"),
    "negative-cap": Refusal(
        given({"MAX_IN_FLIGHT": "-1"}), "MAX_IN_FLIGHT must be at least 1, got -1"
    ),
    "log-probes-not-a-boolean": Refusal(
        given({"LOG_PROBES": "sometimes"}), "LOG_PROBES must be true or false"
    ),
    "host-unresolvable": Refusal(
        given({"HOST": "droid.invalid"}), "HOST 'droid.invalid' cannot be resolved"
    ),
    "metrics-dir-unusable": Refusal(
        given({"METRICS_DIR": "/proc/metrics"}), "METRICS_DIR /proc/metrics cannot hold"
    ),
    # "abc" is neither an integer, a number nor a boolean; WEB_CONCURRENCY=abc included, which
    # gunicorn's config would end in a traceback if it were imported first. Any text is a valid
    # host or path: what it names is refused in the cases here and in
    # tests/serve/test_startup_files.py.
    **{
        f"{setting.name}-abc": Refusal(given({setting.name: "abc"}), f"{setting.name} must be ")
        for setting in SETTINGS
        if setting.parse not in ANY_TEXT
    },
    "port-in-use": Refusal(
        port_in_use,
        "PORT {port} on HOST 127.0.0.1 cannot be bound: Address already in use",
        whole=True,
    ),
    "unknown-argument": Refusal(
        given({}),
        "arguments '--chek' not understood; usage: python -m serve [--check | --help]",
        args=("--chek",),
        whole=True,
    ),
    "metrics-port-is-port": Refusal(
        given({"PORT": "3999", "METRICS_PORT": "3999"}),
        "METRICS_PORT must differ from PORT, both are 3999",
        whole=True,
    ),
    "metrics-port-in-use": Refusal(
        lambda folder, held: {"METRICS_PORT": port_in_use(folder, held)["PORT"]},
        "METRICS_PORT ",
    ),
    "no-tokens-file": Refusal(
        lambda folder, held: {"AUTH_TOKENS_FILE": str(folder / "tokens")},
        "AUTH_TOKENS_FILE {folder}/tokens cannot be read: No such file or directory",
        whole=True,
    ),
    "blank-tokens-file-setting": Refusal(
        given({"AUTH_TOKENS_FILE": " "}),
        "AUTH_TOKENS_FILE is blank: name the token file, or unset it to ask no tokens",
        whole=True,
    ),
    "empty-tokens-file": Refusal(empty_tokens_file, "AUTH_TOKENS_FILE {folder}/tokens holds no"),
    "tampered-model": Refusal(tampered_model, "model pytorch: checksum mismatch"),
    "no-labels-file": Refusal(
        lambda folder, held: {"LABELS_FILE": str(folder / "labels.txt")},
        "labels file {folder}/labels.txt",
    ),
    "labels-do-not-fit": Refusal(two_labels, "model pytorch has 3 outputs but there are 2 labels"),
    "wrong-input-width": Refusal(
        five_inputs, "model sklearn: input shape is ['batch', 5], expected [batch, 4]"
    ),
    "check-empty-models-dir": Refusal(
        lambda folder, held: {"MODELS_DIR": str(folder)},
        "manifest {folder}/manifest.json not found",
        args=("--check",),
        whole=True,
    ),
    "check-bad-setting": Refusal(
        given({"BODY_TIMEOUT": "0"}),
        "BODY_TIMEOUT must be positive and finite, got '0'",
        args=("--check",),
        whole=True,
    ),
}


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ServerProcess, str]]:
    """Every case of REFUSALS started at once (side by side, their interpreters' start-ups
    overlap), run to its exit: the process and the message its line must give."""
    started = {}
    with ExitStack() as held:
        for name, case in REFUSALS.items():
            folder = tmp_path_factory.mktemp(name)
            live = ServerProcess(case.env(folder, held), command=(*SERVE, *case.args))
            port = live.env["PORT"]
            message = REFUSED + case.message.format(folder=folder, port=port)
            started[name] = (live, message)
        for live, _ in started.values():
            live.process.wait(timeout=60)
    return started


@pytest.mark.parametrize("name", REFUSALS)
def test_a_bad_deployment_is_one_json_line_and_exit_2(
    refusals: dict[str, tuple[ServerProcess, str]], name: str
) -> None:
    live, message = refusals[name]
    line = refusal_line(live)
    if REFUSALS[name].whole:
        assert line["message"] == message
    else:
        assert line["message"].startswith(message), line["message"]
    left_nothing(live)


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
    *models, tokens = lines
    assert sorted(line["model"] for line in models) == sorted(manifest)
    assert {line["message"] for line in models} == {"model"}
    assert tokens["message"].startswith("bearer tokens off (AUTH_TOKENS_FILE unset)")
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
