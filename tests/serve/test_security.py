"""Security properties of the runtime that no other test pins down."""

import ast
import importlib.util
from pathlib import Path

import pytest
from falcon import testing

from harness.server import REPO_ROOT
from serve.app import create_app
from support.fakes import LABELS, SKLEARN_ROWS, FakeClassifier

SERVE = REPO_ROOT / "serve"
FORBIDDEN_IMPORTS = {
    "pickle",
    "joblib",
    "torch",
    "sklearn",
    "skl2onnx",
    "onnx",
    "dill",
    "cloudpickle",
    "shelve",
    "marshal",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(SERVE.glob("*.py")), ids=lambda p: p.name)
def test_runtime_code_imports_nothing_that_unpickles(path: Path) -> None:
    assert not imported_modules(path) & FORBIDDEN_IMPORTS
    assert "allow_pickle" not in path.read_text()


def test_production_gunicorn_settings() -> None:
    spec = importlib.util.spec_from_file_location("gunicorn_conf", SERVE / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    assert conf.reload is False
    assert conf.preload_app is False
    assert conf.loglevel in ("info", "warning", "error")
    assert conf.timeout > 0 and conf.graceful_timeout > 0
    assert not hasattr(conf, "spew") or conf.spew is False


@pytest.mark.parametrize(
    "body",
    [
        b'{"crystalData": [[1, 2, 3, "' + b"A" * 5000 + b'"]]}',
        b'{"crystalData": [[1, 2, 3, 4]], "model": "' + b"B" * 5000 + b'"}',
        b'{"' + b"C" * 5000 + b'": 1}',
        b"D" * 5000,
    ],
)
def test_error_bodies_echo_no_more_than_a_bounded_prefix(body: bytes) -> None:
    models = {"sklearn": FakeClassifier(SKLEARN_ROWS), "pytorch": FakeClassifier(SKLEARN_ROWS)}
    client = testing.TestClient(create_app(models, LABELS))
    result = client.simulate_post("/astromech", body=body)
    assert result.status_code in (400, 422)
    assert len(result.content) < 300
    assert "Traceback" not in result.text
