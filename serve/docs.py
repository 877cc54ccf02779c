"""GET /docs: Swagger UI on the served /openapi.json, its scripts and styles served from serve/docs/
by this service itself (no CDN: the page works offline and wherever the service runs); and GET /,
which says where the docs, the document, the probes and the metrics are.

Every URL the page uses is relative to it, so it works behind a proxy under any path prefix. The
asset URLs carry a hash of the file, so browsers may keep the files for a year and still fetch a
new one the moment it changes; the page itself is revalidated on every visit."""

import gzip
import hashlib
from functools import cache
from pathlib import Path
from typing import NamedTuple

import falcon
import falcon.asgi
import msgspec

from serve.compression import LEVEL, accepts_gzip
from serve.request import CrystalRequest

ASSETS_DIR = Path(__file__).resolve().parent / "docs"
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
ASSETS = ("swagger-ui.css", "favicon-32x32.png", "swagger-ui-bundle.js", "init.js")
ASSET_CACHE = "public, max-age=31536000, immutable"
PAGE_CACHE = "no-cache"
HTML = "text/html; charset=utf-8"
# Paths as the OpenAPI document writes them: relative to where the service is reached.
INDEX = {
    "docs": "/docs",
    "openapi": "/openapi.json",
    "live": "/v2/health/live",
    "ready": "/v2/health/ready",
    "metrics": "/metrics",
}

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Crystal colour service: API</title>
<link rel="stylesheet" href="{swagger-ui.css}">
<link rel="icon" type="image/png" href="{favicon-32x32.png}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{swagger-ui-bundle.js}"></script>
<script src="{init.js}"></script>
</body>
</html>
"""


class Asset(NamedTuple):
    data: bytes
    gzipped: bytes  # compressed once at start: 1.7 MB of script per request would cost tens of ms
    content_type: str
    version: str  # a hash of the file: the page asks for docs/NAME?v=VERSION


@cache
def load_assets(folder: Path = ASSETS_DIR) -> dict[str, Asset]:
    """Read once per process: every app a process builds shares them."""
    assets = {}
    for name in ASSETS:
        data = (folder / name).read_bytes()
        version = hashlib.sha256(data).hexdigest()[:12]
        content_type = CONTENT_TYPES[Path(name).suffix]
        gzipped = gzip.compress(data, compresslevel=LEVEL, mtime=0)
        assets[name] = Asset(data, gzipped, content_type, version)
    return assets


def render_page(assets: dict[str, Asset]) -> bytes:
    """Relative URLs: from /docs (or /PREFIX/docs), docs/NAME is the asset route below."""
    page = PAGE
    for name, asset in assets.items():
        page = page.replace("{" + name + "}", f"docs/{name}?v={asset.version}")
    return page.encode()


class DocsPage:
    def __init__(self, page: bytes):
        self._page = page

    async def on_get(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        resp.content_type = HTML
        resp.cache_control = [PAGE_CACHE]
        resp.data = self._page

    on_head = on_get


class DocsAsset:
    def __init__(self, assets: dict[str, Asset]):
        self._assets = assets

    async def on_get(self, req: CrystalRequest, resp: falcon.asgi.Response, name: str) -> None:
        asset = self._assets.get(name)
        if asset is None:
            raise falcon.HTTPNotFound()
        resp.content_type = asset.content_type
        # Kept long only under the URL the page uses: another version may be served there later.
        versioned = req.get_param("v") == asset.version
        resp.cache_control = [ASSET_CACHE if versioned else PAGE_CACHE]
        if accepts_gzip(req.get_header("Accept-Encoding")):
            resp.vary = ["Accept-Encoding"]
            resp.set_header("Content-Encoding", "gzip")
            resp.data = asset.gzipped
        else:
            resp.data = asset.data

    on_head = on_get


class ServiceIndex:
    """JSON, not a redirect to /docs: scripts and people with curl get a short answer they can
    read, and browsers show it too."""

    def __init__(self, metrics_here: bool) -> None:
        """Without `metrics_here` (METRICS_PORT set), /metrics is left out: this port does not
        answer it."""
        index = INDEX if metrics_here else {k: v for k, v in INDEX.items() if k != "metrics"}
        self._body = msgspec.json.encode(index)

    async def on_get(self, req: CrystalRequest, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body

    on_head = on_get


def add_routes(app: falcon.asgi.App, metrics_here: bool = True) -> None:
    assets = load_assets()
    app.add_route("/", ServiceIndex(metrics_here))
    app.add_route("/docs", DocsPage(render_page(assets)))
    app.add_route("/docs/{name}", DocsAsset(assets))
