"""The exported files: I/O contract, parity with the source models, manifest, committed copies.

Both the project's stand-in sources and the data team's handout models are exported once per
module into a temporary folder and checked the same way.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skl2onnx
import sklearn
import torch

from export.pipeline import export_models
from export.sources import load_pytorch, load_sklearn, parse_model_specs
from support.examples import ROWS
from support.export_helpers import COMMITTED_MODELS, REPO_ROOT, STAND_IN_PYTORCH, STAND_IN_SKLEARN

# What predict_proba gives in float64 on the published example of the handout README (ROWS).
PUBLISHED_PROBABILITIES = [
    [0.9927769331813387, 0.007223053394387628, 1.3424273700413213e-08],
    [0.9924667517303258, 0.007533175370560812, 7.28991131694263e-08],
    [0.9954911544544908, 0.004508736468972019, 1.0907653719137907e-07],
]
DTYPES = {"sklearn": np.float64, "pytorch": np.float32}
FAMILIES = {"sklearn": "LogisticRegression", "pytorch": "CrystalNet"}
ENTRY_KEYS = {
    "file",
    "sha256",
    "framework",
    "family",
    "source_file",
    "source_sha256",
    "input_name",
    "input_dtype",
    "output_name",
    "n_features",
    "n_classes",
    "opsets",
    "exporter",
    "parity",
}
# The measured figures depend on the CPU's arithmetic kernels; everything else must not.
MEASURED = {"max_abs_diff", "max_abs_diff_within_10", "max_abs_diff_beyond_10"}


@dataclass(frozen=True)
class Exported:
    sources: dict[str, Path]
    out: Path

    def session(self, name: str) -> ort.InferenceSession:
        return ort.InferenceSession(
            str(self.out / f"{name}.onnx"), providers=["CPUExecutionProvider"]
        )

    def manifest(self) -> dict:
        return json.loads((self.out / "manifest.json").read_text())


def _export(sklearn_path: Path, pytorch_path: Path, out: Path) -> Exported:
    """Both models, their frameworks recognised from the files."""
    export_models(parse_model_specs([f"sklearn={sklearn_path}", f"pytorch={pytorch_path}"]), out)
    return Exported({"sklearn": sklearn_path, "pytorch": pytorch_path}, out)


@pytest.fixture(scope="module")
def stand_in_export(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export(STAND_IN_SKLEARN, STAND_IN_PYTORCH, tmp_path_factory.mktemp("stand-in") / "out")


@pytest.fixture(scope="module")
def handout_export(handout_dir: Path, handout_models: Path) -> Exported:
    sources = {name: handout_dir / f"{name}.model" for name in ("sklearn", "pytorch")}
    return Exported(sources, handout_models)


@pytest.fixture(scope="module", params=["stand_in_export", "handout_export"])
def exported(request: pytest.FixtureRequest) -> Exported:
    return request.getfixturevalue(request.param)


def _test_rows() -> np.ndarray:
    """Rows of their own (not the export's probe set): 10,000 seeded random rows plus edges."""
    rng = np.random.default_rng(2718)
    edges = [
        np.zeros(4),
        np.ones(4),
        -np.ones(4),
        [1.0, 2.0, 3.0, 4.0],
        [-2.0, 7.0, -5.0, 0.0],
        [1000.0, 0.0, 0.0, 0.0],
        [-3000.0, 2000.0, -1000.0, 4000.0],
        [9999.5, -9999.5, 0.5, -0.5],
    ]
    return np.vstack(
        [
            rng.uniform(0.0, 1.0, (7_000, 4)),
            rng.normal(0.5, 3.0, (2_000, 4)),
            rng.uniform(-1_000.0, 1_000.0, (1_000, 4)),
            np.array(edges),
        ]
    )


def _native(name: str, source: Path, rows: np.ndarray) -> np.ndarray:
    if name == "sklearn":
        return load_sklearn(source).model.predict_proba(rows)
    with torch.no_grad():
        return load_pytorch(source).model(torch.from_numpy(rows)).numpy()


def _tolerances(name: str, rows: np.ndarray) -> np.ndarray:
    if name == "sklearn":
        return np.full(len(rows), 1e-12)
    return np.where(np.abs(rows).max(axis=1) <= 10, 1e-6, 1e-4)


@pytest.mark.parametrize("name", ["sklearn", "pytorch"])
def test_onnxruntime_reproduces_the_source_model(exported: Exported, name: str) -> None:
    rows = _test_rows().astype(DTYPES[name])
    expected = _native(name, exported.sources[name], rows).astype(np.float64)
    (actual,) = exported.session(name).run(["probabilities"], {"input": rows})
    tolerance = _tolerances(name, rows)

    assert len(rows) > 10_000
    assert actual.shape == expected.shape == (len(rows), 3)
    assert (np.abs(actual - expected).max(axis=1) <= tolerance).all()
    top_two = np.sort(expected, axis=1)[:, -2:]
    decided = top_two[:, 1] - top_two[:, 0] > tolerance
    assert decided.mean() > 0.99
    assert (actual.argmax(axis=1) == expected.argmax(axis=1))[decided].all()


def test_handout_sklearn_returns_the_published_numbers_exactly(handout_export: Exported) -> None:
    (probabilities,) = handout_export.session("sklearn").run(
        ["probabilities"], {"input": np.array(ROWS, dtype=np.float64)}
    )
    assert probabilities.dtype == np.float64
    assert probabilities.tolist() == PUBLISHED_PROBABILITIES
    assert probabilities.argmax(axis=1).tolist() == [0, 0, 0]


@pytest.mark.parametrize(("name", "elem_type"), [("sklearn", "DOUBLE"), ("pytorch", "FLOAT")])
def test_files_follow_the_io_contract(exported: Exported, name: str, elem_type: str) -> None:
    graph = onnx.load(exported.out / f"{name}.onnx").graph
    assert [value.name for value in graph.input] == ["input"]
    assert [value.name for value in graph.output] == ["probabilities"]
    for value, width in ((graph.input[0], 4), (graph.output[0], 3)):
        tensor = value.type.tensor_type
        assert tensor.elem_type == getattr(onnx.TensorProto, elem_type)
        batch, features = tensor.shape.dim
        assert batch.dim_param == "batch"
        assert not batch.HasField("dim_value")
        assert features.dim_value == width

    session = exported.session(name)
    for batch_size in (1, 1000):
        rows = np.random.default_rng(batch_size).uniform(size=(batch_size, 4))
        (probabilities,) = session.run(None, {"input": rows.astype(DTYPES[name])})
        assert probabilities.shape == (batch_size, 3)
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_manifest_describes_the_files(exported: Exported) -> None:
    text = (exported.out / "manifest.json").read_text()
    manifest = json.loads(text)
    assert text == json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    assert manifest["format_version"] == 1
    assert sorted(manifest["models"]) == ["pytorch", "sklearn"]
    assert sorted(path.name for path in exported.out.iterdir()) == [
        "manifest.json",
        "pytorch.onnx",
        "sklearn.onnx",
    ]
    frameworks = {
        "sklearn": {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__},
        "pytorch": {"torch": torch.__version__},
    }
    for name, entry in manifest["models"].items():
        data = (exported.out / entry["file"]).read_bytes()
        source = exported.sources[name]
        assert set(entry) == ENTRY_KEYS
        assert entry["file"] == f"{name}.onnx"
        assert (entry["framework"], entry["family"]) == (name, FAMILIES[name])
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["source_file"] == source.name
        assert entry["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert (entry["input_name"], entry["output_name"]) == ("input", "probabilities")
        assert entry["input_dtype"] == np.dtype(DTYPES[name]).name
        assert (entry["n_features"], entry["n_classes"]) == (4, 3)
        opsets = {opset.domain: opset.version for opset in onnx.load_from_string(data).opset_import}
        assert entry["opsets"] == opsets
        assert entry["exporter"] == {
            **frameworks[name],
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        }
        parity = entry["parity"]
        assert parity["rows"] >= 10_000
        assert parity["class_mismatches"] == 0
        for key in MEASURED & set(parity):
            assert 0 <= parity[key] <= parity[key.replace("max_abs_diff", "tolerance")]
    sklearn_parity = manifest["models"]["sklearn"]["parity"]
    assert sklearn_parity["tolerance_within_10"] == 1e-12
    assert sklearn_parity["tolerance_beyond_10"] == 1e-10
    pytorch_parity = manifest["models"]["pytorch"]["parity"]
    assert pytorch_parity["tolerance_within_10"] == 1e-6
    assert pytorch_parity["tolerance_beyond_10"] == 1e-4


def test_committed_manifest_matches_committed_files() -> None:
    """Also in an image build, where onnx_models/ holds the models that build exported."""
    manifest = json.loads((COMMITTED_MODELS / "manifest.json").read_text())
    assert manifest["models"]
    for entry in manifest["models"].values():
        data = (COMMITTED_MODELS / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        parity = entry["parity"]
        assert parity["class_mismatches"] == 0
        for key in MEASURED & set(parity):
            assert 0 <= parity[key] <= parity[key.replace("max_abs_diff", "tolerance")]


def _without_measurements(manifest: dict) -> dict:
    for entry in manifest["models"].values():
        for key in MEASURED & set(entry["parity"]):
            entry["parity"][key] = "measured"
    return manifest


def _differences(committed: Path, fresh: Path) -> list[str]:
    """The files that differ: ONNX files byte for byte, the manifest except measured figures."""
    names = sorted({path.name for folder in (committed, fresh) for path in folder.iterdir()})
    return [name for name in names if not _same(committed / name, fresh / name)]


def _same(committed: Path, fresh: Path) -> bool:
    if not (committed.is_file() and fresh.is_file()):
        return False
    if committed.name == "manifest.json":
        return _without_measurements(json.loads(committed.read_text())) == _without_measurements(
            json.loads(fresh.read_text())
        )
    return committed.read_bytes() == fresh.read_bytes()


def test_committed_models_are_what_the_export_makes(stand_in_export: Exported) -> None:
    """`make export` must have been run after the last change to the sources or the export.

    The ONNX files must match byte for byte. So must the manifest, except the measured parity
    figures, which depend on the CPU's arithmetic kernels (test_manifest_describes_the_files
    checks they are within tolerance).
    """
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout (an image build): no committed onnx_models/ to compare")
    differing = _differences(COMMITTED_MODELS, stand_in_export.out)
    assert not differing, (
        f"onnx_models/ differs from a fresh export of export/sources/ ({', '.join(differing)}): "
        "run `make export` and commit, or if you exported other models on purpose, export them "
        "with OUT=elsewhere"
    )
