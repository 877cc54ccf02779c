"""Every kind of model a data team brings, trained and saved here, exported by the CLI in one
run, served through the app, and compared with the original objects: PyTorch networks of other
architectures (a torch.export program and TorchScript, float32 and float64), a network that ends
in logits (--softmax), ready-made ONNX graphs (against a reference, and against themselves), a
calibrated forest, and class labels named as in labels.txt."""

import hashlib
import json
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest
import skl2onnx
import torch
from falcon import testing
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from torch import nn

from export.classes import LABELS
from export.train_sources import crystals
from support.export_helpers import run_forked, served
from support.onnx_builders import softmax_model

pytestmark = pytest.mark.slow  # whole exports: left out of make test-fast

SEED = 0
TRAINING_ROWS = 300
STEPS = 60
KINDS = [
    "deep-program",
    "deep-script",
    "wide-trace",
    "double",
    "logits",
    "calibrated",
    "named",
    "ready",
    "given",
]


class Deep(nn.Module):
    """Three hidden layers of 32 (the crystal network has two of 50). The reshape reads the batch
    size, which the converted graph must keep symbolic."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(4, 32),
            nn.Tanh(),
            nn.Linear(32, 32),
            nn.Tanh(),
            nn.Linear(32, 32),
            nn.Tanh(),
            nn.Linear(32, 3),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x).reshape(x.shape[0], -1), dim=1)


class Wide(nn.Module):
    """One hidden layer of 128."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 128)
        self.out = nn.Linear(128, 3)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


class Logits(Wide):
    """Ends in logits, as a network trained with CrossEntropyLoss often does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


def train(network: Deep | Wide, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A few full-batch Adam steps on the cross-entropy of the logits: enough to separate the
    crystals, quick enough for a test."""
    torch.manual_seed(SEED)
    network = network.to(dtype)
    features, labels = crystals(np.random.default_rng(SEED))
    inputs = torch.from_numpy(features[:TRAINING_ROWS]).to(dtype)
    targets = torch.from_numpy(labels[:TRAINING_ROWS])
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(network.logits(inputs), targets).backward()
        optimizer.step()
    return network.eval()


