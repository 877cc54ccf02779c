"""`python -m bench.hotloop`: ASGI apps called in a tight loop, with no server around them.

What a request costs the app itself, from its first body byte to the encoded answer: each request
is handed over as gunicorn's asyncio worker hands it (the scope it builds, a receive whose body
is already there, a send that takes the answer), so decoding, validation, prediction, answer and
middleware are measured and the HTTP server is not. One thread, no sockets: the clean target for
a sampling profiler too.

The apps:
- service: `serve.asgi.application()`, exactly as a worker builds it. Its access log goes to
  /dev/null.
- service-without-telemetry: the same, built with the telemetry middleware (request ids, the
  in-progress count, request metrics, the access log line) left out and metrics recording nothing
  (the per-prediction metrics in the registry). service minus this is the telemetry's cost.
- floor: bench.floor_app's ASGI app.

The apps run in turns over ROUNDS rounds, so a busy moment of the shared machine lands on all of
them; figures are medians over rounds, and the telemetry's cost is the median of the per-round
differences.
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

import uvloop

from bench.bodies import ENDPOINTS
from harness.bodies import documents
from serve.metrics import Metrics

AsgiApp = Callable[[dict, Callable, Callable], Awaitable[None]]
APPS = ("service", "service-without-telemetry", "floor")
ROUNDS = 5
APP_BUDGET_US = 30.0
TELEMETRY_BUDGET_US = 10.0


class _NoTelemetry:
    """Stands in for serve.telemetry.RequestTelemetry: a middleware with no request hooks (Falcon
    wants one hook at least: a lifespan one, never called per request)."""

    def __init__(self, *args: object) -> None:
        pass

    async def process_startup(self, scope: dict, event: dict) -> None:
        pass


class _SilentMetrics(Metrics):
    """Metrics that record nothing per request or prediction."""

    def request(self, *args: object) -> None:
        pass

    def prediction(self, *args: object) -> None:
        pass


def build_app(name: str) -> AsgiApp:
    """One of APPS, built in this process as a worker builds it."""
    if name == "floor":
        from bench.floor_app import app

        return app
    from serve.asgi import application

    if name == "service":
        return application()
    with (
        mock.patch("serve.app.RequestTelemetry", _NoTelemetry),
        mock.patch("serve.app.Metrics", _SilentMetrics),
    ):
        return application()


def scope_for(path: str, body: bytes) -> dict[str, Any]:
    """The scope gunicorn's worker builds for a POST with a Content-Length, as wrk sends it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:3000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "server": ("127.0.0.1", 3000),
        "client": ("127.0.0.1", 40000),
        "state": {},
    }


def receive_for(body: bytes) -> Callable[[], Awaitable[dict]]:
    """gunicorn's receive when the whole body has arrived: the body in one event."""
    event = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict:
        return event

    return receive


async def loop(app: AsgiApp, path: str, bodies: list[bytes], seconds: float) -> dict:
    """Calls the app until the time runs out; checks every answer is a 200."""
    requests = [(scope_for(path, body), receive_for(body)) for body in bodies]
    failed: list[int] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            failed.append(message["status"])

    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        scope, receive = requests[count % len(requests)]
        await app(scope, receive, send)
        count += 1
    elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{len(failed)} of {count} requests failed, first: {failed[0]}")
    return {"requests": count, "us_per_request": elapsed / count * 1e6}


async def measure(apps: dict[str, AsgiApp], path: str, bodies: list[bytes], seconds: float) -> dict:
    """Each app's µs per request, medians over ROUNDS rounds taken in turns."""
    for app in apps.values():
        await loop(app, path, bodies, 0.2)  # warm-up: first calls allocate and fill caches
    rounds: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(ROUNDS):
        for name, app in apps.items():
            result = await loop(app, path, bodies, seconds / ROUNDS)
            rounds[name].append(result["us_per_request"])
    figures = {
        "us_per_request": {name: statistics.median(us) for name, us in rounds.items()},
        "rounds_us": {name: [round(u, 2) for u in us] for name, us in rounds.items()},
    }
    if "service" in rounds and "service-without-telemetry" in rounds:
        differences = map(float.__sub__, rounds["service"], rounds["service-without-telemetry"])
        figures["telemetry_us"] = statistics.median(differences)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotloop", description=__doc__)
    parser.add_argument("--apps", nargs="+", choices=APPS, default=list(APPS))
    parser.add_argument("--endpoint", choices=ENDPOINTS, default="sklearn")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0, help="loop time per app")
    args = parser.parse_args()
    # The service writes one access-log line per request on stdout: to /dev/null, as the cheapest
    # log sink there is; the result goes to stderr.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    apps = {name: build_app(name) for name in args.apps}
    bodies = [json.dumps(d).encode() for d in documents(args.endpoint, args.rows)]
    figures = uvloop.run(measure(apps, f"/{args.endpoint}", bodies, args.seconds))
    result = {"endpoint": args.endpoint, "rows": args.rows, "rounds": ROUNDS, **figures}
    print(json.dumps(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
