"""serve/triton.py through falcon's TestClient: statistics, model configuration, the repository
index, the refusals of what is not served, and the model names those routes take."""

import re
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
from falcon import testing

from serve.app import create_app
from serve.manifest import MODEL_NAME, RESERVED_NAMES
from serve.metrics import Metrics, MetricsFolder, Totals, _merge
from serve.settings import Limits
from serve.triton import NOT_MEASURED, model_statistics
from serve.v2 import EXTENSIONS
from support.examples import ROWS
from support.fakes import LABELS, PYTORCH_ROWS, SKLEARN_ROWS, FailingClassifier, FakeClassifier

VERSION = "0123456789ab"


def v2_request(rows: list, **extra: object) -> dict:
    tensor = {"name": "input", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}
    return {"inputs": [tensor], **extra}


@pytest.fixture
def client() -> testing.TestClient:
    models = {
        "sklearn": FailingClassifier(SKLEARN_ROWS),
        "pytorch": FakeClassifier(PYTORCH_ROWS, input_dtype=np.float32),
    }
    return testing.TestClient(create_app(models, LABELS, limits=Limits(max_rows=50)))


def model_stats(client: testing.TestClient, path: str) -> dict[str, dict]:
    result = client.simulate_get(path)
    assert result.status_code == 200
    return {stat["name"]: stat for stat in result.json["model_stats"]}


def test_statistics_count_both_protocols_inference_requests(client: testing.TestClient) -> None:
    """Successes and failures of the POSTs that name the model, rows as inferences, batches as
    executions; metadata reads and other models count nothing."""
    started = time.time()
    client.simulate_post("/sklearn", json={"crystalData": ROWS[:1]})
    client.simulate_post("/astromech", json={"crystalData": ROWS[:1], "model": "sklearn"})
    client.simulate_post("/v2/models/sklearn/infer", json=v2_request(ROWS[:1]))
    client.simulate_post("/v2/models/sklearn/infer", json=v2_request(ROWS[:2]))  # fails: 500
    client.simulate_post("/sklearn", json={"crystalData": [[1, 2, 3]]})  # 422
    client.simulate_get("/v2/models/sklearn")
    client.simulate_post("/pytorch", json={"crystalData": ROWS[:2]})
    stats = model_stats(client, "/v2/models/stats")
    assert sorted(stats) == ["pytorch", "sklearn"]
    sklearn = stats["sklearn"]
    inference = sklearn["inference_stats"]
    assert (inference["success"]["count"], inference["fail"]["count"]) == (3, 2)
    assert inference["success"]["ns"] > 0 and inference["fail"]["ns"] > 0
    # The failed batch reached the model and failed there: not an execution.
    assert (sklearn["inference_count"], sklearn["execution_count"]) == (3, 3)
    assert inference["compute_infer"]["count"] == 3
    assert 0 < inference["compute_infer"]["ns"] < inference["success"]["ns"]
    assert started * 1000 - 1 <= sklearn["last_inference"] <= time.time() * 1000 + 1
    assert all(inference[kind] == {"count": 0, "ns": 0} for kind in NOT_MEASURED)
    pytorch = stats["pytorch"]
    assert (pytorch["inference_count"], pytorch["execution_count"]) == (2, 1)
    assert pytorch["version"] == VERSION


def test_statistics_of_one_model_with_and_without_its_version(client: testing.TestClient) -> None:
    client.simulate_post("/pytorch", json={"crystalData": ROWS[:2]})
    plain = model_stats(client, "/v2/models/pytorch/stats")
    versioned = model_stats(client, f"/v2/models/pytorch/versions/{VERSION}/stats")
    assert list(plain) == list(versioned) == ["pytorch"]
    assert plain["pytorch"]["inference_count"] == versioned["pytorch"]["inference_count"] == 2
    assert client.simulate_get("/v2/models/keras/stats").json == {"error": "no model named 'keras'"}
    assert client.simulate_get("/v2/models/keras/stats").status_code == 404


def test_statistics_add_up_every_worker_live_or_retired(tmp_path: Path) -> None:
    """As /metrics adds them: two live workers and one that exited."""
    folder = MetricsFolder(tmp_path)
    for pid, rows in ((101, 3), (102, 5), (103, 7)):
        worker = Metrics(folder)
        worker.request("v2", "/v2/models/{name}/infer", "POST", "sklearn", "200", 0.5)
        worker.request("droid", "/sklearn", "POST", "sklearn", "422", 0.25)
        worker.prediction("sklearn", 0.125, LABELS, np.zeros(rows, dtype=int), np.ones(rows))
        folder.write(msgspec.structs.replace(worker.snapshot(), pid=pid, worker_id=f"{pid}-1"))
    folder.retire(101, "reload")
    retired, workers = folder.read_all()
    stats = model_statistics("sklearn", VERSION, Totals(_merge([retired, *workers], live=False)))
    inference = stats["inference_stats"]
    assert inference["success"] == {"count": 3, "ns": 1_500_000_000}
    assert inference["fail"] == {"count": 3, "ns": 750_000_000}
    assert inference["compute_infer"] == {"count": 3, "ns": 375_000_000}
    assert (stats["inference_count"], stats["execution_count"]) == (15, 3)


