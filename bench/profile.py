"""`python -m bench.profile`: where a request's time goes in the service, with py-spy.

Per route and body size: the app alone in a tight loop (`--loop`: one thread, no sockets, each
request handed over as gunicorn's asyncio worker hands it, so every sample is CPU spent on a
request) timed against the hot path's budget and sampled; and `python -m serve` under wrk, where
py-spy leaves out sleeping threads, so gunicorn's and the event loop's share shows. The loop runs
the service (access log to /dev/null), the same without telemetry (middleware left out, metrics
recording nothing) and the floor in turns over ROUNDS rounds. Raw stacks: <out>/profile."""

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from unittest import mock

import uvloop

from bench.floor_app import app as floor_app
from bench.report import STATUS, publish, table
from bench.runner import ENDPOINTS, alongside, code_state, loadavg, run_load, start, write_bodies
from harness.bodies import documents
from harness.server import REPO_ROOT
from serve.asgi import application
from serve.metrics import Metrics

AsgiApp = Callable[[dict, Callable, Callable], Awaitable[None]]
APPS = ("service", "service-without-telemetry", "floor")
ROUNDS = 5
APP_BUDGET_US, TELEMETRY_BUDGET_US = 30.0, 10.0
# (category, file part, function part): the innermost frame that matches names the category.
RULES = (
    ("onnxruntime run", "onnxruntime/", ""),
    ("metrics (serve/metrics.py)", "serve/metrics.py", ""),
    ("access log line (serve/logs.py)", "serve/logs.py", ""),
    ("telemetry middleware (ids, cap, timing, log fields)", "serve/telemetry.py", ""),
    ("JSON straight into the batch (simdjson)", "serve/fast_rows.py", ""),
    ("list -> np.array", "serve/decode.py", ""),
    ("list -> np.array", "serve/droid.py", "_as_batch"),
    ("answer build + encode", "serve/render.py", ""),
    ("answer build + encode", "serve/droid.py", "AnswerRenderer"),
    ("JSON decode + validation (msgspec)", "serve/droid.py", "crystal_data"),
    ("JSON decode + validation (msgspec)", "serve/droid.py", "astromech"),
    ("JSON decode + validation (msgspec)", "serve/body.py", "check_utf8"),
    ("body read", "serve/body.py", ""),
    ("droid protocol, other", "serve/droid.py", ""),
    ("inference protocol (serve/v2.py)", "serve/v2.py", ""),
    ("prediction: registry (argmax, labels)", "serve/registry.py", ""),
    ("model input/output checks (numpy)", "serve/classifier.py", ""),
    ("service, other", "serve/", ""),
    ("falcon (routing, request, response)", "falcon/", ""),
    ("gunicorn asgi: HTTP parse, scope, send", "gunicorn/asgi/", ""),
    ("event loop: uvloop (C), socket I/O", "gunicorn/workers/gasgi.py", "run"),
    ("event loop: uvloop (C), socket I/O", "uvloop/", ""),
    ("gunicorn: heartbeat, other", "gunicorn/", ""),
    ("asyncio", "asyncio/", ""),
    ("bench loop (scope, receive, send)", "bench/profile.py", ""),
)
# Innermost frames of threads that wait: the inference thread without work, the master.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py",
    "Condition.wait (threading.py",
    "Arbiter.wait_for_signals (gunicorn/arbiter.py",
)
LOOP_FRAME = "loop (bench/profile.py"


class _NoTelemetry:
    """In place of serve.telemetry.RequestTelemetry: Falcon wants a hook, this one's lifespan."""

    def __init__(self, *args: object) -> None:
        pass

    async def process_startup(self, scope: dict, event: dict) -> None:
        pass


class _SilentMetrics(Metrics):
    def request(self, *args: object) -> None:
        """Records nothing, as `prediction`."""

    prediction = request


def build_app(name: str) -> AsgiApp:
    """One of APPS, built in this process as a worker builds it."""
    if name != "service-without-telemetry":
        return floor_app if name == "floor" else application()
    with mock.patch.multiple("serve.app", RequestTelemetry=_NoTelemetry, Metrics=_SilentMetrics):
        return application()


def request_for(path: str, body: bytes) -> tuple[dict, Callable[[], Awaitable[dict]]]:
    """The scope gunicorn's worker builds for a POST with a Content-Length, as wrk sends it, and
    its receive once the whole body has arrived: one event."""
    headers = [(b"host", b"127.0.0.1:3000"), (b"content-type", b"application/json")]
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}}
    scope |= {"http_version": "1.1", "method": "POST", "scheme": "http", "path": path}
    scope |= {"raw_path": path.encode(), "query_string": b"", "root_path": "", "state": {}}
    scope["headers"] = [*headers, (b"content-length", str(len(body)).encode())]
    scope |= {"server": ("127.0.0.1", 3000), "client": ("127.0.0.1", 40000)}
    event = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict:
        return event

    return scope, receive


