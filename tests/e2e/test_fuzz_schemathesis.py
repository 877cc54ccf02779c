"""Schema-driven fuzzing of the live multi-worker server: with its own served OpenAPI spec, and
with the upstream Open Inference Protocol REST definition (tests/support/open_inference_rest.yaml,
Apache 2.0, from kserve/open-inference-protocol at d49cc23) on the served models' versioned
routes."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from harness.server import ServerProcess
from support.examples import ROWS

UPSTREAM_REST = Path(__file__).resolve().parents[1] / "support" / "open_inference_rest.yaml"

pytestmark = pytest.mark.e2e


def upstream_definition(url: str, path: Path) -> Path:
    """The upstream REST definition with each served model's name and version filled in: its
    model paths exist only with a version."""
    spec = yaml.safe_load(UPSTREAM_REST.read_text(encoding="utf-8"))
    paths = {}
    for template, item in spec["paths"].items():
        if "${MODEL_NAME}" not in template:
            paths[template] = item
            continue
        item = {method: operation for method, operation in item.items() if method != "parameters"}
        for model in ("sklearn", "pytorch"):
            version = requests.get(f"{url}/v2/models/{model}", timeout=10).json()["versions"][0]
            filled = template.replace("${MODEL_NAME}", model).replace("${MODEL_VERSION}", version)
            paths[filled] = {
                method: {**operation, "operationId": f"{operation['operationId']}-{model}"}
                for method, operation in item.items()
            }
    spec["paths"] = paths
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def schemathesis(schema: str, cwd: Path, *options: str) -> subprocess.Popen[str]:
    """Starts the CLI with every check, in its own folder (it keeps its examples there).

    Every phase runs on every operation. The coverage phase brings each operation's boundary and
    invalid values whatever the count; 25 fuzzed examples an operation on top of them, with the
    seed fixed, still reach every API link the served spec has in the stateful phase and pass
    the counts asserted below (about 1,400 cases for the served spec, 600 for the upstream one)."""
    cwd.mkdir()
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            schema,
            "--max-examples",
            "25",
            "--seed",
            "20261123",
            "--suppress-health-check",
            "all",
            "--no-color",
            *options,
        ],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def generated(run: subprocess.Popen[str]) -> int:
    """How many cases the run generated, all passing."""
    output, _ = run.communicate(timeout=600)
    summary = output[-3000:]
    assert run.returncode == 0, summary
    count, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", summary).groups())
    assert count == passed, summary
    return count


def test_schemathesis_finds_no_failure(server: ServerProcess, tmp_path: Path) -> None:
    """At least 1,000 generated cases: no 5xx, every answer conforms to the spec. The two runs
    go side by side."""
    served = f"{server.url}/openapi.json"
    infer = ("--include-operation-id", "modelInfer", "--include-operation-id", "modelInferVersion")
    runs = [
        schemathesis(
            served,
            tmp_path / "protocols",
            "--checks",
            "all",
            *(option.replace("include", "exclude") for option in infer),
        ),
        # A tensor is valid only when its data fit its shape, which a JSON schema cannot say, so
        # schema-valid inference requests may rightly get 400: that one check is left out there.
        schemathesis(
            served,
            tmp_path / "infer",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            *infer,
        ),
    ]
    total = sum(generated(run) for run in runs)
    assert total >= 1000
    assert "Traceback" not in server.output


def test_the_upstream_rest_definition_finds_no_failure(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The upstream definition's own statuses (200, and 400 for inference): none other, no 5xx,
    every answer within its schemas, on the versioned model routes it defines. The inference
    request's data must fit its shape, which the schema cannot say: positive_data_acceptance is
    left out for that reason alone."""
    schema = upstream_definition(server.url, tmp_path / "open_inference_rest.yaml")
    run = schemathesis(
        str(schema),
        tmp_path / "run",
        "--url",
        server.url,
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
    )
    assert generated(run) >= 300
    assert "Traceback" not in server.output
    # The definition's own example request, with the served input filled in, is answered 200.
    version = requests.get(f"{server.url}/v2/models/sklearn", timeout=10).json()["versions"][0]
    example = {"id": "42", "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64"}]}
    example["inputs"][0]["data"] = ROWS[:2]
    answer = requests.post(
        f"{server.url}/v2/models/sklearn/versions/{version}/infer", json=example, timeout=10
    )
    assert answer.status_code == 200, answer.text