def test_model_configuration_in_tritons_shape(client: testing.TestClient) -> None:
    config = client.simulate_get("/v2/models/pytorch/config").json
    assert config == {
        "name": "pytorch",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 50,
        "input": [
            {"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4]}
        ],
        "output": [
            {
                "name": "probabilities",
                "data_type": "TYPE_FP32",
                "dims": [3],
                "label_filename": "labels.txt",
            },
            {"name": "label", "data_type": "TYPE_STRING", "dims": []},
        ],
        "parameters": {"version": {"string_value": VERSION}},
    }


def test_the_repository_index_lists_models_with_version_and_state() -> None:
    models = {
        "sklearn": FakeClassifier(SKLEARN_ROWS),
        "broken": FakeClassifier([[0.5, 0.6, 0.7]]),  # sums to 1.8: fails its warm-up
    }
    client = testing.TestClient(create_app(models, LABELS))
    every = client.simulate_post("/v2/repository/index")
    assert every.status_code == 200
    assert every.json == [
        {
            "name": "broken",
            "version": VERSION,
            "state": "UNAVAILABLE",
            "reason": "the model failed its warm-up inference",
        },
        {"name": "sklearn", "version": VERSION, "state": "READY", "reason": ""},
    ]
    ready = client.simulate_post("/v2/repository/index", json={"ready": True})
    assert ready.json == every.json[1:]
    assert client.simulate_post("/v2/repository/index", json={"ready": False}).json == every.json


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"ready": "yes"}', "invalid repository index request: Expected `bool`"),
        (b'{"reddy": true}', "Object contains unknown field `reddy`"),
        (b"[", "invalid repository index request"),
        (b'{"ready": "\xff"}', "not valid UTF-8"),
    ],
)
def test_a_bad_repository_index_request_is_400(
    client: testing.TestClient, body: bytes, message: str
) -> None:
    result = client.simulate_post("/v2/repository/index", body=body)
    assert result.status_code == 400
    assert message in result.json["error"]


@pytest.mark.parametrize(
    ("method", "path", "says"),
    [
        ("POST", "/v2/repository/models/sklearn/load", "SIGHUP"),
        ("POST", "/v2/repository/models/sklearn/unload", "SIGHUP"),
        ("GET", "/v2/systemsharedmemory/status", "shared-memory tensors are not supported"),
        ("POST", "/v2/systemsharedmemory/region/r/register", "shared-memory tensors"),
        ("POST", "/v2/cudasharedmemory/unregister", "shared-memory tensors"),
        ("GET", "/v2/trace/setting", "tracing is not served"),
        ("POST", "/v2/models/sklearn/trace/setting", "tracing is not served"),
        ("GET", "/v2/logging", "log settings are not changed through the API"),
    ],
)
def test_features_not_served_are_400_saying_what_to_do(
    client: testing.TestClient, method: str, path: str, says: str
) -> None:
    result = client.simulate_request(method, path)
    assert result.status_code == 400
    assert says in result.json["error"]


EXTENSION_ROUTES = {
    "binary_tensor_data": None,  # tested in test_v2_infer.py
    "classification": None,  # tested in test_v2_infer.py
    "statistics": ("GET", "/v2/models/stats"),
    "model_configuration": ("GET", "/v2/models/sklearn/config"),
    "model_repository": ("POST", "/v2/repository/index"),
}


def test_every_advertised_extension_is_served(client: testing.TestClient) -> None:
    assert client.simulate_get("/v2").json["extensions"] == EXTENSIONS
    assert sorted(EXTENSION_ROUTES) == sorted(EXTENSIONS)
    for route in filter(None, EXTENSION_ROUTES.values()):
        assert client.simulate_request(*route).status_code == 200


def test_every_name_a_route_takes_where_a_model_name_stands_is_reserved(
    client: testing.TestClient,
) -> None:
    """/<name> and /v2/models/<name>: a literal there would hide a model of that name."""
    paths = client.simulate_get("/openapi.json").json["paths"]
    taken = set()
    for path in paths:
        first = path.split("/")[1]
        if not path.startswith(("/sklearn", "/pytorch")):
            taken.add(first)
        found = re.fullmatch(r"/v2/models/([^/{]+)(/.*)?", path)
        if found:
            taken.add(found.group(1))
    taken = {name for name in taken if MODEL_NAME.fullmatch(name)}
    assert taken == {"astromech", "docs", "metrics", "stats", "v2"}
    assert taken <= RESERVED_NAMES
