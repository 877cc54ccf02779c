"""The Open Inference Protocol through the real tritonclient, against the live server."""

import time

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from harness.server import ServerProcess
from support.examples import ROWS as EXAMPLE_ROWS

pytestmark = pytest.mark.e2e

ROWS = np.array([*EXAMPLE_ROWS, [0, 1, 2, 3]])


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")


def infer(
    client,
    model: str,
    rows: np.ndarray,
    datatype: str,
    outputs=None,
    request_id="",
    binary=False,
    model_version="",
):
    """JSON tensors both ways unless `binary`; with no outputs named the client asks for all of
    them in binary (its default)."""
    tensor = triton.InferInput("input", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows, binary_data=binary)
    requested = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs or []]
    return client.infer(
        model,
        [tensor],
        model_version=model_version,
        outputs=requested or None,
        request_id=request_id,
    )


def labels(result) -> list[str]:
    """BYTES come back as bytes from binary outputs and as str from JSON ones."""
    return [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]


def test_server_probes_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("sklearn")
    assert client.get_server_metadata()["name"] == "crystal-serving"
    metadata = client.get_model_metadata("pytorch")
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"][0]["name"] == "probabilities"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model", ["sklearn", "pytorch"])
@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_infer_equals_droid_endpoint(
    server: ServerProcess,
    client: triton.InferenceServerClient,
    model: str,
    datatype: str,
    binary: bool,
) -> None:
    rows = ROWS.astype(np.float32 if datatype == "FP32" else np.float64)
    outputs = ["probabilities", "label"]
    result = infer(client, model, rows, datatype, outputs, request_id="req-7", binary=binary)
    droid = requests.post(
        f"{server.url}/{model}", json={"crystalData": rows.tolist()}, timeout=10
    ).json()
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (4, 3)
    expected = np.array([list(s.values()) for s in droid["scores"]])
    assert np.array_equal(probabilities.astype(np.float64), expected)
    assert probabilities.dtype == (np.float64 if model == "sklearn" else np.float32)
    assert labels(result) == droid["prediction"]
    response = result.get_response()
    assert all(("data" in o) != binary for o in response["outputs"])
    assert response["model_name"] == model
    assert response["id"] == "req-7"
    assert response["model_version"] == client.get_model_metadata(model)["versions"][0]


def test_requested_outputs_only(client: triton.InferenceServerClient) -> None:
    result = infer(client, "sklearn", ROWS, "FP64", outputs=["label"])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None


@pytest.mark.parametrize(
    ("model", "rows", "datatype", "message"),
    [
        ("keras", ROWS, "FP64", "no model named 'keras'"),
        ("sklearn", ROWS.astype(np.int32), "INT32", "datatype must be FP64 or FP32"),
        ("sklearn", ROWS[:, :3], "FP64", "input shape must be [n, 4]"),
        ("pytorch", np.full((1, 4), 1e13), "FP64", "<= 1000000000000.0"),
    ],
)
def test_errors_surface_through_the_client(
    client: triton.InferenceServerClient, model: str, rows: np.ndarray, datatype: str, message: str
) -> None:
    with pytest.raises(InferenceServerException, match=message.replace("[", r"\[")):
        infer(client, model, rows, datatype)


@pytest.mark.parametrize("model", ["sklearn", "pytorch"])
def test_client_defaults_binary_inputs_and_outputs(
    client: triton.InferenceServerClient, model: str
) -> None:
    """tritonclient's defaults: binary input tensor, every output asked for in binary; the
    values are those of JSON outputs, bit for bit."""
    tensor = triton.InferInput("input", [4, 4], "FP64")
    tensor.set_data_from_numpy(ROWS)
    binary = client.infer(model, [tensor])
    as_json = infer(client, model, ROWS, "FP64", ["probabilities", "label"])
    assert binary.as_numpy("probabilities").tobytes() == as_json.as_numpy("probabilities").tobytes()
    assert labels(binary) == labels(as_json)
    sizes = [o["parameters"]["binary_data_size"] for o in binary.get_response()["outputs"]]
    assert sizes[0] == 4 * 3 * as_json.as_numpy("probabilities").itemsize


