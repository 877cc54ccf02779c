"""The API page in-process: GET /docs, the assets it loads (all served here, none from elsewhere),
their caching, and GET /. tests/e2e/test_docs_browser.py renders the page in a real browser."""

import fnmatch
import gzip
import re
from urllib.parse import urljoin

import pytest
from falcon import testing
from openapi_spec_validator import validate

from harness.server import REPO_ROOT
from serve import docs
from serve.app import create_app
from serve.logs import AccessLog
from support.deploy_files import copy_args, read_stages
from support.fakes import LABELS, SKLEARN_ROWS, FakeClassifier

REFERENCE = re.compile(r'(?:src|href)="([^"]*)"')


@pytest.fixture(scope="module")
def client() -> testing.TestClient:
    models = {"sklearn": FakeClassifier(SKLEARN_ROWS), "pytorch": FakeClassifier(SKLEARN_ROWS)}
    return testing.TestClient(create_app(models, LABELS, access_log=AccessLog(lambda line: None)))


def page_references(client: testing.TestClient) -> list[str]:
    return REFERENCE.findall(client.simulate_get("/docs").text)


def test_docs_is_an_html_page_revalidated_on_every_visit(client: testing.TestClient) -> None:
    page = client.simulate_get("/docs")
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-cache"
    assert '<div id="swagger-ui">' in page.text


def test_the_page_loads_only_assets_this_service_serves(client: testing.TestClient) -> None:
    page = client.simulate_get("/docs").text
    assert "http://" not in page
    assert "https://" not in page
    assert "//" not in page  # no protocol-relative URL either
    references = page_references(client)
    assert sorted(reference.split("?")[0] for reference in references) == sorted(
        f"docs/{name}" for name in docs.ASSETS
    )
    init = client.simulate_get("/docs/init.js").text
    assert "http" not in init
    assert 'url: "openapi.json"' in init


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
        ("init.js", "text/javascript; charset=utf-8"),
        ("swagger-ui.css", "text/css; charset=utf-8"),
        ("favicon-32x32.png", "image/png"),
    ],
)
def test_assets_are_served_as_the_files_with_their_content_type(
    client: testing.TestClient, name: str, content_type: str
) -> None:
    (reference,) = [r for r in page_references(client) if r.startswith(f"docs/{name}?")]
    path, _, query = reference.partition("?")
    asset = client.simulate_get("/" + path, query_string=query)
    assert asset.status_code == 200
    assert asset.headers["Content-Type"] == content_type
    assert asset.content == (docs.ASSETS_DIR / name).read_bytes()


def test_assets_are_cached_for_a_year_only_under_the_versioned_url(
    client: testing.TestClient,
) -> None:
    for reference in page_references(client):
        path, _, query = reference.partition("?")
        versioned = client.simulate_get("/" + path, query_string=query)
        assert versioned.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        for other in ("", "v=000000000000"):
            answer = client.simulate_get("/" + path, query_string=other)
            assert answer.status_code == 200
            assert answer.headers["Cache-Control"] == "no-cache"


def test_assets_are_gzipped_for_clients_that_accept_it(client: testing.TestClient) -> None:
    answer = client.simulate_get("/docs/swagger-ui-bundle.js", headers={"Accept-Encoding": "gzip"})
    assert answer.headers["Content-Encoding"] == "gzip"
    assert answer.headers["Vary"] == "Accept-Encoding"
    original = (docs.ASSETS_DIR / "swagger-ui-bundle.js").read_bytes()
    assert len(answer.content) < len(original) / 3
    assert gzip.decompress(answer.content) == original


def test_assets_are_compressed_once_not_per_request(
    client: testing.TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1.7 MB of script compressed at every request cost the worker tens of milliseconds each:
    anyone could keep it busy by asking for the page's assets."""
    calls = []
    compress = gzip.compress
    monkeypatch.setattr(gzip, "compress", lambda *a, **k: calls.append(1) or compress(*a, **k))
    for _ in range(3):
        answer = client.simulate_get(
            "/docs/swagger-ui-bundle.js", headers={"Accept-Encoding": "gzip"}
        )
        assert answer.headers["Content-Encoding"] == "gzip"
        assert answer.headers["Vary"] == "Accept-Encoding"
    plain = client.simulate_get("/docs/swagger-ui-bundle.js")
    assert "Content-Encoding" not in plain.headers
    assert plain.headers["Vary"] == "Accept-Encoding"
    assert calls == []


@pytest.mark.parametrize("path", ["/docs/nothing.js", "/docs/README.md", "/docs/LICENSE"])
def test_only_the_pages_assets_are_served(client: testing.TestClient, path: str) -> None:
    answer = client.simulate_get(path)
    assert answer.status_code == 404
    assert answer.json == {"title": "404 Not Found", "description": f"no route {path}"}


def test_every_url_resolves_under_a_proxy_path_prefix(client: testing.TestClient) -> None:
    """The page, its assets and the document it shows, all relative: right under any prefix."""
    page = "https://droids.example/crystal/docs"
    for reference in page_references(client):
        assert urljoin(page, reference).startswith("https://droids.example/crystal/docs/")
    assert urljoin(page, "openapi.json") == "https://droids.example/crystal/openapi.json"


def test_index_points_to_the_page_the_document_the_probes_and_the_metrics(
    client: testing.TestClient,
) -> None:
    index = client.simulate_get("/")
    assert index.status_code == 200
    assert index.headers["Content-Type"] == "application/json"
    assert index.json == {
        "docs": "/docs",
        "openapi": "/openapi.json",
        "live": "/v2/health/live",
        "ready": "/v2/health/ready",
        "metrics": "/metrics",
    }
    for path in index.json.values():
        assert client.simulate_get(path).status_code == 200, path


def test_the_document_describes_the_page_and_the_index(client: testing.TestClient) -> None:
    spec = client.simulate_get("/openapi.json").json
    validate(spec)
    assert "text/html" in spec["paths"]["/docs"]["get"]["responses"]["200"]["content"]
    index = spec["paths"]["/"]["get"]["responses"]["200"]["content"]["application/json"]
    properties = index["schema"]["properties"]
    assert {key: value["const"] for key, value in properties.items()} == docs.INDEX


def test_the_runtime_image_carries_the_assets() -> None:
    """The image's runtime stage copies serve/ from the build context, and .dockerignore keeps
    none of the assets out of that context."""
    runtime = list(read_stages().values())[-1]
    sources = [
        source
        for flags, sources, _ in map(copy_args, runtime.args("COPY"))
        if "from" not in flags
        for source in sources
    ]
    assert "serve/" in sources
    ignored = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in ("serve", "serve/docs", *(f"serve/docs/{name}" for name in docs.ASSETS)):
        assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), path


@pytest.mark.parametrize("path", ["/", "/docs", "/docs/init.js"])
def test_head_answers_like_get_without_a_body(client: testing.TestClient, path: str) -> None:
    got, head = client.simulate_get(path), client.simulate_head(path)
    assert head.status_code == 200
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.content == b""
