"""`python -m bench.profile`: where a request's time goes in the service, with py-spy.

Two views per route and body size:
- app: the service's WSGI app in a one-thread loop (bench.hotloop), sampled with no sockets and no
  GIL contention, so every sample is CPU spent on a request; beside it, the per-request time of the
  service, floor and native apps in the same loop.
- live: the real server under wrk, every worker sampled. Waiting threads are left out; a thread
  waiting for the GIL still counts at the line it waits on, so this view shows the gunicorn share
  and thread hand-offs, and the app view is the one to read for the split inside the app.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.bodies import ENDPOINTS, write_bodies
from bench.load import LUA_SCRIPT
from bench.servers import REPO_ROOT, RunningServer, server_specs

# (category, file part, function part): the innermost frame that matches names the category.
RULES = (
    ("onnxruntime run", "onnxruntime/", ""),
    ("metrics (prometheus_client)", "prometheus_client/", ""),
    ("access log (logging, JSON line)", "logging/", ""),
    ("access log (logging, JSON line)", "serve/logs.py", ""),
    ("list -> np.array", "serve/batch.py", "_as_batch"),
    ("JSON decode + validation (msgspec)", "serve/batch.py", ""),
    ("model input/output checks (numpy)", "serve/classifier.py", ""),
    ("response build + encode", "serve/registry.py", ""),
    ("telemetry middleware (ids, timing)", "serve/telemetry.py", ""),
    ("body read", "falcon/stream.py", ""),
    ("body read", "serve/body.py", ""),
    ("body read", "gunicorn/http/body.py", ""),
    ("service, other", "serve/", ""),
    ("falcon (routing, request, response)", "falcon/", ""),
    ("gunicorn: socket send", "gunicorn/util.py", "write"),
    ("gunicorn: socket read + HTTP parse", "gunicorn/http/", ""),
    ("gunicorn: keep-alive re-arm (epoll register/unregister)", "selectors.py", "register"),
    ("gunicorn: heartbeat file touch", "gunicorn/workers/workertmp.py", ""),
    ("gunicorn: main loop, thread hand-off, other", "gunicorn/", ""),
    ("gunicorn: main loop, thread hand-off, other", "selectors.py", ""),
    ("gunicorn: main loop, thread hand-off, other", "concurrent/futures/", ""),
    ("gunicorn: main loop, thread hand-off, other", "socket.py", ""),
    ("bench loop (WSGI environ)", "bench/hotloop.py", ""),
)
# Innermost frames of threads that wait: a thread-pool thread without work, a poller in select.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py",
    "Selector.select (selectors.py",
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
    "Arbiter.sleep (gunicorn/arbiter.py",
)
LOOP_FRAME = "loop (bench/hotloop.py"


def category(frames: list[str]) -> str:
    for frame in reversed(frames):
        name, _, place = frame.partition(" (")
        for label, file_part, function_part in RULES:
            if file_part in place and function_part in name:
                return label
    return "other"


def categorize(folded: str, inside: str | None = None) -> tuple[Counter, int]:
    """Samples per category from py-spy's folded stacks; idle samples left out and counted."""
    counts: Counter = Counter()
    idle = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if inside and not any(inside in f for f in frames):
            continue
        if not frames or any(leaf in frames[-1] for leaf in IDLE_LEAVES):
            idle += int(count)
            continue
        counts[category(frames)] += int(count)
    return counts, idle


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("bench.profile: py-spy not found (pip install -r bench/requirements.txt)")
    return found


def hotloop_command(app: str, endpoint: str, rows: int, seconds: float, args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.hotloop",
        f"--app={app}",
        f"--endpoint={endpoint}",
        f"--rows={rows}",
        f"--seconds={seconds}",
        f"--sklearn-model={args.sklearn_model}",
        f"--pytorch-model={args.pytorch_model}",
    ]


def run_hotloop(command: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stderr.strip().splitlines()[-1])


