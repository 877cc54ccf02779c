"""POST /v2/models/{name}/infer through falcon's TestClient: request forms and errors."""

import json

import numpy as np
import pytest
from falcon import testing

from serve.app import create_app
from serve.settings import Limits
from support.examples import ROWS as EXAMPLE_ROWS
from support.fakes import LABELS, SKLEARN_ROWS, FakeClassifier

ROWS = EXAMPLE_ROWS[:2]


@pytest.fixture
def client() -> testing.TestClient:
    models = {
        "sklearn": FakeClassifier(SKLEARN_ROWS),
        "pytorch": FakeClassifier([[0.2, 0.3, 0.5]], input_dtype=np.float32),
    }
    return testing.TestClient(create_app(models, LABELS, limits=Limits(max_rows=3)))


def request(data: object, shape=(2, 4), datatype="FP64", **extra) -> dict:
    tensor = {"name": "input", "shape": list(shape), "datatype": datatype, "data": data}
    return {"inputs": [tensor], **extra}


@pytest.mark.parametrize("data", [ROWS, [v for row in ROWS for v in row]])
def test_nested_and_flat_data(client: testing.TestClient, data: list) -> None:
    result = client.simulate_post("/v2/models/sklearn/infer", json=request(data, id="x-1"))
    assert result.status_code == 200
    body = result.json
    assert (body["model_name"], body["model_version"], body["id"]) == (
        "sklearn",
        "0123456789ab",
        "x-1",
    )
    probabilities, label = body["outputs"]
    assert probabilities == {
        "name": "probabilities",
        "datatype": "FP64",
        "shape": [2, 3],
        "data": [v for row in SKLEARN_ROWS for v in row],
    }
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["blue", "green"]}


def test_fp32_input_is_rounded_to_float32(client: testing.TestClient) -> None:
    models = {"sklearn": FakeClassifier(SKLEARN_ROWS), "pytorch": FakeClassifier(SKLEARN_ROWS)}
    app_client = testing.TestClient(create_app(models, LABELS))
    app_client.simulate_post("/v2/models/sklearn/infer", json=request(ROWS, datatype="FP32"))
    batch = models["sklearn"].batches[-1]
    assert batch.dtype == np.float64
    assert batch.tolist() == np.array(ROWS, dtype=np.float32).astype(np.float64).tolist()


def test_no_id_no_id_echo_and_output_selection(client: testing.TestClient) -> None:
    body = request(ROWS, outputs=[{"name": "probabilities"}])
    answer = client.simulate_post("/v2/models/pytorch/infer", json=body).json
    assert "id" not in answer
    assert [o["name"] for o in answer["outputs"]] == ["probabilities"]
    assert answer["outputs"][0]["datatype"] == "FP32"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (request(ROWS, datatype="INT64"), 400, "datatype must be FP64 or FP32"),
        (request(ROWS, shape=(2, 3)), 400, "input shape must be [n, 4]"),
        (request(ROWS, shape=(0, 4)), 400, "input shape must be [n, 4]"),
        (request(ROWS, shape=(3, 4)), 400, "input data has 8 values, shape [3, 4] needs 12"),
        (request([[1, 2, 3]], shape=(1, 4)), 400, "$.inputs[0].data[0]"),
        (request([1, 2, 3, "4"], shape=(1, 4)), 400, "got `str`"),
        (request([1, 2, 3, 1e13], shape=(1, 4)), 400, "<= 1000000000000.0"),
        (request(ROWS * 2, shape=(4, 4)), 413, "input has 4 rows, the limit is 3"),
        (request(ROWS, outputs=[{"name": "logits"}]), 400, "outputs must be among"),
        ({"inputs": []}, 400, "exactly one input tensor named 'input'"),
        (
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]},
            400,
            "exactly one input tensor named 'input'",
        ),
        ({"input": []}, 400, "invalid inference request"),
    ],
)
def test_errors_use_the_protocol_shape(
    client: testing.TestClient, body: dict, status: int, message: str
) -> None:
    result = client.simulate_post("/v2/models/sklearn/infer", body=json.dumps(body))
    assert result.status_code == status
    assert list(result.json) == ["error"]
    assert message in result.json["error"]


def test_unknown_model_is_404_in_the_protocol_shape(client: testing.TestClient) -> None:
    result = client.simulate_post("/v2/models/keras/infer", json=request(ROWS))
    assert result.status_code == 404
    assert result.json == {"error": "no model named 'keras'"}