def test_binary_and_json_outputs_mixed(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [4, 4], "FP64")
    tensor.set_data_from_numpy(ROWS, binary_data=False)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("probabilities", binary_data=True),
    ]
    result = client.infer("sklearn", [tensor], outputs=outputs)
    label, probabilities = result.get_response()["outputs"]
    assert label["data"] == labels(result)
    assert probabilities["parameters"] == {"binary_data_size": 4 * 3 * 8}
    assert "data" not in probabilities
    assert np.array_equal(result.as_numpy("probabilities").argmax(axis=1), [0, 1, 2, 2])


def test_binary_input_values_are_checked(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array([[0.1, np.nan, 0.2, 0.3]]))
    with pytest.raises(InferenceServerException, match="input value 1 is not a finite number"):
        client.infer("sklearn", [tensor])


@pytest.mark.parametrize("algorithm", ["gzip", None])
def test_compression_both_ways_through_the_client(
    client: triton.InferenceServerClient, algorithm: str | None
) -> None:
    """tritonclient's gzip request bodies are read; its Accept-Encoding is honoured for answers
    above GZIP_MIN_BYTES (4096: 400 rows of probabilities in JSON)."""
    rows = np.tile(ROWS, (100, 1))
    tensor = triton.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=False)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    packed = client.infer(
        "sklearn",
        [tensor],
        outputs=outputs,
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    plain = client.infer("sklearn", [tensor], outputs=outputs)
    assert np.array_equal(packed.as_numpy("probabilities"), plain.as_numpy("probabilities"))


def test_deflate_request_bodies_are_refused(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [4, 4], "FP64")
    tensor.set_data_from_numpy(ROWS)
    with pytest.raises(InferenceServerException, match="'deflate' is not supported"):
        client.infer("sklearn", [tensor], request_compression_algorithm="deflate")


# --- every client method that applies: versions, extensions, refusals --------------------------


def version_of(client: triton.InferenceServerClient, model: str) -> str:
    return client.get_model_metadata(model)["versions"][0]


@pytest.mark.parametrize("model", ["sklearn", "pytorch"])
def test_versioned_calls_answer_as_unversioned_ones(
    client: triton.InferenceServerClient, model: str
) -> None:
    version = version_of(client, model)
    assert client.is_model_ready(model, version)
    assert client.get_model_metadata(model, version) == client.get_model_metadata(model)
    assert client.get_model_config(model, version) == client.get_model_config(model)
    tensor = triton.InferInput("input", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS)
    versioned = client.infer(model, [tensor], model_version=version)
    plain = client.infer(model, [tensor])
    assert (
        versioned.as_numpy("probabilities").tobytes() == plain.as_numpy("probabilities").tobytes()
    )
    assert versioned.get_response()["model_version"] == version


def test_a_version_not_served_is_refused_by_every_call(
    client: triton.InferenceServerClient,
) -> None:
    message = "model sklearn has no version '1'; it serves"
    assert not client.is_model_ready("sklearn", "1")
    calls = [
        lambda: client.get_model_metadata("sklearn", "1"),
        lambda: client.get_model_config("sklearn", "1"),
        lambda: client.get_inference_statistics("sklearn", "1"),
        lambda: infer(client, "sklearn", ROWS, "FP64", model_version="1"),
    ]
    for call in calls:
        with pytest.raises(InferenceServerException, match=message):
            call()


def test_metadata_lists_the_label_output(client: triton.InferenceServerClient) -> None:
    outputs = client.get_model_metadata("sklearn")["outputs"]
    assert outputs == [
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_through_the_client(
    client: triton.InferenceServerClient, binary: bool
) -> None:
    tensor = triton.InferInput("input", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    classified = client.infer(
        "sklearn",
        [tensor],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)],
    )
    top = classified.as_numpy("probabilities")
    assert top.shape == (4, 2)
    probabilities = client.infer("sklearn", [tensor]).as_numpy("probabilities")
    for row, classes in zip(probabilities, top, strict=True):
        first = (c.decode() if isinstance(c, bytes) else c for c in classes)
        (score, index, _label), (second_score, *_) = (c.split(":") for c in first)
        assert float(score) == row.max() == row[int(index)]
        assert float(second_score) == np.sort(row)[-2]


def test_statistics_through_the_client(client: triton.InferenceServerClient) -> None:
    """Counts over both workers: each publishes its own every few seconds, so the client polls
    until both of these requests are in."""
    before = client.get_inference_statistics("pytorch")["model_stats"][0]
    tensor = triton.InferInput("input", [4, 4], "FP32")
    tensor.set_data_from_numpy(ROWS.astype(np.float32))
    client.infer("pytorch", [tensor])
    client.infer("pytorch", [tensor])
    deadline = time.monotonic() + 30
    while True:
        version = version_of(client, "pytorch")
        (stats,) = client.get_inference_statistics("pytorch", version)["model_stats"]
        success = stats["inference_stats"]["success"]["count"]
        if success >= before["inference_stats"]["success"]["count"] + 2:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)
    assert stats["inference_count"] >= before["inference_count"] + 8
    assert stats["last_inference"] >= before["last_inference"]
    every = client.get_inference_statistics()["model_stats"]
    assert sorted(s["name"] for s in every) == ["pytorch", "sklearn"]