def app_view(endpoint: str, rows: int, args, env: dict[str, str], raw_dir: Path) -> dict:
    """Per-request time of each app in the loop, and the service's samples by category."""
    times = {
        app: run_hotloop(hotloop_command(app, endpoint, rows, args.time_seconds, args), env)[
            "us_per_request"
        ]
        for app in ("service", "floor", "native")
    }
    raw = raw_dir / f"app-{endpoint}-{rows}.folded"
    command = hotloop_command("service", endpoint, rows, args.seconds, args)
    subprocess.run(
        [
            py_spy(),
            "record",
            "--format",
            "raw",
            "--rate",
            str(args.rate),
            "-o",
            str(raw),
            "--",
            *command,
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
        check=True,
    )
    counts, _ = categorize(raw.read_text(), inside=LOOP_FRAME)
    return {"us_per_request": times, "samples": dict(counts.most_common())}


def live_view(endpoint: str, rows: int, args, env: dict[str, str], raw_dir: Path) -> dict:
    """The real server (gunicorn, its configured workers) sampled under wrk keep-alive load."""
    wrk = shutil.which("wrk")
    if not wrk:
        return {"skipped": "wrk not found"}
    bodies = write_bodies(raw_dir / "bodies", endpoint, rows)
    spec = server_specs(env, None, None)["service"]
    probe = write_bodies(raw_dir / "bodies", "sklearn", 1)[0].path.read_bytes()
    server = RunningServer(spec, probe)
    raw = raw_dir / f"live-{endpoint}-{rows}.folded"
    try:
        load = subprocess.Popen(
            [
                wrk,
                "-t2",
                "-c8",
                f"-d{round(args.seconds) + 2}s",
                "-s",
                str(LUA_SCRIPT),
                f"http://127.0.0.1:{server.port}/{endpoint}",
                "--",
                *(str(b.path) for b in bodies),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        subprocess.run(
            [
                py_spy(),
                "record",
                "--pid",
                str(server.process.pid),
                "--subprocesses",
                "--format",
                "raw",
                "--rate",
                str(args.rate),
                "--duration",
                str(round(args.seconds)),
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=True,
        )
        load.wait(timeout=60)
    finally:
        server.stop()
    counts, idle = categorize(raw.read_text())
    return {"samples": dict(counts.most_common()), "idle_samples": idle}


def shares(samples: dict[str, int]) -> dict[str, float]:
    total = sum(samples.values()) or 1
    return {name: round(100 * count / total, 1) for name, count in samples.items()}


def markdown(results: dict) -> str:
    lines = [
        "# Where the time goes (py-spy)",
        "",
        "Share of busy samples by category (the innermost frame that names one). *App loop*: the",
        "service's WSGI app called in one thread, no sockets: pure per-request CPU. *Live server*:",
        "`python -m serve` under wrk (keep-alive, 8 connections), waiting threads left out; a",
        "thread waiting for the GIL counts at the line it waits on, so read it for the gunicorn",
        "share and lock contention, and the app loop for the split inside the app.",
        "",
    ]
    for view in results["views"]:
        title = f"/{view['endpoint']}, {view['rows']:,} row{'s' if view['rows'] > 1 else ''}"
        times = view["app"]["us_per_request"]
        lines += [
            f"## {title}",
            "",
            "App alone, one thread, µs per request: "
            + ", ".join(f"{app} {us:,.0f}" for app, us in times.items()),
            "",
            "| category | app loop % | live server % |",
            "| --- | ---: | ---: |",
        ]
        app_shares = shares(view["app"]["samples"])
        live_shares = shares(view["live"].get("samples", {}))
        for name in sorted(set(app_shares) | set(live_shares), key=lambda n: -app_shares.get(n, 0)):
            lines.append(
                f"| {name} | {app_shares.get(name, 0):.1f} | {live_shares.get(name, 0):.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=["sklearn", "pytorch"])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 1000])
    parser.add_argument("--seconds", type=float, default=4.0, help="sampling time per view")
    parser.add_argument("--time-seconds", type=float, default=1.5, help="timing loop per app")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument(
        "--sklearn-model", type=Path, default=REPO_ROOT / "export" / "sources" / "sklearn.joblib"
    )
    parser.add_argument(
        "--pytorch-model", type=Path, default=REPO_ROOT / "export" / "sources" / "pytorch.pt"
    )
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if args.models_dir:
        env["MODELS_DIR"] = str(args.models_dir.resolve())
    raw_dir = args.out / "profile"
    raw_dir.mkdir(parents=True, exist_ok=True)
    views = []
    for endpoint in args.endpoints:
        for rows in args.rows:
            print(f"profiling /{endpoint} with {rows} rows", file=sys.stderr)
            views.append(
                {
                    "endpoint": endpoint,
                    "rows": rows,
                    "app": app_view(endpoint, rows, args, env, raw_dir),
                    "live": live_view(endpoint, rows, args, env, raw_dir),
                }
            )
    results = {"views": views}
    (args.out / "profile.json").write_text(json.dumps(results, indent=1) + "\n")
    report = markdown(results)
    (args.out / "profile.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
