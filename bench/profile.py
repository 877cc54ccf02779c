"""`python -m bench.profile`: where a request's time goes in the service, with py-spy.

Two views per route and body size:
- app: the service's ASGI app in a one-thread loop (bench.hotloop: requests handed over as
  gunicorn's worker hands them, no sockets), sampled, so every sample is CPU spent on a request;
  beside it, the per-request time of the service, of the service without its telemetry and of
  the floor in the same loop, against the hot path's budget.
- live: the real server under wrk, every worker sampled; py-spy leaves out threads that sleep
  (a worker waiting in epoll), so this view shows the share of gunicorn and the event loop.
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
from bench.hotloop import APP_BUDGET_US, TELEMETRY_BUDGET_US
from bench.load import LUA_SCRIPT
from bench.servers import code_state, loadavg, server_specs, start
from harness.server import REPO_ROOT

# (category, file part, function part): the innermost frame that matches names the category.
RULES = (
    ("onnxruntime run", "onnxruntime/", ""),
    ("metrics (serve/metrics.py)", "serve/metrics.py", ""),
    ("access log line (serve/logs.py)", "serve/logs.py", ""),
    ("telemetry middleware (ids, cap, timing, log fields)", "serve/telemetry.py", ""),
    ("list -> np.array", "serve/droid.py", "_as_batch"),
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
    ("bench loop (scope, receive, send)", "bench/hotloop.py", ""),
)
# Innermost frames of threads that wait: the inference thread without work, the master.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py",
    "Condition.wait (threading.py",
    "Arbiter.wait_for_signals (gunicorn/arbiter.py",
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


def hotloop_command(apps: list[str], endpoint: str, rows: int, seconds: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.hotloop",
        "--apps",
        *apps,
        f"--endpoint={endpoint}",
        f"--rows={rows}",
        f"--seconds={seconds}",
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
    apps = ["service", "service-without-telemetry", "floor"]
    timing = run_hotloop(hotloop_command(apps, endpoint, rows, args.time_seconds), env)
    raw = raw_path(raw_dir, "app", endpoint, rows)
    command = hotloop_command(["service"], endpoint, rows, args.seconds)
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
    return {
        "us_per_request": timing["us_per_request"],
        "rounds_us": timing["rounds_us"],
        "telemetry_us": timing["telemetry_us"],
        **app_samples(raw),
    }


def raw_path(raw_dir: Path, view: str, endpoint: str, rows: int) -> Path:
    """Where py-spy's raw stacks of one view are kept, to categorize them again later."""
    return raw_dir / f"{view}-{endpoint}-{rows}.folded"


def app_samples(raw: Path) -> dict:
    counts, _ = categorize(raw.read_text(), inside=LOOP_FRAME)
    return {"samples": dict(counts.most_common())}


def live_samples(raw: Path) -> dict:
    counts, idle = categorize(raw.read_text())
    return {"samples": dict(counts.most_common()), "idle_samples": idle}


def live_view(endpoint: str, rows: int, args, env: dict[str, str], raw_dir: Path) -> dict:
    """The real server (`python -m serve`, `env` on top of the inherited environment) sampled
    under wrk keep-alive load."""
    wrk = shutil.which("wrk")
    if not wrk:
        return {"skipped": "wrk not found"}
    bodies = write_bodies(raw_dir / "bodies", endpoint, rows)
    spec = server_specs(env, None, None)["service"]
    probe = write_bodies(raw_dir / "bodies", "sklearn", 1)[0].path.read_bytes()
    server = start(spec, probe)
    raw = raw_path(raw_dir, "live", endpoint, rows)
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
    return live_samples(raw)


def percentages(samples: dict[str, int]) -> dict[str, float]:
    total = sum(samples.values()) or 1
    return {name: round(100 * count / total, 1) for name, count in samples.items()}


