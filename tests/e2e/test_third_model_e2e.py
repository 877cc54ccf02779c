"""A third model on every surface: a scikit-learn random forest trained here, exported with the
two committed stand-ins by the export's command line (run in this process), and served by the
real server from that folder. Nothing in the service names its models, so the forest must
appear wherever the first two do."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sklearn.ensemble import RandomForestClassifier

from export.__main__ import main as export_cli
from export.frameworks.sklearn import TREES
from export.train_sources import crystals
from harness.server import ServerProcess
from support.export_helpers import STAND_IN_PYTORCH, STAND_IN_SKLEARN
from support.served import check_answers_against_the_served_spec

pytestmark = pytest.mark.e2e

THIRD = "forest"
MODELS = ["forest", "pytorch", "sklearn"]
LABELS = ["blue", "green", "yellow"]
SEED = 0
TRAINING_ROWS = 300
ROWS = np.random.default_rng(SEED + 1).uniform(0, 1, (20, 4))  # rows of their own
JSON = "application/json"


@dataclass(frozen=True)
class Served:
    live: ServerProcess
    models_dir: Path
    forest: RandomForestClassifier

    @property
    def entry(self) -> dict:
        """The forest's manifest entry, as the export wrote it."""
        return json.loads((self.models_dir / "manifest.json").read_text())["models"][THIRD]

    def post(self, path: str, body: object) -> requests.Response:
        return requests.post(self.live.url + path, json=body, timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One worker, so that a scrape shows every count at once (the worker that answers it
    publishes its own); spreading counts over workers is tested in test_operate_e2e."""
    root = tmp_path_factory.mktemp("third-model")
    features, labels = crystals(np.random.default_rng(SEED))
    forest = RandomForestClassifier(n_estimators=10, random_state=SEED)
    forest.fit(features[:TRAINING_ROWS], labels[:TRAINING_ROWS])
    joblib.dump(forest, root / f"{THIRD}.joblib")
    models_dir = root / "onnx_models"
    exported = export_cli(
        [
            *("--model", f"sklearn={STAND_IN_SKLEARN}"),
            *("--model", f"pytorch={STAND_IN_PYTORCH}"),
            *("--model", f"{THIRD}={root / THIRD}.joblib"),
            *("--out", str(models_dir)),
        ]
    )
    assert exported == 0
    live = ServerProcess({"MODELS_DIR": str(models_dir), "WORKERS": "1"}).wait_ready()
    yield Served(live, models_dir, forest)
    live.stop()


def onnxruntime_probabilities(served: Served, rows: np.ndarray) -> np.ndarray:
    """The exported file run directly, on one thread as the server runs it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        served.models_dir / f"{THIRD}.onnx", options, providers=["CPUExecutionProvider"]
    )
    (probabilities,) = session.run(["probabilities"], {"input": rows})
    return probabilities


def top_labels(probabilities: np.ndarray) -> list[str]:
    return [LABELS[i] for i in probabilities.argmax(axis=1)]


def test_its_own_path_answers_what_onnxruntime_and_scikit_learn_compute(served: Served) -> None:
    response = served.post(f"/{THIRD}", {"crystalData": ROWS.tolist()})
    assert response.status_code == 200
    expected = onnxruntime_probabilities(served, ROWS)
    body = response.json()
    assert [list(scores) for scores in body["scores"]] == [LABELS] * len(ROWS)
    assert [list(scores.values()) for scores in body["scores"]] == expected.tolist()
    assert body["prediction"] == top_labels(expected)
    assert np.abs(expected - served.forest.predict_proba(ROWS)).max() <= TREES.bands[0].tolerance
    assert response.headers["X-Model-Version"] == f"{THIRD}/{served.entry['sha256'][:12]}"


def test_astromech_serves_it_and_names_it_among_the_models(served: Served) -> None:
    direct = served.post(f"/{THIRD}", {"crystalData": ROWS.tolist()})
    routed = served.post("/astromech", {"crystalData": ROWS.tolist(), "model": THIRD})
    assert routed.status_code == 200
    assert routed.content == direct.content
    refused = served.post("/astromech", {"crystalData": ROWS.tolist(), "model": "keras"})
    assert refused.status_code == 400
    assert refused.json() == {
        "title": "Invalid model",
        "description": 'model must be "forest" or "pytorch" or "sklearn", got "keras"',
    }


def test_open_inference_protocol_serves_it(served: Served) -> None:
    url, version = served.live.url, served.entry["sha256"][:12]
    metadata = requests.get(f"{url}/v2/models/{THIRD}", timeout=10).json()
    assert (metadata["name"], metadata["versions"], metadata["labels"]) == (
        THIRD,
        [version],
        LABELS,
    )
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    ready = requests.get(f"{url}/v2/models/{THIRD}/ready", timeout=10)
    assert (ready.status_code, ready.json()) == (200, {"name": THIRD, "ready": True})
    assert requests.head(f"{url}/v2/models/{THIRD}/ready", timeout=10).status_code == 200
    config = requests.get(f"{url}/v2/models/{THIRD}/versions/{version}/config", timeout=10).json()
    assert (config["name"], config["parameters"]["version"]["string_value"]) == (THIRD, version)
    index = requests.post(f"{url}/v2/repository/index", timeout=10).json()
    assert {"name": THIRD, "version": version, "state": "READY", "reason": ""} in index

    tensor = {"name": "input", "shape": list(ROWS.shape), "datatype": "FP64"}
    response = served.post(
        f"/v2/models/{THIRD}/infer", {"inputs": [{**tensor, "data": ROWS.ravel().tolist()}]}
    )
    assert response.status_code == 200
    answer = response.json()
    assert (answer["model_name"], answer["model_version"]) == (THIRD, version)
    probabilities, label = answer["outputs"]
    expected = onnxruntime_probabilities(served, ROWS)
    assert (probabilities["shape"], probabilities["data"]) == ([20, 3], expected.ravel().tolist())
    assert label["data"] == top_labels(expected)


def test_served_spec_lists_it_with_its_own_example(served: Served) -> None:
    spec = requests.get(served.live.url + "/openapi.json", timeout=10).json()
    components = spec["components"]
    assert components["schemas"]["AstromechRequest"]["properties"]["model"]["enum"] == MODELS
    assert components["parameters"]["ModelName"]["schema"]["enum"] == MODELS
    operation = spec["paths"][f"/{THIRD}"]["post"]
    request = operation["requestBody"]["content"][JSON]["example"]
    example = operation["responses"]["200"]["content"][JSON]["example"]
    assert served.post(f"/{THIRD}", request).json() == example
    check_answers_against_the_served_spec(served.live, MODELS)


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of the series `name` whose labels include `labels` (0 when there is none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_metrics_count_it(served: Served) -> None:
    scrape = served.live.url + "/metrics"
    before = requests.get(scrape, timeout=10).text
    prediction = served.post(f"/{THIRD}", {"crystalData": ROWS.tolist()}).json()["prediction"]
    after = requests.get(scrape, timeout=10).text

    def added(name: str, **labels: str) -> float:
        return samples(after, name, **labels) - samples(before, name, **labels)

    request = {"endpoint": f"/{THIRD}", "method": "POST", "status": "200"}
    assert added("crystal_requests_total", model=THIRD, **request) == 1
    for label in LABELS:
        assert added("crystal_predictions_total", model=THIRD, label=label) == prediction.count(
            label
        )
    info = {"version": served.entry["sha256"][:12], "source_sha256": served.entry["source_sha256"]}
    assert samples(after, "crystal_model_info", model=THIRD, **info) == 1
