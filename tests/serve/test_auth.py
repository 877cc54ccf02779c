"""Bearer tokens (serve/auth.py) and the metrics port, in-process: the token file, the check,
which routes of every protocol ask for a token, the answers and what is counted and logged; and
against a hostile client: path and method variants of guarded routes, doubled Authorization
headers, bytes around a token that are not HTTP's whitespace, a byte order mark in the token
file, /metrics spelled with more slashes on the inference port."""

import hashlib
import json
from pathlib import Path

import pytest
from falcon import testing

from serve import docs
from serve.app import create_app
from serve.auth import MIN_TOKEN_CHARS, BearerTokens
from serve.errors import StartupError
from serve.logs import AccessLog
from serve.metrics import Metrics
from serve.settings import Settings
from support.examples import ROWS
from support.fakes import LABELS, SKLEARN_ROWS, FakeClassifier

TOKEN = "droid-token-0123456789"
ROTATED = "droid-token-abcdefghij"
VERSION = FakeClassifier(SKLEARN_ROWS).version
# Open without a token: the probes, model readiness, and the service's own routes.
PUBLIC = {
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
    "/",
    "/docs",
    "/metrics",
    "/openapi.json",
}
# Routes the OpenAPI document leaves out (Triton's refusals), guarded all the same.
UNDOCUMENTED = [
    ("post", "/v2/repository/models/sklearn/load"),
    ("get", "/v2/systemsharedmemory/status"),
    ("get", "/v2/trace/setting"),
]


def tokens_of(*tokens: str) -> BearerTokens:
    return BearerTokens(tuple(hashlib.sha256(t.encode()).digest() for t in tokens))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def lines() -> list[bytes]:
    return []


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(lines: list[bytes], metrics: Metrics) -> testing.TestClient:
    app = create_app(
        {"sklearn": FakeClassifier(SKLEARN_ROWS)},
        LABELS,
        metrics=metrics,
        access_log=AccessLog(lines.append),
        tokens=tokens_of(TOKEN, ROTATED),
    )
    return testing.TestClient(app)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


def test_the_file_holds_one_token_a_line_blank_lines_skipped(tmp_path: Path) -> None:
    tokens = BearerTokens.read(write(tmp_path, f"\n{TOKEN}\n  {ROTATED}  \n\n{TOKEN}\n"))
    assert tokens == tokens_of(TOKEN, ROTATED)
    assert tokens.refusal(f"Bearer {ROTATED}") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no token"),
        ("\n \n", "holds no token"),
        (f"{TOKEN}\nsecret token with spaces\n", "line 2: a token is letters, digits"),
        (f"{TOKEN}\nshort-secret\n", f"line 2: a token needs at least {MIN_TOKEN_CHARS}"),
        ("=leading-equals-signs-are-no-token\n", "line 1: a token is letters"),
    ],
)
def test_a_file_without_valid_tokens_is_refused_without_echoing_them(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StartupError) as refused:
        BearerTokens.read(path)
    assert str(refused.value).startswith(f"AUTH_TOKENS_FILE {path}")
    assert message in str(refused.value)
    assert "secret" not in str(refused.value)


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="cannot be read: No such file or directory"):
        BearerTokens.read(tmp_path / "missing")
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + TOKEN.encode())
    with pytest.raises(StartupError, match="cannot be read: not UTF-8 text"):
        BearerTokens.read(tmp_path / "binary")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic ZHJvaWQ6c2VjcmV0", "malformed"),
        ("Bearer", "malformed"),
        (f"Bearer {TOKEN} extra", "malformed"),
        (f"Token {TOKEN}", "malformed"),
        ("Bearer droid-token-012345678", "wrong"),  # a prefix of an accepted token
        (f"Bearer {TOKEN}0", "wrong"),
        (f"Bearer {TOKEN.upper()}", "wrong"),
        (f"Bearer {TOKEN}", None),
        (f"bearer {ROTATED}", None),  # the scheme is case-insensitive (RFC 9110, 11.1)
        (f"  BEARER   {TOKEN} ", None),
    ],
)
def test_the_check_accepts_exactly_the_tokens(header: str | None, reason: str | None) -> None:
    assert tokens_of(TOKEN, ROTATED).refusal(header) == reason


def documented_calls(client: testing.TestClient) -> list[tuple[str, str, str]]:
    """(method, route template, path) of every operation the served document lists."""
    spec = client.simulate_get("/openapi.json").json
    calls = []
    for template, item in spec["paths"].items():
        path = template.replace("{name}", "sklearn").replace("{version}", VERSION)
        calls += [(method, template, path) for method in item if method in ("get", "post")]
    return calls