def test_configuration_and_repository_index_through_the_client(
    client: triton.InferenceServerClient,
) -> None:
    config = client.get_model_config("pytorch")
    assert (config["max_batch_size"], config["input"][0]["dims"]) == (100_000, [4])
    assert [o["name"] for o in config["output"]] == ["probabilities", "label"]
    index = client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [("pytorch", "READY"), ("sklearn", "READY")]
    assert index[1]["version"] == version_of(client, "sklearn")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.load_model("sklearn"), "SIGHUP"),
        (lambda c: c.unload_model("sklearn"), "SIGHUP"),
        (lambda c: c.get_system_shared_memory_status(), "shared-memory tensors"),
        (lambda c: c.register_system_shared_memory("r", "/k", 64), "shared-memory tensors"),
        (lambda c: c.unregister_system_shared_memory(), "shared-memory tensors"),
        (lambda c: c.get_cuda_shared_memory_status(), "shared-memory tensors"),
        (lambda c: c.register_cuda_shared_memory("r", b"h", 0, 64), "shared-memory tensors"),
        (lambda c: c.unregister_cuda_shared_memory("r"), "shared-memory tensors"),
        (lambda c: c.get_trace_settings(), "tracing is not served"),
        (lambda c: c.update_trace_settings("sklearn", {"trace_level": ["TIMESTAMPS"]}), "tracing"),
        (lambda c: c.get_log_settings(), "log settings are not changed"),
        (lambda c: c.update_log_settings({"log_verbose_level": 1}), "log settings"),
    ],
    ids=lambda value: "" if callable(value) else value[:20],
)
def test_features_not_served_raise_a_clear_error(
    client: triton.InferenceServerClient, call, message: str
) -> None:
    with pytest.raises(InferenceServerException, match=message):
        call(client)


def test_async_infer_and_the_request_body_helpers(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    tensor = triton.InferInput("input", [4, 4], "FP64")
    tensor.set_data_from_numpy(ROWS)
    expected = client.infer("sklearn", [tensor]).as_numpy("probabilities")
    assert np.array_equal(
        client.async_infer("sklearn", [tensor]).get_result().as_numpy("probabilities"), expected
    )
    body, header_length = triton.InferenceServerClient.generate_request_body([tensor])
    answer = requests.post(
        f"{server.url}/v2/models/sklearn/infer",
        data=body,
        headers={"Inference-Header-Content-Length": str(header_length)},
        timeout=10,
    )
    result = triton.InferenceServerClient.parse_response_body(
        answer.content, header_length=int(answer.headers["Inference-Header-Content-Length"])
    )
    assert np.array_equal(result.as_numpy("probabilities"), expected)
