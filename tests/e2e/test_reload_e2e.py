"""Model versions end to end: every prediction names its model and version, and SIGHUP reloads
only models that pass the start-up check, for every worker at once. Worker exits are counted by
reason: a reload or a scale-down apart from a crash or a timeout."""

import hashlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from harness.server import REPO_ROOT, ServerProcess, waits_in_epoll
from support.examples import ROW
from support.onnx_builders import IDENTITY_WEIGHTS, softmax_model, write_models_dir
from support.served import copy_models, wait_until

pytestmark = pytest.mark.e2e
ROWS = {"crystalData": [ROW]}
V2_BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}


def committed_versions() -> dict[str, str]:
    manifest = json.loads((REPO_ROOT / "onnx_models" / "manifest.json").read_text())
    return {name: entry["sha256"][:12] for name, entry in manifest["models"].items()}


def served_versions(live: ServerProcess, times: int = 20) -> set[str]:
    """The X-Model-Version of `times` predictions from both models, over fresh connections."""
    seen = set()
    for _ in range(times):
        for path in ("/sklearn", "/pytorch"):
            response = requests.post(live.url + path, json=ROWS, timeout=10)
            assert response.status_code == 200
            seen.add(response.headers["X-Model-Version"])
    return seen


def replace_worker(live: ServerProcess) -> None:
    """SIGKILL one worker and wait for gunicorn to fork its replacement."""
    before = live.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    wait_until(
        lambda: (pids := live.worker_pids()) != before and len(pids) == len(before),
        f"a worker forked in place of {before[0]}",
        20,
    )
    live.wait_ready()


def test_every_prediction_names_its_model_and_version(server: ServerProcess) -> None:
    versions = committed_versions()
    for path, body, model in (
        ("/sklearn", ROWS, "sklearn"),
        ("/astromech", {**ROWS, "model": "pytorch"}, "pytorch"),
        ("/v2/models/sklearn/infer", V2_BODY, "sklearn"),
    ):
        response = requests.post(server.url + path, json=body, timeout=10)
        assert response.headers["X-Model-Version"] == f"{model}/{versions[model]}"
    error = requests.post(server.url + "/sklearn", json={"crystalData": []}, timeout=10)
    assert "X-Model-Version" not in error.headers  # no model answered


@pytest.fixture(scope="module")
def reloadable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """A server of a copy of the committed models, and that copy: for the tests that change the
    files and reload, each from whatever release the server has."""
    models = copy_models(tmp_path_factory.mktemp("reloadable"))
    live = ServerProcess({"MODELS_DIR": str(models)}).wait_ready()
    yield live, models
    assert live.stop() == 0


def test_reload_with_broken_files_keeps_serving_the_old_models(
    reloadable: tuple[ServerProcess, Path],
) -> None:
    """Files broken after start: SIGHUP is refused in one line, and even a worker started after
    the files broke serves the versions its siblings serve."""
    live, models = reloadable
    manifest = json.loads((models / "manifest.json").read_text())["models"]
    expected = {f"{name}/{entry['sha256'][:12]}" for name, entry in manifest.items()}
    assert served_versions(live) == expected
    data = bytearray((models / "pytorch.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (models / "pytorch.onnx").write_bytes(bytes(data))
    logged = len(live.output)
    live.process.send_signal(signal.SIGHUP)
    line = wait_until(
        lambda: next((x for x in live.output[logged:].splitlines() if "reload refused" in x), None),
        lambda: f"the reload refused in the log:\n{live.output[-2000:]}",
    )
    message = json.loads(line)["message"]
    assert message.startswith("reload refused, the current models stay served")
    assert "model pytorch: checksum mismatch" in message
    assert served_versions(live) == expected
    replace_worker(live)
    assert served_versions(live) == expected


def test_reload_with_new_models_switches_every_worker(
    reloadable: tuple[ServerProcess, Path],
) -> None:
    live, models = reloadable
    new = {
        "sklearn": softmax_model(IDENTITY_WEIGHTS),
        "pytorch": softmax_model(-IDENTITY_WEIGHTS, dtype=np.float32),
    }
    write_models_dir(models, new)
    expected = {f"{n}/{hashlib.sha256(d).hexdigest()[:12]}" for n, d in new.items()}
    old_workers = set(live.worker_pids())
    live.process.send_signal(signal.SIGHUP)
    # The old workers accept until they notice their SIGTERM (gunicorn looks once a second),
    # then finish what they accepted and exit: from then on only the new models answer.
    wait_until(
        lambda: not old_workers & set(pids := live.worker_pids()) and len(pids) == 2,
        "the old workers exited, two new ones running",
    )
    assert served_versions(live) == expected
    model_lines = [json.loads(x) for x in live.output.splitlines() if '"message":"model"' in x]
    assert {f"{x['model']}/{x['version']}" for x in model_lines[-2:]} == expected


def worker_exits(live: ServerProcess) -> dict[str, float]:
    """crystal_worker_exits_total by reason, as /metrics reports it now."""
    text = requests.get(live.url + "/metrics", timeout=10).text
    found = re.findall(r'^crystal_worker_exits_total\{reason="(\w+)"\} (\S+)$', text, re.M)
    return {reason: float(value) for reason, value in found}


def wait_for_exits(live: ServerProcess, expected: dict[str, float], seconds: float = 60) -> None:
    """Polls /metrics until the exits by reason are `expected` (reasons left out are 0)."""
    expected = {"reload": 0, "stop": 0, "timeout": 0, "crash": 0, **expected}
    wait_until(
        lambda: worker_exits(live) == expected,
        lambda: f"worker exits {worker_exits(live)}, expected {expected}",
        seconds,
        every=0.1,
    )


def test_worker_exits_are_counted_by_reason() -> None:
    """A reload retires both workers, a SIGKILL is a crash, a scale-down (TTOU) a stop."""
    live = ServerProcess().wait_ready()
    try:
        wait_for_exits(live, {})
        live.process.send_signal(signal.SIGHUP)
        wait_for_exits(live, {"reload": 2})
        replace_worker(live)
        wait_for_exits(live, {"reload": 2, "crash": 1})
        live.process.send_signal(signal.SIGTTOU)
        wait_for_exits(live, {"reload": 2, "crash": 1, "stop": 1})
        assert len(live.worker_pids()) == 1
    finally:
        assert live.stop() == 0


def test_a_worker_that_stops_reporting_is_counted_as_a_timeout() -> None:
    """A frozen worker (SIGSTOP) misses TIMEOUT: gunicorn kills it, and it is no crash."""
    live = ServerProcess({"TIMEOUT": "3"}).wait_ready()
    try:
        frozen = live.worker_pids()[0]
        # gunicorn times out only a worker that has reported once: until then its heartbeat
        # file holds the wall-clock time of its creation, far ahead of the monotonic clock it is
        # compared with. A worker reports right after it says it listens, then waits in epoll.
        wait_until(
            lambda: any(
                "ASGI server listening" in line and f'"pid":{frozen}}}' in line
                for line in live.output.splitlines()
            ),
            f"worker {frozen} listening",
        )
        wait_until(lambda: waits_in_epoll(frozen), f"worker {frozen} waiting after its report")
        os.kill(frozen, signal.SIGSTOP)
        wait_for_exits(live, {"timeout": 1}, seconds=30)
        assert frozen not in live.worker_pids()
        assert f"WORKER TIMEOUT (pid:{frozen})" in live.output
    finally:
        assert live.stop() == 0
