"""What the export refuses of the new kinds, each in one line on stderr that says what to do,
with what torch, onnx and scikit-learn warned on the way summarised on that line; and the
framework a file really is when --model names another."""

import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import onnx
import pytest
import torch
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from torch import nn

from export.train_sources import crystals
from support.export_helpers import run_forked, snapshot
from support.onnx_builders import IDENTITY_WEIGHTS, softmax_model

pytestmark = pytest.mark.slow  # every refusal run by the CLI: left out of make test-fast

SEED = 0
TORCH_FILE = "a PyTorch file (torch.save, torch.jit.save or torch.export.save)"
DYNAMIC_BATCH_FIX = (
    "export it with a dynamic batch: torch.export.export(network, (rows,), "
    "dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)) with 2 or more example rows"
)


@torch.library.custom_op("crystal_tests::doubled", mutates_args=())
def doubled(x: torch.Tensor) -> torch.Tensor:
    """An op of the team's own: registered where the program was exported, not in the export."""
    return x * 2


@doubled.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Network(nn.Module):
    """Linear(width_in, width_out), with a softmax unless `logits`; warns on every call if told."""

    def __init__(self, width_in: int = 4, width_out: int = 3, logits: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(width_in, width_out)
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        return y if self.logits else torch.softmax(y, dim=1)


class Warns(nn.Module):
    """Warns on every call, as a network may (TorchScript keeps the warning)."""

    def __init__(self, logits: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 3)
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("the calibration drifts", stacklevel=2)
        y = self.layer(x)
        return y if self.logits else torch.softmax(y, dim=1)


class CustomOp(Network):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.ops.crystal_tests.doubled(x))


