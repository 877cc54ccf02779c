"""Property-based tests on the real models in-process: any JSON body is a 200 that matches its
rows or a 4xx with a strict-JSON error body; never a 500, never NaN or Infinity."""

import json
import math
import os

import msgspec
import numpy as np
import pytest
from falcon import testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from serve.app import get_app
from serve.settings import Settings

FLOAT32_MAX = float(np.finfo(np.float32).max)
edge_floats = st.sampled_from(
    [
        0.0,
        -0.0,
        5e-324,
        -5e-324,
        1e-308,
        1.7976931348623157e308,
        -1.7976931348623157e308,
        FLOAT32_MAX,
        -FLOAT32_MAX,
        3.5e38,
        1e12,
        -1e12,
        1e12 + 1,
        math.inf,
        -math.inf,
        math.nan,
    ]
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    edge_floats,
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=40,
)
rows = st.lists(st.lists(numbers, min_size=3, max_size=5), min_size=0, max_size=6)
model_values = st.one_of(st.sampled_from(["sklearn", "pytorch", "SKLEARN", ""]), json_values)
near_valid = st.one_of(
    st.fixed_dictionaries({"crystalData": rows}),
    st.fixed_dictionaries({"crystalData": rows, "model": model_values}),
    st.fixed_dictionaries({"crystalData": json_values, "model": model_values}),
)
bodies = st.one_of(json_values, near_valid)
ENDPOINTS = ["/sklearn", "/pytorch", "/astromech"]


@pytest.fixture(scope="module")
def client() -> testing.TestClient:
    """The committed models as a worker loads them, gRPC off: the test client runs the app's
    lifespan per request, and each stop of a gRPC server would wait GRACEFUL_TIMEOUT for the
    other children of this process's parent (the gunicorn master in production) to listen."""
    return testing.TestClient(get_app(Settings.from_env({**os.environ, "GRPC_PORT": "0"})))


def strict(content: bytes) -> object:
    """msgspec refuses NaN and Infinity, as strict JSON parsers do."""
    return msgspec.json.decode(content)


def check_answer(result: testing.Result, document: object) -> None:
    assert result.status_code in (200, 400, 413, 422), result.text
    answer = strict(result.content)
    if result.status_code == 200:
        n_rows = len(document["crystalData"])
        assert len(answer["prediction"]) == len(answer["scores"]) == n_rows
        for scores in answer["scores"]:
            assert all(0 <= p <= 1 for p in scores.values())
    else:
        assert isinstance(answer["title"], str)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(document=bodies, endpoint=st.sampled_from(ENDPOINTS))
def test_any_json_body(client: testing.TestClient, document: object, endpoint: str) -> None:
    raw = json.dumps(document).encode()  # NaN and Infinity become the non-JSON tokens
    check_answer(client.simulate_post(endpoint, body=raw), document)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200), endpoint=st.sampled_from(ENDPOINTS))
def test_any_bytes(client: testing.TestClient, raw: bytes, endpoint: str) -> None:
    result = client.simulate_post(endpoint, body=raw)
    assert result.status_code in (400, 422)
    strict(result.content)


valid_values = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)


# Two rows whose third sklearn score differs by 2 units in the last place batch against alone.
TWO_ULP_ROWS = [
    [0.38796908629299054, 0.17095917152124374, 0.4657721537174304, 0.04005051440929597],
    [-0.07426438174145655, -0.4264622691029296, -0.5416966600065869, 0.39060421218363683],
]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.lists(st.lists(valid_values, min_size=4, max_size=4), min_size=1, max_size=40),
    model=st.sampled_from(["sklearn", "pytorch"]),
)
@example(batch=TWO_ULP_ROWS, model="sklearn")
def test_batch_answers_equal_one_by_one(
    client: testing.TestClient, batch: list[list[float]], model: str
) -> None:
    together = client.simulate_post(f"/{model}", json={"crystalData": batch}).json
    alone = [client.simulate_post(f"/{model}", json={"crystalData": [row]}).json for row in batch]
    alone_scores = [answer["scores"][0] for answer in alone]
    alone_labels = [answer["prediction"][0] for answer in alone]
    if model == "pytorch":
        assert together["scores"] == alone_scores
        assert together["prediction"] == alone_labels
        return
    # onnxruntime's double Softmax runs exp vectorised over the batch buffer and scalar over its
    # tail, so each exp can differ by one unit in the last place with the row's position, and
    # the normalised score by two.
    got = np.array([list(s.values()) for s in together["scores"]])
    expected = np.array([list(s.values()) for s in alone_scores])
    np.testing.assert_array_max_ulp(got, expected, maxulp=2)
    for label, expected_label, scores in zip(
        together["prediction"], alone_labels, expected, strict=True
    ):
        top_two = np.sort(scores)[-2:]
        assert label == expected_label or np.spacing(top_two[1]) >= top_two[1] - top_two[0]
