"""`python -m bench`: the service against the floor and native baselines, written to --out.

About six minutes on two cores; --quick, a smoke run of seconds, proves a complete result."""

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

from bench import runner
from bench.report import draw, markdown, publish, summarize
from harness.server import REPO_ROOT
from serve.settings import Settings

# The service's settings that shape its answers under load.
SERVICE_SETTINGS = ("MAX_IN_FLIGHT", "HEADER_TIMEOUT", "KEEPALIVE", "TIMEOUT", "OFFLOAD_BYTES")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    quick = "1 round of 0.5 s per load on /sklearn, keep-alive, no WSGI floor"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--rounds", type=int, help="default 3, quick 1")
    parser.add_argument("--seconds", type=float, help="per load; default 2, quick 0.5")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--workers", type=int, default=2, help="WORKERS of every server")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args()
    if not all(path.is_file() for path in runner.MODELS.values()):
        parser.error(f"the native baseline needs its models in {runner.SOURCES} (make sources)")
    wrk = None if args.client == "python" else runner.find_wrk()
    if args.client == "wrk" and wrk is None:
        parser.error("wrk not found and could not be installed")
    servers = [name for name in runner.SERVERS if not (args.quick and name == "floor-wsgi")]
    clients = [runner.KEEP_ALIVE] if args.quick else [runner.KEEP_ALIVE, runner.CLOSE]
    endpoints = ["sklearn"] if args.quick else runner.ENDPOINTS
    cells = [(c, e, rows) for c in clients for e in endpoints for rows in runner.ROWS]
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (0.5 if args.quick else 2.0)
    seconds = max(1, round(seconds)) if wrk else seconds  # wrk loads for whole seconds
    plan = runner.Plan(servers, cells, rounds, seconds, args.workers, wrk)
    started = datetime.datetime.now(datetime.UTC)
    load_before, code = runner.loadavg(), runner.code_state()
    with tempfile.TemporaryDirectory(prefix="bench-bodies-") as folder:
        raw = runner.run_plan(plan, Path(folder))
        sizes = {str(n): (Path(folder) / f"sklearn-{n}-0.json").stat().st_size for n in runner.ROWS}
    settings = Settings.from_env(os.environ | {"WORKERS": str(args.workers)})
    models = {"models_dir": os.environ.get("MODELS_DIR", "onnx_models (the service's default)")}
    models |= {f"{name}_model": str(path) for name, path in runner.MODELS.items()}
    load = {"client": "wrk" if wrk else "python http.client (fallback)"}
    load |= {"client_path": wrk or sys.executable, "connections": runner.CONNECTIONS}
    load |= {"wrk_threads": runner.WRK_THREADS if wrk else runner.CONNECTIONS, "seconds": seconds}
    load |= {"rounds": rounds, "workers": args.workers, "body_bytes": sizes}
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    machine |= {"platform": platform.platform(), "loadavg_before": load_before}
    elapsed = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    meta = {"started": started.isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 1)}
    meta |= {"command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]), "code": code}
    meta["machine"] = machine | {"loadavg_after": runner.loadavg()}
    meta["service"] = {name: getattr(settings, name.lower()) for name in SERVICE_SETTINGS}
    meta |= {"load": load, "models": models}
    results = summarize(meta, raw)
    publish(args.out, "latest", results, markdown(results))
    if not args.no_chart:
        draw(results, args.out / "latest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