async def loop(app: AsgiApp, path: str, bodies: list[bytes], seconds: float) -> float:
    """µs per request over `seconds` of calls; every answer must be a 200."""
    requests = [request_for(path, body) for body in bodies]
    failed: list[int] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            failed.append(message["status"])

    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        await app(*requests[count % len(requests)], send)
        count += 1
    elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{len(failed)} of {count} requests failed, first: {failed[0]}")
    return elapsed / count * 1e6


async def measure(apps: dict[str, AsgiApp], path: str, bodies: list[bytes], seconds: float) -> dict:
    for app in apps.values():
        await loop(app, path, bodies, 0.2)  # warm-up: first calls allocate and fill caches
    rounds: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(ROUNDS):
        for name, app in apps.items():
            rounds[name].append(await loop(app, path, bodies, seconds / ROUNDS))
    figures = {"us_per_request": {name: statistics.median(us) for name, us in rounds.items()}}
    figures["rounds_us"] = {name: [round(u, 2) for u in us] for name, us in rounds.items()}
    if {"service", "service-without-telemetry"} <= rounds.keys():
        differences = map(float.__sub__, rounds["service"], rounds["service-without-telemetry"])
        figures["telemetry_us"] = statistics.median(differences)
    return figures


def categorize(folded: Path, inside: str | None = None) -> dict[str, object]:
    """Samples per category in py-spy's raw stacks (`inside` a frame if given), idle ones apart."""
    counts: Counter[str | None] = Counter()
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if stack and (not inside or any(inside in f for f in frames)):
            idle = not frames or any(leaf in frames[-1] for leaf in IDLE_LEAVES)
            places = [frame.partition(" (")[::2] for frame in reversed(frames)]  # (name, place)
            named = (r[0] for n, p in places for r in RULES if r[1] in p and r[2] in n)
            counts[None if idle else next(named, "other")] += int(count)
    idle = counts.pop(None, 0)
    return {"samples": dict(counts.most_common())} | ({} if inside else {"idle_samples": idle})


def py_spy(*arguments: str, timeout: float) -> None:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("bench.profile: py-spy not found (pip install -r bench/requirements.txt)")
    command, out = [found, "record", *arguments], subprocess.DEVNULL
    subprocess.run(command, cwd=REPO_ROOT, stdout=out, stderr=out, timeout=timeout, check=True)


def app_view(endpoint: str, rows: int, args: argparse.Namespace, raw: Path) -> dict:
    """Per-request time of each app in the loop, and the service's samples by category."""
    command = [sys.executable, "-m", "bench.profile", "--endpoints", endpoint, f"--rows={rows}"]
    timing = [*command, f"--seconds={args.time_seconds}", "--loop"]
    done = subprocess.run(timing, cwd=REPO_ROOT, capture_output=True, timeout=300, check=True)
    sampled = [*command, f"--seconds={args.seconds}", "--loop", "service"]
    py_spy("--format", "raw", "--rate", str(args.rate), "-o", str(raw), "--", *sampled, timeout=300)
    return json.loads(done.stderr.splitlines()[-1]) | categorize(raw, inside=LOOP_FRAME)


def live_view(endpoint: str, rows: int, args: argparse.Namespace, raw: Path) -> dict:
    """`python -m serve` sampled, master and workers, from a second into a wrk load."""
    wrk = shutil.which("wrk")
    if not wrk:
        return {"skipped": "wrk not found"}
    bodies = write_bodies(raw.parent, endpoint, rows)
    server = start("service", args.workers)
    sampling = ["--pid", str(server.process.pid), "--subprocesses", "--rate", str(args.rate)]
    sampling += ["--format", "raw", "-o", str(raw), "--duration", str(round(args.seconds))]

    def sample(stop: threading.Event) -> None:
        stop.wait(1)  # the load under way first
        py_spy(*sampling, timeout=120)

    url, seconds = f"{server.url}/{endpoint}", round(args.seconds) + 2
    try:
        alongside(sample, partial(run_load, wrk, url, bodies, 8, seconds, True))
    finally:
        server.stop()
    return categorize(raw)


def percentages(samples: dict[str, int]) -> dict[str, float]:
    total = sum(samples.values()) or 1
    return {name: round(100 * count / total, 1) for name, count in samples.items()}