def _budget_lines(views: list[dict]) -> list[str]:
    """The hot path's budget, judged on the 1-row views."""
    lines = [
        "## Hot path budget (1 row)",
        "",
        "App time: µs per request of `serve.asgi.application()` in the loop, from the first body",
        "byte to the encoded answer, telemetry included, HTTP server excluded. Telemetry: the",
        "same loop on the same app built without the telemetry middleware (request id, in-flight",
        "cap, request metrics, access log line written to /dev/null) and with metrics recording",
        "nothing (per-prediction metrics); its cost is the median over rounds of the difference",
        "between the two, run in turns.",
        "",
        f"| route | app µs (<= {APP_BUDGET_US:g}) | status | telemetry µs "
        f"(<= {TELEMETRY_BUDGET_US:g}) | status | app without telemetry µs | floor µs |",
        "| --- | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for view in views:
        if view["rows"] != 1:
            continue
        times, telemetry = view["app"]["us_per_request"], view["app"]["telemetry_us"]
        lines.append(
            f"| /{view['endpoint']} | {times['service']:.1f} "
            f"| {_status(times['service'] <= APP_BUDGET_US)} | {telemetry:.1f} "
            f"| {_status(telemetry <= TELEMETRY_BUDGET_US)} "
            f"| {times['service-without-telemetry']:.1f} | {times['floor']:.1f} |"
        )
    return [*lines, ""]


def _status(met: bool) -> str:
    return "met" if met else "**not met**"


def markdown(results: dict) -> str:
    lines = [
        "# Where the time goes (py-spy)",
        "",
        f"Run: {results['started']}, load average {results['loadavg_before']} before, "
        f"{results['loadavg_after']} after ({os.cpu_count()} cores shared with other work).",
        f"Code: commit {results['code']['commit'][:12]}; uncommitted in serve/ or bench/: "
        f"{', '.join(results['code']['uncommitted']) or 'none'}.",
        "",
        *_budget_lines(results["views"]),
        "Share of busy samples by category (the innermost frame that names one). *App loop*: the",
        "service's ASGI app called in one thread, no sockets: pure per-request CPU. *Live",
        "server*: `python -m serve` under wrk (keep-alive, 8 connections, 2 client threads),",
        "sleeping threads left out, so it shows the share of gunicorn and the event loop.",
        "",
    ]
    for view in results["views"]:
        title = f"/{view['endpoint']}, {view['rows']:,} row{'s' if view['rows'] > 1 else ''}"
        times = view["app"]["us_per_request"]
        lines += [
            f"## {title}",
            "",
            "App alone, one thread, µs per request: "
            + ", ".join(f"{app} {us:,.1f}" for app, us in times.items())
            + f"; telemetry {view['app']['telemetry_us']:,.1f}",
            "",
            "| category | app loop % | live server % |",
            "| --- | ---: | ---: |",
        ]
        app_shares = percentages(view["app"]["samples"])
        live_shares = percentages(view["live"].get("samples", {}))
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
    parser.add_argument("--time-seconds", type=float, default=2.0, help="timing loop per app")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--workers", type=int, default=2, help="WORKERS of the live server")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument(
        "--from-json",
        type=Path,
        help="sample nothing: categorize the raw stacks kept beside an earlier profile.json again",
    )
    args = parser.parse_args()
    results = recategorized(args.from_json) if args.from_json else profile(args)
    (args.out / "profile.json").write_text(json.dumps(results, indent=1) + "\n")
    report = markdown(results)
    (args.out / "profile.md").write_text(report)
    print(report)
    return 0


def recategorized(earlier: Path) -> dict:
    """An earlier run's figures with its samples categorized by the current RULES."""
    results = json.loads(earlier.read_text())
    raw_dir = earlier.parent / "profile"
    for view in results["views"]:
        endpoint, rows = view["endpoint"], view["rows"]
        view["app"] |= app_samples(raw_path(raw_dir, "app", endpoint, rows))
        live = raw_path(raw_dir, "live", endpoint, rows)
        if live.exists():
            view["live"] = live_samples(live)
    return results


def profile(args: argparse.Namespace) -> dict:
    """Times and samples every view; raw stacks are kept in <out>/profile."""
    server_env = {"WORKERS": str(args.workers)}
    if args.models_dir:
        server_env["MODELS_DIR"] = str(args.models_dir.resolve())
    raw_dir = args.out / "profile"
    raw_dir.mkdir(parents=True, exist_ok=True)
    started, load_before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), loadavg()
    code = code_state()
    views = []
    for endpoint in args.endpoints:
        for rows in args.rows:
            print(f"profiling /{endpoint} with {rows} rows", file=sys.stderr)
            views.append(
                {
                    "endpoint": endpoint,
                    "rows": rows,
                    "app": app_view(endpoint, rows, args, {**os.environ, **server_env}, raw_dir),
                    "live": live_view(endpoint, rows, args, server_env, raw_dir),
                }
            )
    return {
        "started": started,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "code": code,
        "views": views,
    }


if __name__ == "__main__":
    sys.exit(main())
