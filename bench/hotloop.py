"""`python -m bench.hotloop`: one app's WSGI callable in a tight loop, with no server around it.

What a request costs the app itself (parse, validate, predict, answer, middleware), in one
thread with no sockets and no GIL contention: the clean target for a sampling profiler, and the
per-request CPU time to set against the floor and native apps.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.bodies import ENDPOINTS, documents

App = Callable[[dict, Callable], list[bytes]]


def build_app(name: str) -> App:
    """The service exactly as a gunicorn worker builds it, or one of the two baselines."""
    if name == "service":
        # As under gunicorn (serve/gunicorn.conf.py): metrics go through the multiprocess files.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-metrics-"))
        from serve.wsgi import application

        return application()
    if name == "floor":
        from bench.floor_app import app

        return app
    from bench.native_app import application

    return application()


def environ_for(path: str, body: bytes) -> dict:
    """A WSGI environ as gunicorn hands it over for a POST with a Content-Length."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "3000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:3000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def loop(app: App, path: str, bodies: list[bytes], seconds: float, max_requests: int) -> dict:
    """Calls the app until the time or the count runs out; checks every status is 200."""
    statuses = []

    def start_response(status: str, headers: list, exc_info: object = None) -> None:
        statuses.append(status)

    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while count < max_requests and time.perf_counter() < deadline:
        b"".join(app(environ_for(path, bodies[count % len(bodies)]), start_response))
        count += 1
    elapsed = time.perf_counter() - started
    failed = [s for s in statuses if not s.startswith("200")]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, first: {failed[0]}")
    return {"requests": count, "seconds": elapsed, "us_per_request": elapsed / count * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotloop", description=__doc__)
    parser.add_argument("--app", choices=("service", "floor", "native"), default="service")
    parser.add_argument("--endpoint", choices=ENDPOINTS, default="sklearn")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--sklearn-model", type=Path, help="for the native app")
    parser.add_argument("--pytorch-model", type=Path, help="for the native app")
    args = parser.parse_args()
    if args.sklearn_model and args.pytorch_model:
        os.environ["BENCH_SKLEARN_MODEL"] = str(args.sklearn_model)
        os.environ["BENCH_PYTORCH_MODEL"] = str(args.pytorch_model)
    app = build_app(args.app)
    bodies = [json.dumps(d).encode() for d in documents(args.endpoint, args.rows)]
    path = f"/{args.endpoint}"
    loop(app, path, bodies, seconds=0.2, max_requests=50)  # warm-up: first calls allocate
    result = loop(app, path, bodies, args.seconds, args.max_requests)
    # The service logs one line per request to stdout: the result goes to stderr, last line.
    print(
        json.dumps({"app": args.app, "endpoint": args.endpoint, "rows": args.rows, **result}),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