def test_binary_input_tensor(client: testing.TestClient) -> None:
    values = np.array(ROWS, dtype="<f8")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 4],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ]
        }
    ).encode()
    result = client.simulate_post(
        "/v2/models/sklearn/infer",
        body=header + values.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert result.status_code == 200
    assert result.json["outputs"][1]["data"] == ["blue", "green"]
    short = client.simulate_post(
        "/v2/models/sklearn/infer",
        body=header + values.tobytes()[:-8],
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert short.status_code == 400
    assert "binary_data_size must equal" in short.json["error"]
    bad_header = client.simulate_post(
        "/v2/models/sklearn/infer", body=header, headers={"Inference-Header-Content-Length": "-1"}
    )
    assert bad_header.status_code == 400


def test_json_header_that_is_not_utf8_is_a_bad_request(client: testing.TestClient) -> None:
    body = json.dumps(request(ROWS)).encode()[:-1] + b', "note": "\xff\xfe"}'
    result = client.simulate_post("/v2/models/sklearn/infer", body=body)
    assert result.status_code == 400
    assert "not valid UTF-8" in result.json["error"]


def test_binary_outputs_follow_the_json_header(client: testing.TestClient) -> None:
    """`binary_data_output` for all, `binary_data` per output; raw values after the header."""
    body = request(
        ROWS,
        parameters={"binary_data_output": True},
        outputs=[
            {"name": "label", "parameters": {"binary_data": False}},
            {"name": "probabilities"},
        ],
    )
    result = client.simulate_post("/v2/models/pytorch/infer", json=body)
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/octet-stream"
    length = int(result.headers["Inference-Header-Content-Length"])
    header = json.loads(result.content[:length])
    label, probabilities = header["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["yellow"] * 2}
    assert probabilities == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [2, 3],
        "parameters": {"binary_data_size": 24},
    }
    values = np.frombuffer(result.content[length:], dtype="<f4").reshape(2, 3)
    assert values.tolist() == [[np.float32(p) for p in (0.2, 0.3, 0.5)]] * 2


def test_binary_labels_are_length_prefixed(client: testing.TestClient) -> None:
    body = request(ROWS, outputs=[{"name": "label", "parameters": {"binary_data": True}}])
    result = client.simulate_post("/v2/models/sklearn/infer", json=body)
    length = int(result.headers["Inference-Header-Content-Length"])
    assert result.content[length:] == b"\x04\x00\x00\x00blue\x05\x00\x00\x00green"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"parameters": {"binary_data_output": "yes"}}, "binary_data_output must be true or"),
        ({"outputs": [{"name": "label", "parameters": {"binary_data": 1}}]}, "binary_data must"),
        (
            {"outputs": [{"name": "label", "parameters": {"shared_memory_region": "r"}}]},
            "shared-memory tensors are not supported",
        ),
    ],
)
def test_bad_output_parameters_are_refused(
    client: testing.TestClient, extra: dict, message: str
) -> None:
    result = client.simulate_post("/v2/models/sklearn/infer", json=request(ROWS, **extra))
    assert result.status_code == 400
    assert message in result.json["error"]


# --- versions, outputs, the server metadata's spellings --------------------------------------

VERSION = "0123456789ab"


@pytest.mark.parametrize(
    ("unversioned", "versioned"),
    [
        ("/v2/models/sklearn", f"/v2/models/sklearn/versions/{VERSION}"),
        ("/v2/models/sklearn/ready", f"/v2/models/sklearn/versions/{VERSION}/ready"),
        ("/v2/models/sklearn/stats", f"/v2/models/sklearn/versions/{VERSION}/stats"),
        ("/v2/models/sklearn/config", f"/v2/models/sklearn/versions/{VERSION}/config"),
        ("/v2", "/v2/"),
    ],
)
def test_a_versioned_route_answers_as_the_unversioned_one(
    client: testing.TestClient, unversioned: str, versioned: str
) -> None:
    plain, with_version = client.simulate_get(unversioned), client.simulate_get(versioned)
    assert plain.status_code == with_version.status_code == 200
    assert plain.json == with_version.json


def test_versioned_infer_answers_as_unversioned_infer(client: testing.TestClient) -> None:
    body = request(ROWS, id="v")
    plain = client.simulate_post("/v2/models/sklearn/infer", json=body)
    versioned = client.simulate_post(f"/v2/models/sklearn/versions/{VERSION}/infer", json=body)
    assert versioned.status_code == 200
    assert versioned.content == plain.content


@pytest.mark.parametrize("suffix", ["", "/ready", "/infer", "/stats", "/config"])
def test_a_version_the_model_does_not_list_is_404_naming_the_served_one(
    client: testing.TestClient, suffix: str
) -> None:
    method = client.simulate_post if suffix == "/infer" else client.simulate_get
    result = method(f"/v2/models/sklearn/versions/1{suffix}", json=request(ROWS))
    assert result.status_code == 404
    assert result.json == {"error": f"model sklearn has no version '1'; it serves ['{VERSION}']"}


def test_metadata_lists_every_output_infer_returns(client: testing.TestClient) -> None:
    metadata = client.simulate_get("/v2/models/pytorch").json
    answer = client.simulate_post("/v2/models/pytorch/infer", json=request(ROWS)).json
    listed = {o["name"]: (o["datatype"], len(o["shape"])) for o in metadata["outputs"]}
    returned = {o["name"]: (o["datatype"], len(o["shape"])) for o in answer["outputs"]}
    assert listed == returned == {"probabilities": ("FP32", 2), "label": ("BYTES", 1)}