def markdown(results: dict) -> str:
    code, views = results["code"], results["views"]
    blocks = [
        "# Where the time goes (py-spy)",
        f"Run: {results['started']}, load average {results['loadavg_before']} before, "
        f"{results['loadavg_after']} after ({os.cpu_count()} cores shared with other work).\n"
        f"Code: commit {code['commit'][:12]}; uncommitted in serve/ or bench/: "
        f"{', '.join(code['uncommitted']) or 'none'}.",
        "## Hot path budget (1 row)",
        "App time: µs per request of `serve.asgi.application()` in the loop, from the first body\n"
        "byte to the encoded answer, telemetry included, HTTP server excluded. Telemetry: the\n"
        "same loop on the same app built without the telemetry middleware (request id, in-flight\n"
        "cap, request metrics, access log line written to /dev/null) and with metrics recording\n"
        "nothing (per-prediction metrics); its cost is the median over rounds of the difference\n"
        "between the two, run in turns.",
        table(
            f"route=/{{endpoint}} | app µs (<= {APP_BUDGET_US:g}):={{service:.1f}} "
            f"| status={{app_status}} "
            f"| telemetry µs (<= {TELEMETRY_BUDGET_US:g}):={{telemetry:.1f}} "
            "| status={telemetry_status} "
            "| app without telemetry µs:={service-without-telemetry:.1f} | floor µs:={floor:.1f}",
            (
                v["app"]["us_per_request"]
                | {"endpoint": v["endpoint"], "telemetry": v["app"]["telemetry_us"]}
                | {"app_status": STATUS[v["app"]["us_per_request"]["service"] <= APP_BUDGET_US]}
                | {"telemetry_status": STATUS[v["app"]["telemetry_us"] <= TELEMETRY_BUDGET_US]}
                for v in views
                if v["rows"] == 1
            ),
        ),
        "Share of busy samples by category (the innermost frame that names one). *App loop*: the\n"
        "service's ASGI app called in one thread, no sockets: pure per-request CPU. *Live\n"
        "server*: `python -m serve` under wrk (keep-alive, 8 connections, 2 client threads),\n"
        "sleeping threads left out, so it shows the share of gunicorn and the event loop.",
    ]
    for view in views:
        rows, times = view["rows"], view["app"]["us_per_request"]
        app = percentages(view["app"]["samples"])
        live = percentages(view["live"].get("samples", {}))
        names = sorted({**app, **live}, key=lambda n: -app.get(n, 0))
        blocks += [
            f"## /{view['endpoint']}, {rows:,} row{'s' if rows > 1 else ''}",
            "App alone, one thread, µs per request: "
            + ", ".join(f"{name} {us:,.1f}" for name, us in times.items())
            + f"; telemetry {view['app']['telemetry_us']:,.1f}",
            table(
                "category={name} | app loop %:={app:.1f} | live server %:={live:.1f}",
                ({"name": n, "app": app.get(n, 0), "live": live.get(n, 0)} for n in names),
            ),
        ]
    return "\n\n".join(blocks) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=["sklearn", "pytorch"])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 1000])
    parser.add_argument("--seconds", type=float, default=4.0, help="sampling (--loop: loop) time")
    parser.add_argument("--time-seconds", type=float, default=2.0, help="timing loop per app")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--workers", type=int, default=2, help="WORKERS of the live server")
    loop_help = "only time these apps (default all) on the first endpoint and row count"
    parser.add_argument("--loop", nargs="*", choices=APPS, metavar="APP", help=loop_help)
    args = parser.parse_args()
    if args.loop is not None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the access lines
        apps = {name: build_app(name) for name in args.loop or APPS}
        endpoint, rows = args.endpoints[0], args.rows[0]
        bodies = [json.dumps(d).encode() for d in documents(endpoint, rows)]
        figures = uvloop.run(measure(apps, f"/{endpoint}", bodies, args.seconds))
        print(json.dumps(figures), file=sys.stderr)
        return 0
    raw = args.out / "profile"
    raw.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before, code, views = loadavg(), code_state(), []
    for endpoint, rows in itertools.product(args.endpoints, args.rows):
        print(f"profiling /{endpoint} with {rows} rows", file=sys.stderr)
        app = app_view(endpoint, rows, args, raw / f"app-{endpoint}-{rows}.folded")
        live = live_view(endpoint, rows, args, raw / f"live-{endpoint}-{rows}.folded")
        views.append({"endpoint": endpoint, "rows": rows, "app": app, "live": live})
    results = {"started": started, "loadavg_before": load_before, "loadavg_after": loadavg()}
    results |= {"code": code, "views": views}
    publish(args.out, "profile", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
