"""`python -m bench`: the service against the floor and native baselines, written to --out.

The default run takes about six minutes on two cores; --quick is a smoke run of a few seconds
that proves the machinery produces a complete result, not a speed.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bodies import ENDPOINTS, write_bodies
from bench.load import ensure_wrk, wrk_seconds
from bench.report import DERIVED, markdown, publish, summarize
from bench.runner import CLOSE, KEEP_ALIVE, Cell, Plan, run_plan
from bench.servers import (
    GUNICORN_CONF,
    REPO_ROOT,
    ServerSpec,
    code_state,
    loadavg,
    server_specs,
)
from serve.settings import Settings

SERVERS = ("service", "floor", "floor-wsgi", "native")
QUICK_SERVERS = ["service", "floor", "native"]
DEFAULT_SKLEARN = REPO_ROOT / "export" / "sources" / "sklearn.joblib"
DEFAULT_PYTORCH = REPO_ROOT / "export" / "sources" / "pytorch.pt"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 0.5 s per load on /sklearn, keep-alive, no WSGI floor",
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    parser.add_argument(
        "--seconds", type=float, help="load time per cell and scenario (default 2, quick 0.5)"
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--no-install", action="store_true", help="never apt-get install a missing wrk"
    )
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS)
    parser.add_argument("--rows", nargs="+", type=int, help="rows per request (default 1 1000)")
    parser.add_argument("--clients", nargs="+", choices=(KEEP_ALIVE, CLOSE))
    parser.add_argument("--servers", nargs="+", choices=SERVERS)
    parser.add_argument("--models-dir", type=Path, help="the service's MODELS_DIR")
    parser.add_argument("--labels-file", type=Path, help="LABELS_FILE for service and native")
    parser.add_argument("--sklearn-model", type=Path, default=DEFAULT_SKLEARN)
    parser.add_argument("--pytorch-model", type=Path, default=DEFAULT_PYTORCH)
    parser.add_argument("--workers", type=int, default=2, help="WORKERS for every server")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: summarize the raw figures of an earlier latest.json again",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.seconds = args.seconds or (0.5 if quick else 2.0)
    args.endpoints = args.endpoints or (["sklearn"] if quick else list(ENDPOINTS))
    args.rows = args.rows or [1, 1000]
    args.clients = args.clients or ([KEEP_ALIVE] if quick else [KEEP_ALIVE, CLOSE])
    args.servers = args.servers or (QUICK_SERVERS if quick else list(SERVERS))
    return args


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """What every server gets on top of the inherited environment: the same models and sizes."""
    env = {}
    for name, value in (
        ("MODELS_DIR", args.models_dir),
        ("LABELS_FILE", args.labels_file),
        ("WORKERS", args.workers),
    ):
        if value is not None:
            env[name] = str(value.resolve() if isinstance(value, Path) else value)
    return env


def gunicorn_settings(spec: ServerSpec) -> dict[str, str]:
    """The settings gunicorn resolves for one server (config file and GUNICORN_CMD_ARGS), as it
    prints them. gunicorn loads the app it is given to print them, and the app does not change
    them: the floor's is the lightest."""
    command = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), "--print-config"]
    done = subprocess.run(
        [*command, "bench.floor_app:app"],
        cwd=REPO_ROOT,
        env={**os.environ, **spec.env, "HOST": "127.0.0.1", "PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    settings = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition("=")
        if name.strip() in ("worker_class", "workers", "threads", "keepalive"):
            settings[name.strip()] = value.strip()
    return settings


def service_settings(env: dict[str, str]) -> dict[str, int]:
    """The service's settings that shape its answers under load."""
    settings = Settings.from_env({**os.environ, **env})
    return {
        "MAX_IN_FLIGHT": settings.max_in_flight,
        "HEADER_TIMEOUT": settings.header_timeout,
        "KEEPALIVE": settings.keepalive,
        "TIMEOUT": settings.timeout,
        "OFFLOAD_BYTES": settings.offload_bytes,
    }


def write_results(results: dict, out: Path, chart: bool) -> None:
    publish(out, "latest", results, markdown(results))
    if chart:
        from bench.chart import draw  # matplotlib: bench/requirements.txt, not the test set

        draw(results, out / "latest.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.from_json:
        earlier = json.loads(args.from_json.read_text())
        meta = {k: v for k, v in earlier.items() if k not in DERIVED}
        write_results(summarize(meta, earlier["raw"]), args.out, not args.no_chart)
        return 0
    if "native" in args.servers:
        missing = [p for p in (args.sklearn_model, args.pytorch_model) if not p.is_file()]
        if missing:
            print(
                f"bench: the native baseline needs the source models; not found: "
                f"{', '.join(map(str, missing))} (pass --sklearn-model and --pytorch-model)",
                file=sys.stderr,
            )
            return 2
    wrk = None if args.client == "python" else ensure_wrk(install=not args.no_install)
    if args.client == "wrk" and wrk is None:
        print("bench: wrk not found and could not be installed", file=sys.stderr)
        return 2
    env = server_env(args)
    specs = server_specs(env, args.sklearn_model.resolve(), args.pytorch_model.resolve())
    plan = Plan(
        servers={name: specs[name] for name in args.servers},
        cells=[
            Cell(endpoint, rows, client)
            for client in args.clients
            for endpoint in args.endpoints
            for rows in args.rows
        ],
        rounds=args.rounds,
        seconds=args.seconds,
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        wrk=wrk,
    )
    started, clock = datetime.datetime.now(datetime.UTC), time.perf_counter()
    load_before, code = loadavg(), code_state()
    settings = {name: gunicorn_settings(spec) for name, spec in plan.servers.items()}
    with tempfile.TemporaryDirectory(prefix="bench-bodies-") as folder:
        raw = run_plan(plan, Path(folder))
        body_bytes = {
            str(rows): write_bodies(Path(folder), "sklearn", rows)[0].size for rows in args.rows
        }
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - clock, 1),
        "command": shlex.join(["python", "-m", "bench", *(argv or sys.argv[1:])]),
        "code": code,
        "code_after": code_state(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        },
        "gunicorn": settings,
        "service": service_settings(env),
        "load": {
            "client": "wrk" if wrk else "python http.client (fallback)",
            "client_path": wrk or sys.executable,
            "connections": args.connections,
            "wrk_threads": min(args.wrk_threads, args.connections) if wrk else args.connections,
            "seconds": wrk_seconds(args.seconds) if wrk else args.seconds,
            "rounds": args.rounds,
            "workers": args.workers,
            "body_bytes": body_bytes,
        },
        "models": {
            "models_dir": env.get("MODELS_DIR", "onnx_models (the service's default)"),
            "sklearn_model": str(args.sklearn_model),
            "pytorch_model": str(args.pytorch_model),
        },
    }
    write_results(summarize(meta, raw), args.out, not args.no_chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