def test_an_empty_output_list_means_the_defaults(client: testing.TestClient) -> None:
    empty = client.simulate_post("/v2/models/sklearn/infer", json=request(ROWS, outputs=[]))
    default = client.simulate_post("/v2/models/sklearn/infer", json=request(ROWS))
    assert empty.status_code == 200
    assert empty.content == default.content


def test_an_output_named_twice_is_refused(client: testing.TestClient) -> None:
    outputs = [{"name": "label"}, {"name": "label"}]
    result = client.simulate_post("/v2/models/sklearn/infer", json=request(ROWS, outputs=outputs))
    assert result.status_code == 400
    assert "each once" in result.json["error"]


def test_shape_and_data_disagreeing_is_400_even_past_the_row_limit(
    client: testing.TestClient,
) -> None:
    """Too large (413) only when the data hold that many rows: the upstream REST definition
    documents 400 for a request whose data do not fit its shape."""
    result = client.simulate_post("/v2/models/sklearn/infer", json=request(ROWS, shape=(9, 4)))
    assert result.status_code == 400
    assert result.json["error"] == "input data has 8 values, shape [9, 4] needs 36"


def test_a_shared_memory_input_is_refused_by_name(client: testing.TestClient) -> None:
    tensor = {
        "name": "input",
        "shape": [2, 4],
        "datatype": "FP64",
        "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 64},
    }
    result = client.simulate_post("/v2/models/sklearn/infer", json={"inputs": [tensor]})
    assert result.status_code == 400
    assert result.json["error"].startswith("shared-memory tensors are not supported")


def test_a_binary_body_without_its_header_says_the_header_is_missing(
    client: testing.TestClient,
) -> None:
    header = json.dumps(request(None) | {"parameters": {}}).encode()
    result = client.simulate_post(
        "/v2/models/sklearn/infer", body=header + np.ones(8).tobytes() + b"\xff"
    )
    assert result.status_code == 400
    assert "needs the Inference-Header-Content-Length header" in result.json["error"]


# --- the classification extension --------------------------------------------------------------


def classify(client: testing.TestClient, count: object, model="sklearn", **parameters) -> object:
    outputs = [{"name": "probabilities", "parameters": {"classification": count, **parameters}}]
    return client.simulate_post(f"/v2/models/{model}/infer", json=request(ROWS, outputs=outputs))


def test_classification_gives_the_top_classes_as_score_index_label(
    client: testing.TestClient,
) -> None:
    (output,) = classify(client, 2).json["outputs"]
    assert output == {
        "name": "probabilities",
        "datatype": "BYTES",
        "shape": [2, 2],
        "data": [
            f"{SKLEARN_ROWS[0][0]!r}:0:blue",
            f"{SKLEARN_ROWS[0][1]!r}:1:green",
            "0.7:1:green",
            "0.2:2:yellow",
        ],
    }


def test_classification_scores_are_the_probabilities_to_the_last_bit(
    client: testing.TestClient,
) -> None:
    """Every class, so every probability: each score parses back to the probability itself."""
    (classes,) = classify(client, 3, model="pytorch").json["outputs"]
    plain = client.simulate_post("/v2/models/pytorch/infer", json=request(ROWS)).json
    probabilities = np.array(plain["outputs"][0]["data"]).reshape(2, 3)
    for row, strings in zip(probabilities, np.array(classes["data"]).reshape(2, 3), strict=True):
        for string in strings:
            score, index, label = string.split(":")
            assert float(score) == row[int(index)]
            assert label == LABELS[int(index)]


def test_classification_beyond_the_classes_gives_all_and_ties_go_by_index() -> None:
    models = {"sklearn": FakeClassifier([[0.25, 0.5, 0.25]])}
    app_client = testing.TestClient(create_app(models, LABELS))
    (output,) = classify(app_client, 10).json["outputs"]
    assert output["shape"] == [2, 3]
    assert output["data"][:3] == ["0.5:1:green", "0.25:0:blue", "0.25:2:yellow"]


def test_classification_in_binary_is_length_prefixed(client: testing.TestClient) -> None:
    result = classify(client, 1, binary_data=True)
    length = int(result.headers["Inference-Header-Content-Length"])
    assert json.loads(result.content[:length])["outputs"][0]["parameters"] == {
        "binary_data_size": 4 + len(f"{SKLEARN_ROWS[0][0]!r}:0:blue") + 4 + len("0.7:1:green")
    }
    assert result.content[length + 4 :].startswith(f"{SKLEARN_ROWS[0][0]!r}:0:blue".encode())


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([{"name": "probabilities", "parameters": {"classification": 0}}], "classification must"),
        ([{"name": "probabilities", "parameters": {"classification": True}}], "classification"),
        ([{"name": "probabilities", "parameters": {"classification": "2"}}], "classification"),
        ([{"name": "label", "parameters": {"classification": 1}}], "probabilities output only"),
    ],
)
def test_bad_classification_requests_are_refused(
    client: testing.TestClient, outputs: list, message: str
) -> None:
    result = client.simulate_post("/v2/models/sklearn/infer", json=request(ROWS, outputs=outputs))
    assert result.status_code == 400
    assert message in result.json["error"]