def torch_probabilities(network: nn.Module, dtype: torch.dtype, softmax: bool = False):
    def original(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            outputs = network(torch.from_numpy(rows).to(dtype))
            return (torch.softmax(outputs, dim=1) if softmax else outputs).double().numpy()

    return original


@dataclass(frozen=True)
class Kind:
    file: str
    framework: str
    family: str
    input_dtype: str
    # Of the served answers against the original object, on rows within ±10.
    tolerance: float
    original: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Exported:
    kinds: dict[str, Kind]
    sources: Path
    out: Path
    result: subprocess.CompletedProcess[str]


def _sources(folder: Path) -> dict[str, Kind]:
    """Each kind trained and saved in `folder`, with what its original object answers."""
    folder.mkdir()
    features, labels = crystals(np.random.default_rng(SEED))
    features, labels = features[:TRAINING_ROWS], labels[:TRAINING_ROWS]
    batch = torch.export.Dim.DYNAMIC
    example = (torch.zeros(2, 4),)

    deep = train(Deep())
    program = torch.export.export(deep, example, dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / "deep.pt2")
    wide = train(Wide())
    double = train(Deep(), torch.float64)
    with warnings.catch_warnings():
        # torch deprecates TorchScript; teams still save networks with it.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(deep), folder / "deep.pt")
        torch.jit.save(torch.jit.trace(wide, example), folder / "wide.pt")
        torch.jit.save(torch.jit.script(double), folder / "double.pt")
    logits = train(Logits())
    torch.export.save(
        torch.export.export(logits, example, dynamic_shapes=({0: batch},)),
        folder / "logits.pt2",
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        calibrated = CalibratedClassifierCV(
            RandomForestClassifier(n_estimators=10, random_state=SEED)
        ).fit(features, labels)
    joblib.dump(calibrated, folder / "calibrated.joblib")
    named = RandomForestClassifier(n_estimators=10, random_state=SEED)
    named.fit(features, np.array(LABELS)[labels])
    joblib.dump(named, folder / "named.joblib")

    # Ready-made: a forest converted by its team with float32 input `X` and the outputs `label`
    # and `probabilities`, with the forest's answers on rows of the team's own as reference.
    forest = RandomForestClassifier(n_estimators=10, random_state=SEED).fit(features, labels)
    graph = convert_sklearn(
        forest,
        initial_types=[("X", FloatTensorType([None, 4]))],
        options={id(forest): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    (folder / "ready.onnx").write_bytes(graph.SerializeToString())
    rows = np.random.default_rng(SEED + 1).uniform(0.0, 1.0, (500, 4))
    np.save(folder / "rows.npy", rows)
    np.save(folder / "probabilities.npy", forest.predict_proba(rows.astype(np.float32)))
    # Ready-made, no reference: a float64 graph with input `features` and one output `scores`.
    weights = np.random.default_rng(SEED).normal(size=(4, 3))
    given = softmax_model(weights, input_name="features", output_name="scores")
    (folder / "given.onnx").write_bytes(given)
    given_session = ort.InferenceSession(given, providers=["CPUExecutionProvider"])

    def given_graph(rows: np.ndarray) -> np.ndarray:
        return given_session.run(["scores"], {"features": rows})[0]

    def forest_float32(rows: np.ndarray) -> np.ndarray:
        return forest.predict_proba(rows.astype(np.float32))

    return {
        "deep-program": Kind(
            "deep.pt2",
            "pytorch",
            "ExportedProgram(Deep)",
            "float32",
            1e-6,
            torch_probabilities(deep, torch.float32),
        ),
        "deep-script": Kind(
            "deep.pt",
            "pytorch",
            "TorchScript(Deep)",
            "float32",
            1e-6,
            torch_probabilities(deep, torch.float32),
        ),
        "wide-trace": Kind(
            "wide.pt",
            "pytorch",
            "TorchScript(Wide)",
            "float32",
            1e-6,
            torch_probabilities(wide, torch.float32),
        ),
        "double": Kind(
            "double.pt",
            "pytorch",
            "TorchScript(Deep)",
            "float64",
            1e-12,
            torch_probabilities(double, torch.float64),
        ),
        "logits": Kind(
            "logits.pt2",
            "pytorch",
            "ExportedProgram(Logits)",
            "float32",
            1e-6,
            torch_probabilities(logits, torch.float32, softmax=True),
        ),
        "calibrated": Kind(
            "calibrated.joblib",
            "sklearn",
            "CalibratedClassifierCV",
            "float64",
            1e-5,
            calibrated.predict_proba,
        ),
        "named": Kind(
            "named.joblib",
            "sklearn",
            "RandomForestClassifier",
            "float64",
            1e-5,
            named.predict_proba,
        ),
        "ready": Kind(
            "ready.onnx",
            "onnx",
            f"ONNX(skl2onnx {skl2onnx.__version__})",
            "float32",
            1e-6,
            forest_float32,
        ),
        "given": Kind(
            "given.onnx", "onnx", "ONNX(unknown producer)", "float64", 1e-15, given_graph
        ),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("kinds")
    sources = root / "sources"
    kinds = _sources(sources)
    out = root / "out"
    models = [
        arg for name, kind in kinds.items() for arg in ("--model", f"{name}={sources / kind.file}")
    ]
    command = (
        *models,
        *("--softmax", "logits"),
        *("--reference", f"ready={sources / 'rows.npy'},{sources / 'probabilities.npy'}"),
        *("--out", str(out)),
    )
    result = run_forked("export", {"all": command})["all"]
    return Exported(kinds, sources, out, result)


@pytest.fixture(scope="module")
def client(exported: Exported) -> testing.TestClient:
    assert exported.result.returncode == 0, exported.result.stderr
    return served(exported.out)


def _manifest(exported: Exported) -> dict:
    return json.loads((exported.out / "manifest.json").read_text())


def _rows() -> np.ndarray:
    """Rows of their own, not the export's probe rows: crystals and beyond, within ±10."""
    rng = np.random.default_rng(SEED + 2)
    return np.vstack(
        [rng.uniform(0.0, 1.0, (300, 4)), np.clip(rng.normal(0.5, 3.0, (100, 4)), -10, 10)]
    )


def test_every_kind_exports_in_one_run(exported: Exported) -> None:
    result = exported.result
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == KINDS == list(exported.kinds)
    assert lines[-1] == f"wrote {exported.out / 'manifest.json'}"
    assert sorted(_manifest(exported)["models"]) == sorted(exported.kinds)


@pytest.mark.parametrize("name", KINDS)
def test_the_served_answers_are_the_original_objects(
    exported: Exported, client: testing.TestClient, name: str
) -> None:
    """Through the app as the service serves the folder, on rows the export never saw."""
    kind = exported.kinds[name]
    rows = _rows()
    result = client.simulate_post(f"/{name}", json={"crystalData": rows.tolist()})
    assert result.status_code == 200, result.text
    served_scores = np.array([[row[label] for label in LABELS] for row in result.json["scores"]])
    expected = kind.original(rows.astype(kind.input_dtype))

    assert served_scores.shape == expected.shape == (len(rows), 3)
    assert np.abs(served_scores - expected).max() <= kind.tolerance
    top_two = np.sort(expected, axis=1)[:, -2:]
    decided = top_two[:, 1] - top_two[:, 0] > max(kind.tolerance, 1e-12)
    assert decided.mean() > 0.95
    predictions = np.array(result.json["prediction"])
    assert (predictions == np.array(LABELS)[expected.argmax(axis=1)])[decided].all()


@pytest.mark.parametrize("name", KINDS)
def test_manifest_says_what_each_kind_is_and_what_was_proved(exported: Exported, name: str) -> None:
    kind = exported.kinds[name]
    entry = _manifest(exported)["models"][name]
    assert (entry["framework"], entry["family"], entry["input_dtype"]) == (
        kind.framework,
        kind.family,
        kind.input_dtype,
    )
    assert entry["source_file"] == kind.file
    parity = entry["parity"]
    assert parity["class_mismatches"] == 0
    for key in (key for key in parity if key.startswith("max_abs_diff")):
        assert 0 <= parity[key] <= parity[key.replace("max_abs_diff", "tolerance")]
    assert entry.get("softmax_appended", False) == (name == "logits")
    assert ("onnxscript" in entry["exporter"]) == kind.file.endswith(".pt2")
    if name == "ready":
        assert parity["rows"] == 500
        assert entry["parity_against"] == {
            "reference": {
                "rows_file": "rows.npy",
                "rows_sha256": _sha256(exported.sources / "rows.npy"),
                "probabilities_file": "probabilities.npy",
                "probabilities_sha256": _sha256(exported.sources / "probabilities.npy"),
            }
        }
    elif name == "given":
        assert parity["rows"] == 10_043
        assert entry["parity_against"] == "the given graph"
        assert parity["max_abs_diff_within_10"] == parity["max_abs_diff_beyond_10"] == 0.0
    else:
        assert parity["rows"] == 10_043
        assert "parity_against" not in entry


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_network_of_a_program_keeps_a_dynamic_batch(client: testing.TestClient) -> None:
    """One row and a thousand rows, through the reshape that reads the batch size."""
    rows = np.random.default_rng(SEED + 3).uniform(size=(1_000, 4))
    alone = client.simulate_post("/deep-program", json={"crystalData": rows[:1].tolist()})
    many = client.simulate_post("/deep-program", json={"crystalData": rows.tolist()})
    assert alone.status_code == many.status_code == 200
    assert len(many.json["scores"]) == 1_000
    first = many.json["scores"][0]
    assert all(abs(alone.json["scores"][0][label] - first[label]) <= 1e-6 for label in LABELS)
