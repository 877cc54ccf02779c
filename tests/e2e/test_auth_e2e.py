"""Bearer tokens and the metrics port on the real server: tritonclient over HTTP and gRPC with
and without its header, a rotation by SIGHUP with no request refused, a broken token file kept
out by the reload, probes and the metrics port open, and no token ever in the server's output.
And against a hostile client: a refusal reads no body, /metrics spelled with more slashes stays on
its port, a token in a header the parser refuses is not answered back, a WebSocket upgrade is
refused without an error."""

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from harness.load import Call, Tally, load_during
from harness.server import ServerProcess, free_port, request
from support.examples import ROWS
from support.served import wait_until

pytestmark = pytest.mark.e2e

FIRST = "first-droid-token-0123456789"
SECOND = "second-droid-token-abcdefghij"
REJECTED = "never-accepted-token-0123456789"
BODY = json.dumps({"crystalData": ROWS}).encode()


class Guarded:
    def __init__(self, live: ServerProcess, tokens: Path, metrics_port: int):
        self.live = live
        self.tokens = tokens
        self.metrics_port = metrics_port
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def predict(self, token: str | None) -> requests.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        body = {"crystalData": ROWS}
        return requests.post(self.live.url + "/sklearn", json=body, headers=headers, timeout=10)

    def status(self, token: str | None) -> int:
        return self.predict(token).status_code

    def labels(self) -> list[bytes]:
        """The droids' protocol's labels for ROWS, as tritonclient reads them."""
        return [label.encode() for label in self.predict(FIRST).json()["prediction"]]

    def reload(self, text: str) -> None:
        """Writes the token file and SIGHUPs; returns once the old workers are gone."""
        self.tokens.write_text(text)
        old = set(self.live.worker_pids())
        self.live.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: not old & set(pids := self.live.worker_pids()) and len(pids) == 2,
            "the old workers exited, two new ones running",
        )


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(FIRST + "\n")
    metrics_port = free_port()
    live = ServerProcess(
        {"AUTH_TOKENS_FILE": str(tokens), "METRICS_PORT": str(metrics_port)}
    ).wait_ready()
    try:
        yield Guarded(live, tokens, metrics_port)
    finally:
        assert live.stop() == 0
        output = live.output
        for token in (FIRST, SECOND, REJECTED):
            assert token not in output


def infer_input(module, datatype: str = "FP64"):
    tensor = module.InferInput("input", [len(ROWS), 4], datatype)
    tensor.set_data_from_numpy(np.array(ROWS, dtype=np.float64))
    return tensor


def test_start_says_tokens_are_on_and_how_many(guarded: Guarded) -> None:
    lines = [json.loads(line) for line in guarded.live.output.splitlines()]
    (line,) = [x for x in lines if x["message"].startswith("bearer tokens")]
    assert line["message"] == "bearer tokens on: the models answer requests with an accepted token"
    assert line["accepted_tokens"] == 1