def test_every_protocol_route_but_the_probes_asks_for_a_token(
    client: testing.TestClient,
) -> None:
    """A route a protocol adds is guarded unless it is registered public: this fails for a new
    route that is open by mistake, and for a probe that would lock out the kubelet."""
    calls = documented_calls(client) + [(m, p, p) for m, p in UNDOCUMENTED]
    assert len(calls) > 20
    for method, template, path in calls:
        body = {"crystalData": ROWS} if method == "post" else None
        answer = client.simulate_request(method.upper(), path, json=body)
        if template in PUBLIC:
            assert answer.status_code == 200, path
        else:
            assert answer.status_code == 401, path
            assert answer.headers["www-authenticate"] == 'Bearer realm="crystal"'
        authorized = client.simulate_request(method.upper(), path, json=body, headers=bearer(TOKEN))
        assert authorized.status_code != 401, path


def test_with_a_token_every_answer_is_what_an_open_server_answers(
    client: testing.TestClient,
) -> None:
    open_client = testing.TestClient(create_app({"sklearn": FakeClassifier(SKLEARN_ROWS)}, LABELS))
    for method, template, path in documented_calls(open_client):
        if template in ("/metrics", "/openapi.json") or "stats" in path:
            continue  # they count or describe the requests, and the tokens
        body = {"crystalData": ROWS} if method == "post" else None
        if path.endswith("/infer"):
            body = {
                "inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP64", "data": ROWS}]
            }
        for token in (TOKEN, ROTATED):
            guarded = client.simulate_request(
                method.upper(), path, json=body, headers=bearer(token)
            )
            opened = open_client.simulate_request(method.upper(), path, json=body)
            assert (guarded.status_code, guarded.content) == (opened.status_code, opened.content)


def test_each_protocol_refuses_in_its_own_shape(client: testing.TestClient) -> None:
    droid = client.simulate_post("/sklearn", json={"crystalData": ROWS}, headers=bearer("x" * 20))
    assert droid.json == {"title": "Unauthorized", "description": "the bearer token is not valid"}
    assert droid.headers["www-authenticate"] == 'Bearer realm="crystal", error="invalid_token"'
    v2 = client.simulate_post("/v2/models/sklearn/infer", json={})
    assert v2.json == {
        "error": "this route needs a bearer token: send the header Authorization: Bearer <token>"
    }
    triton = client.simulate_get("/v2/models/stats", headers={"Authorization": "Basic eA=="})
    assert triton.json == {"error": "the Authorization header must be Bearer <token>"}


def test_refusals_are_counted_by_reason_and_no_token_is_logged(
    client: testing.TestClient, metrics: Metrics, lines: list[bytes]
) -> None:
    client.simulate_post("/sklearn", json={"crystalData": ROWS})
    client.simulate_post("/sklearn", json={"crystalData": ROWS}, headers=bearer("wrong-" + TOKEN))
    client.simulate_get("/v2/models/sklearn", headers=bearer("wrong-" + TOKEN))
    client.simulate_post("/sklearn", json={"crystalData": ROWS}, headers=bearer(TOKEN))
    exposition = client.simulate_get("/metrics").text
    assert 'crystal_unauthenticated_requests_total{protocol="droid",reason="missing"} 1.0' in (
        exposition
    )
    assert 'crystal_unauthenticated_requests_total{protocol="droid",reason="wrong"} 1.0' in (
        exposition
    )
    assert 'crystal_unauthenticated_requests_total{protocol="v2",reason="wrong"} 1.0' in exposition
    logged = [json.loads(line) for line in lines]
    assert [line["status"] for line in logged[:4]] == [401, 401, 401, 200]
    assert TOKEN not in b"".join(lines).decode()


def test_the_document_declares_the_scheme_on_guarded_operations_only(
    client: testing.TestClient,
) -> None:
    spec = client.simulate_get("/openapi.json").json
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for template, item in spec["paths"].items():
        for method in ("get", "post"):
            if method in item:
                declared = item[method].get("security") == [{"bearer": []}]
                assert declared == (template not in PUBLIC), template
                assert ("401" in item[method]["responses"]) == declared
    open_spec = testing.TestClient(create_app({"sklearn": FakeClassifier(SKLEARN_ROWS)}, LABELS))
    assert "securitySchemes" not in open_spec.simulate_get("/openapi.json").json["components"]