def _script(network: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch deprecates TorchScript
        torch.jit.save(torch.jit.script(network.eval()), path)


def _program(network: nn.Module, path: Path, rows: int = 2, dynamic: bool = True) -> None:
    shapes = ({0: torch.export.Dim.DYNAMIC},) if dynamic else None
    program = torch.export.export(network.eval(), (torch.zeros(rows, 4),), dynamic_shapes=shapes)
    torch.export.save(program, path)


def _graph(data: bytes, change: str) -> bytes:
    """A softmax graph with one thing wrong: a fixed batch, or an op no opset has."""
    model = onnx.load_from_string(data)
    if change == "fixed":
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    else:
        model.graph.node[-1].op_type = "Softmaxx"
    return model.SerializeToString()


def _bad_sources(folder: Path) -> None:
    folder.mkdir()
    torch.manual_seed(SEED)
    features, labels = crystals(np.random.default_rng(SEED))
    features, labels = features[:300], labels[:300]
    _program(Network(), folder / "static.pt2", rows=1, dynamic=False)
    _program(Network(), folder / "probabilities.pt2")
    _program(CustomOp(), folder / "custom_op.pt2")
    data = (folder / "probabilities.pt2").read_bytes()
    (folder / "truncated.pt2").write_bytes(data[: len(data) // 2])
    _script(Network(logits=True), folder / "logits.pt")
    _script(Network(width_out=5), folder / "five_classes.pt")
    _script(Network(width_in=5), folder / "five_features.pt")
    _script(Warns(), folder / "warns.pt")
    _script(Warns(logits=True), folder / "warns_logits.pt")

    joblib.dump(LogisticRegression().fit(features, labels), folder / "logistic.joblib")
    other = np.array(["red", "green", "yellow"])[labels]
    joblib.dump(LogisticRegression().fit(features, other), folder / "red.joblib")
    zipmap = LogisticRegression().fit(features, labels)
    graph = convert_sklearn(zipmap, initial_types=[("X", FloatTensorType([None, 4]))])
    (folder / "zipmap.onnx").write_bytes(graph.SerializeToString())
    red = joblib.load(folder / "red.joblib")
    graph = convert_sklearn(
        red,
        initial_types=[("X", FloatTensorType([None, 4]))],
        options={id(red): {"zipmap": False}},
    )
    (folder / "red.onnx").write_bytes(graph.SerializeToString())
    given = softmax_model(IDENTITY_WEIGHTS)
    (folder / "given.onnx").write_bytes(given)
    (folder / "fixed.onnx").write_bytes(_graph(given, "fixed"))
    (folder / "no_such_op.onnx").write_bytes(_graph(given, "op"))
    (folder / "five.onnx").write_bytes(softmax_model(np.ones((5, 3)), input_name="features"))
    np.save(folder / "rows.npy", features[:10])
    np.save(folder / "probabilities.npy", zipmap.predict_proba(features[:10]))
    np.save(folder / "four_columns.npy", features[:10])


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    message: str  # after "export: error: "; {bad} is the folder of sources
    whole: bool = True  # the whole line, or only its start (where a library's words follow)


def _model(target: str, *more: str) -> tuple[str, ...]:
    return ("--model", f"x={target}", *more)


REFUSED = {
    "program-of-a-fixed-batch": Case(
        _model("{bad}/static.pt2"),
        "model x: {bad}/static.pt2: the program was exported for a fixed batch size (1); "
        + DYNAMIC_BATCH_FIX,
    ),
    "program-with-an-op-not-here": Case(
        _model("{bad}/custom_op.pt2"),
        f"model x: {{bad}}/custom_op.pt2: a torch.export archive that torch {torch.__version__} "
        "cannot load: SerializeError: We failed to resolve "
        "torch.ops.crystal_tests.doubled.default to an operator",
        whole=False,
    ),
    "program-truncated": Case(
        _model("{bad}/truncated.pt2"),
        "model x: {bad}/truncated.pt2: truncated (the archive ends early)",
    ),
    "network-ends-in-logits": Case(
        _model("{bad}/logits.pt"),
        "model x: {bad}/logits.pt: its outputs are not probabilities: on 10043 of 10043 rows, "
        "e.g. [0.92, 0.12, 0.31, 0.09] gives ",
        whole=False,
    ),
    "softmax-on-probabilities": Case(
        _model("{bad}/probabilities.pt2", "--softmax", "x"),
        "model x: {bad}/probabilities.pt2: --softmax x: its outputs are probabilities already "
        "(every probe row sums to 1), and a softmax would change them; leave out --softmax",
    ),
    "network-of-five-classes": Case(
        _model("{bad}/five_classes.pt"),
        "model x: {bad}/five_classes.pt: the network returns shape [2, 5] for 2 rows, "
        "expected [2, 3]",
    ),
    "network-of-five-features": Case(
        _model("{bad}/five_features.pt"),
        "model x: {bad}/five_features.pt: the network fails on a [2, 4] batch: ",
        whole=False,
    ),
    "labels-not-those-of-labels-txt": Case(
        _model("{bad}/red.joblib"),
        "model x: {bad}/red.joblib: the LogisticRegression has classes "
        "['green', 'red', 'yellow'], expected [0, 1, 2] or ['blue', 'green', 'yellow'] "
        "(labels.txt)",
    ),
    "onnx-of-other-labels": Case(
        _model("{bad}/red.onnx"),
        "model x: {bad}/red.onnx: its LinearClassifier node 'LinearClassifier' has classes "
        "['green', 'red', 'yellow'], expected [0, 1, 2] or ['blue', 'green', 'yellow'] "
        "(labels.txt)",
    ),
    "onnx-with-a-zipmap": Case(
        _model("{bad}/zipmap.onnx"),
        "model x: {bad}/zipmap.onnx: has outputs output_label (int64 [?]), output_probability "
        "(a sequence, no tensor); expected one float or double output [batch, 3], or one named "
        "'probabilities' (a ZipMap's sequence of maps cannot be served: convert with it "
        "disabled)",
    ),
    "onnx-of-a-fixed-batch": Case(
        _model("{bad}/fixed.onnx"),
        "model x: {bad}/fixed.onnx: its input input has a fixed batch size (1); convert it with "
        "a dynamic batch dimension (a name instead of a number)",
    ),
    "onnx-the-checker-refuses": Case(
        _model("onnx:{bad}/no_such_op.onnx"),
        "model x: {bad}/no_such_op.onnx: onnx.checker refuses it: ",
        whole=False,
    ),
    "onnx-of-five-features": Case(
        _model("{bad}/five.onnx"),
        "model x: {bad}/five.onnx: its input features is double [batch, 5], expected [batch, 4]",
    ),
    "pytorch-named-for-a-pickle": Case(
        _model("pytorch:{bad}/logistic.joblib"),
        f"model x: {{bad}}/logistic.joblib: is a pickle (joblib.dump), not {TORCH_FILE}: name "
        "its framework sklearn (x=sklearn:{bad}/logistic.joblib) or leave it out",
    ),
    "onnx-named-for-a-program": Case(
        _model("onnx:{bad}/probabilities.pt2"),
        f"model x: {{bad}}/probabilities.pt2: is {TORCH_FILE}, not an ONNX graph: name its "
        "framework pytorch (x=pytorch:{bad}/probabilities.pt2) or leave it out",
    ),
    "sklearn-named-for-an-onnx-graph": Case(
        _model("sklearn:{bad}/given.onnx"),
        "model x: {bad}/given.onnx: is an ONNX graph, not a pickle (joblib.dump): name its "
        "framework onnx (x=onnx:{bad}/given.onnx) or leave it out",
    ),
    "reference-for-a-network": Case(
        _model(
            "{bad}/probabilities.pt2", "--reference", "x={bad}/rows.npy,{bad}/probabilities.npy"
        ),
        "model x: {bad}/probabilities.pt2: --reference is for ready-made ONNX graphs, whose "
        "original model is not here to run; a pytorch model is compared with pytorch itself",
    ),
    "reference-of-the-wrong-shape": Case(
        _model("{bad}/given.onnx", "--reference", "x={bad}/rows.npy,{bad}/four_columns.npy"),
        "--reference x={bad}/rows.npy,{bad}/four_columns.npy: {bad}/four_columns.npy has shape "
        "[10, 4], expected [10, 3] (one row of probabilities per row)",
    ),
    "softmax-for-no-model": Case(
        _model("{bad}/given.onnx", "--softmax", "y"),
        "--softmax y: no --model of that name",
    ),
    "warned-then-refused": Case(
        _model("{bad}/warns_logits.pt"),
        "model x: {bad}/warns_logits.pt: its outputs are not probabilities: ",
        whole=False,
    ),
}


@pytest.fixture(scope="module")
def refusals(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """Every case, and one model that warns and passes, each run by the CLI as `make` runs it."""
    root = tmp_path_factory.mktemp("refusals")
    bad = root / "bad"
    _bad_sources(bad)
    commands = {}
    for name, case in REFUSED.items():
        (root / name).mkdir()
        args = (arg.replace("{bad}", str(bad)) for arg in case.args)
        commands[name] = (*args, "--out", str(root / name / "out"))
    (root / "warned").mkdir()
    commands["warned-then-exported"] = (
        *_model(str(bad / "warns.pt")),
        *("--out", str(root / "warned" / "out")),
    )
    return root, run_forked("export", commands)


@pytest.mark.parametrize("name", REFUSED)
def test_a_refusal_is_one_line_that_says_what_to_do(refusals: tuple, name: str) -> None:
    root, results = refusals
    case, result = REFUSED[name], results[name]
    bad = root / "bad"
    expected = "export: error: " + case.message.replace("{bad}", str(bad))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line == expected if case.whole else line.startswith(expected)
    assert list((root / name).iterdir()) == []


def test_a_network_that_ends_in_logits_is_told_how_to_fix_it(refusals: tuple) -> None:
    _, results = refusals
    (line,) = results["network-ends-in-logits"].stderr.splitlines()
    assert line.endswith(
        "; if they are logits, end the model in a softmax before saving it, or export it with "
        "--softmax x"
    )


def test_what_torch_warned_is_summarised_on_the_refusals_line(refusals: tuple) -> None:
    _, results = refusals
    (line,) = results["warned-then-refused"].stderr.splitlines()
    assert line.endswith(" UserWarning: the calibration drifts)")
    assert "--softmax x (1 warning: " in line


def test_what_torch_warned_on_a_success_is_one_line_after_it(refusals: tuple) -> None:
    root, results = refusals
    result = results["warned-then-exported"]
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("export: note: 1 warning: ")
    assert line.endswith(" UserWarning: the calibration drifts")
    assert sorted(snapshot(root / "warned" / "out")) == ["manifest.json", "x.onnx"]