def test_tritonclient_http_sends_the_token_in_its_headers(guarded: Guarded) -> None:
    client = triton_http.InferenceServerClient(guarded.live.url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready("sklearn")
    with pytest.raises(InferenceServerException) as refused:
        client.infer("sklearn", [infer_input(triton_http)])
    assert refused.value.status() == "401"
    headers = {"Authorization": f"Bearer {FIRST}"}
    answer = client.infer("sklearn", [infer_input(triton_http)], headers=headers)
    assert answer.as_numpy("label").tolist() == guarded.labels()
    assert client.get_model_metadata("sklearn", headers=headers)["name"] == "sklearn"


def test_tritonclient_grpc_sends_the_token_in_its_metadata(guarded: Guarded) -> None:
    client = triton_grpc.InferenceServerClient(guarded.live.grpc_url)
    assert client.is_server_ready() and client.is_model_ready("sklearn")
    for headers in ({}, {"authorization": f"Bearer {REJECTED}"}):
        with pytest.raises(InferenceServerException) as refused:
            client.infer("sklearn", [infer_input(triton_grpc)], headers=headers)
        assert refused.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
    headers = {"authorization": f"Bearer {FIRST}"}
    answer = client.infer("sklearn", [infer_input(triton_grpc)], headers=headers)
    assert answer.as_numpy("label").tolist() == guarded.labels()


def test_metrics_are_on_their_own_port_and_count_the_refusals(guarded: Guarded) -> None:
    assert guarded.status(REJECTED) == 401
    assert requests.get(guarded.live.url + "/metrics", timeout=10).status_code == 404
    assert requests.get(guarded.live.url + "/v2/health/live", timeout=10).status_code == 200
    metrics_base = guarded.metrics_url.removesuffix("/metrics")
    assert requests.get(metrics_base + "/v2/health/live", timeout=10).status_code == 404
    wait_until(
        lambda: (
            'crystal_unauthenticated_requests_total{protocol="droid",reason="wrong"}'
            in requests.get(guarded.metrics_url, timeout=10).text
        ),
        "the refusal counted on the metrics port",
    )


def first_answer(port: int, head: str) -> bytes:
    """What the server writes first after a request head, on a fresh connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode("latin-1"))
        return sock.recv(65536)


def expecting(length: int, authorization: str = "") -> str:
    return (
        "POST /sklearn HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{authorization}Expect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
    )


def test_a_request_without_a_token_is_refused_before_its_body_is_asked_for(
    guarded: Guarded,
) -> None:
    """A client that waits for 100 Continue is refused at once and never sends its gigabyte;
    with a token the same head is asked for its body."""
    started = time.perf_counter()
    refused = first_answer(guarded.live.port, expecting(10**9))
    assert refused.startswith(b"HTTP/1.1 401 "), refused[:100]
    assert time.perf_counter() - started < 2
    accepted = first_answer(
        guarded.live.port, expecting(len(BODY), f"Authorization: Bearer {FIRST}\r\n")
    )
    assert accepted == b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize("path", ["//metrics", "/%2Fmetrics"])
def test_metrics_spelled_with_more_slashes_stay_on_the_metrics_port(
    guarded: Guarded, path: str
) -> None:
    assert request(guarded.live.port, "GET", path)[0] == 404
    assert request(guarded.metrics_port, "GET", path)[0] == 200


@pytest.mark.parametrize("value", [f"Bearer {FIRST}\x1f", f"Bearer\r\n {FIRST}"])
def test_a_token_in_a_header_the_parser_refuses_is_not_answered_back(
    guarded: Guarded, value: str
) -> None:
    """Control characters and obs-fold are refused by the parser (400); its answer, like the
    server's output (checked when the module's server stops), holds no token."""
    head = f"GET /v2/models/sklearn HTTP/1.1\r\nHost: x\r\nAuthorization: {value}\r\n\r\n"
    answer = first_answer(guarded.live.port, head)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert FIRST.encode() not in answer


@pytest.mark.parametrize("path", ["/v2/models/sklearn", "/sklearn", "/metrics"])
def test_a_websocket_upgrade_is_refused_without_an_error(guarded: Guarded, path: str) -> None:
    """No route speaks WebSocket (nor does the token check see one): an upgrade is refused with
    403, not answered 500 with a traceback in the log."""
    logged = len(guarded.live.output)
    head = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = first_answer(guarded.live.port, head)
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:100]
    assert '"level":"error"' not in guarded.live.output[logged:]


def reload_under_load(guarded: Guarded, text: str, token: str) -> Tally:
    """The reload to `text`, while two clients keep predicting with `token`."""
    header = (("Authorization", f"Bearer {token}"),)
    calls = [Call("/sklearn", BODY, 200, headers=header)]
    # A connection per request, as the soak's clients: an old worker that exits closes its idle
    # kept-alive connections, which a client can race with its next request.
    with load_during(guarded.live.url, calls, clients=2, keep_alive=False) as outcome:
        guarded.reload(text)
    tally, _ = outcome[0]
    return tally


def test_a_rotation_by_sighup_refuses_no_client_that_holds_a_listed_token(
    guarded: Guarded,
) -> None:
    """The documented rotation: add the new token, move the clients once the reload is done,
    remove the old one. A client holding a token listed on both sides of a reload is never
    refused while the old workers hand over to the new ones."""
    assert (guarded.status(FIRST), guarded.status(SECOND)) == (200, 401)
    added = reload_under_load(guarded, f"{FIRST}\n{SECOND}\n", FIRST)
    assert (guarded.status(FIRST), guarded.status(SECOND)) == (200, 200)
    removed = reload_under_load(guarded, f"{SECOND}\n", SECOND)
    for tally in (added, removed):
        assert tally.sent > 50 and not tally.failures
        assert dict(tally.by_status) == {200: tally.sent}
    for _ in range(8):  # both workers answer
        assert (guarded.status(FIRST), guarded.status(SECOND)) == (401, 200)
    lines = [json.loads(x) for x in guarded.live.output.splitlines() if "bearer tokens" in x]
    assert [line["accepted_tokens"] for line in lines] == [1, 2, 1]


def test_a_broken_token_file_is_refused_by_the_reload_and_the_tokens_stay(
    guarded: Guarded,
) -> None:
    accepted = SECOND if guarded.status(SECOND) == 200 else FIRST
    logged = len(guarded.live.output)
    guarded.tokens.write_text("\n")
    guarded.live.process.send_signal(signal.SIGHUP)
    line = wait_until(
        lambda: next(
            (x for x in guarded.live.output[logged:].splitlines() if "refused" in x), None
        ),
        "the reload refused in the log",
    )
    assert f"AUTH_TOKENS_FILE {guarded.tokens} holds no token" in json.loads(line)["message"]
    assert guarded.status(accepted) == 200
    assert guarded.status(None) == 401