def test_metrics_port_answers_metrics_only_and_the_inference_port_no_metrics() -> None:
    settings = Settings.from_env({"PORT": "3000", "METRICS_PORT": "8082"})
    app = create_app({"sklearn": FakeClassifier(SKLEARN_ROWS)}, LABELS, settings=settings)
    client = testing.TestClient(app)
    assert client.simulate_get("/metrics", port=8082).status_code == 200
    assert client.simulate_get("/metrics", port=3000).status_code == 404
    for path in ("/v2/health/ready", "/docs", "/openapi.json"):
        assert client.simulate_get(path, port=8082).status_code == 404, path
        assert client.simulate_get(path, port=3000).status_code == 200, path
    answer = client.simulate_post("/sklearn", json={"crystalData": ROWS}, port=8082)
    assert answer.json == {"title": "404 Not Found", "description": "no route /sklearn"}
    # The index and the document describe the port they are served on.
    spec = client.simulate_get("/openapi.json", port=3000).json
    assert "/metrics" not in spec["paths"]
    index = client.simulate_get("/", port=3000).json
    assert index == {k: v for k, v in docs.INDEX.items() if k != "metrics"}
    for path in index.values():
        assert client.simulate_get(path, port=3000).status_code == 200, path
    schema = spec["paths"]["/"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {key: value["const"] for key, value in schema["properties"].items()} == index
    assert sorted(schema["required"]) == sorted(index)


@pytest.mark.parametrize("other", ["PORT", "GRPC_PORT"])
def test_the_metrics_port_must_be_a_port_of_its_own(other: str) -> None:
    env = {"PORT": "3000", "GRPC_PORT": "8081", other: "9000", "METRICS_PORT": "9000"}
    with pytest.raises(StartupError, match=f"METRICS_PORT must differ from {other}, both are 9000"):
        Settings.from_env(env)


# --- against a hostile client ---------------------------------------------------------------


@pytest.fixture
def split_client() -> testing.TestClient:
    """Tokens asked, and /metrics on a port of its own."""
    settings = Settings.from_env({"PORT": "3000", "METRICS_PORT": "8082"})
    app = create_app(
        {"sklearn": FakeClassifier(SKLEARN_ROWS)},
        LABELS,
        settings=settings,
        tokens=tokens_of(TOKEN),
    )
    return testing.TestClient(app)


@pytest.mark.parametrize("path", ["//metrics", "///metrics", "/%2Fmetrics"])
def test_metrics_spelled_with_more_slashes_stay_on_the_metrics_port(
    split_client: testing.TestClient, path: str
) -> None:
    """The router strips leading slashes: so does the port split."""
    assert split_client.simulate_get(path, port=3000).status_code == 404
    assert split_client.simulate_get(path, port=8082).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("HEAD", "/v2/models/sklearn"),
        ("OPTIONS", "/v2/models/sklearn/infer"),
        ("GET", "/sklearn"),
        ("PUT", "/sklearn"),
        ("FOO", "/v2/models/sklearn/config"),
        ("POST", "//sklearn"),
        ("POST", "/%73klearn"),
        ("POST", "/v2/models/%73klearn/infer"),
        ("GET", "//v2/models/sklearn/stats"),
        ("GET", "/v2/models/unknown"),
    ],
)
def test_any_method_and_spelling_of_a_guarded_route_asks_for_a_token(
    split_client: testing.TestClient, method: str, path: str
) -> None:
    """The guard is the route's, not the responder's nor the path's: a method the route does not
    answer, a path the router reads as the route, or an unknown model, are refused first."""
    answer = split_client.simulate_request(method, path, port=3000)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="crystal"'


@pytest.mark.parametrize("order", [(TOKEN, ROTATED), (ROTATED, TOKEN), (TOKEN, TOKEN)])
def test_two_authorization_headers_are_refused_whichever_comes_first(
    split_client: testing.TestClient, order: tuple[str, str]
) -> None:
    headers = [("Authorization", f"Bearer {token}") for token in order]
    answer = split_client.simulate_get("/v2/models/sklearn", headers=headers, port=3000)
    assert answer.json == {"error": "the Authorization header must be Bearer <token>"}


@pytest.mark.parametrize(
    "header",
    [f"Bearer {TOKEN}\xa0", f"Bearer {TOKEN}\x85", f"Bearer \xa0{TOKEN}", f"\x85Bearer {TOKEN}"],
)
def test_only_spaces_and_tabs_surround_an_accepted_token(header: str) -> None:
    """Python's str.strip() also strips non-breaking spaces and NEL, which HTTP carries as field
    bytes: the token sent is then not a token of the file."""
    assert tokens_of(TOKEN).refusal(header) == "malformed"
    assert tokens_of(TOKEN).refusal(f"\tBearer  {TOKEN} \t") is None


def test_a_token_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Editors on Windows start UTF-8 files with one; it is no part of the first token."""
    path = tmp_path / "tokens"
    path.write_bytes(f"\ufeff{TOKEN}\r\n{ROTATED}\r\n".encode())
    assert BearerTokens.read(path) == tokens_of(TOKEN, ROTATED)
