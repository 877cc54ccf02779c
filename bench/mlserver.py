"""`python -m bench.mlserver`: the service against MLServer, the usual off-the-shelf V2 server.

Both serve the same scikit-learn model over the Open Inference Protocol's JSON form: the service
its ONNX export, MLServer (`mlserver_sklearn.SKLearnModel`, `predict_proba`) the joblib that
export was made from, `export/sources/sklearn.joblib` (scikit-learn 1.9.1). The handout pickle
is not used: the service does not serve it, so the answers could not be compared.

MLServer and its pins live in their own virtual environment outside the repository, made once:
its dependencies (FastAPI, gevent, grpc, pandas...) have no business in the project's. Each server
gets 2 workers: the service's gunicorn workers, MLServer's `parallel_workers` (inference
processes behind its one uvicorn process, which parses and answers HTTP). wrk posts 1-row and
1,000-row bodies with keep-alive on 8 connections, 2 s per cell, servers interleaved within a
cell, 3 rounds; ratios are medians of ratios taken within a round.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.load import LoadResult, ensure_wrk, run_load
from bench.report import index_runs, paired_ratio, publish
from harness.bodies import crystal_rows
from harness.server import REPO_ROOT, ServerProcess, cpu_seconds, free_port, request

MLSERVER_VERSION = "1.7.1"
PINS = (
    f"mlserver=={MLSERVER_VERSION}",
    f"mlserver-sklearn=={MLSERVER_VERSION}",
    "scikit-learn==1.9.1",  # the version the served joblib was saved with
    "joblib==1.6.0",
    # uvloop 0.23.0, pip's own pick, raises in asyncio.get_event_loop() without a running loop,
    # which MLServer 1.7.1's inference workers call as they start: they die, no model loads.
    "uvloop==0.21.0",
)
VENV = Path.home() / ".cache" / "crystal-bench" / f"mlserver-{MLSERVER_VERSION}"
MODEL_FILE = REPO_ROOT / "export" / "sources" / "sklearn.joblib"
MODEL = "sklearn"
ROWS = (1, 1_000)
CONNECTIONS = 8
THREADS = 2
SECONDS = 2
ROUNDS = 3
WORKERS = 2
TOLERANCE = 1e-9
SERVERS = ("service", "mlserver")
# The name of each server's probability output: the service's own, MLServer's predict function.
OUTPUTS = {"service": "probabilities", "mlserver": "predict_proba"}


def ensure_venv(venv: Path = VENV) -> Path:
    """MLServer's virtual environment, made with python3.11 and the pins on first use; a stamp
    holding the pins marks it complete, so a half-made one is made again."""
    stamp = venv / "pins.txt"
    if stamp.exists() and stamp.read_text() == "\n".join(PINS):
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *PINS], check=True, timeout=1800)
    stamp.write_text("\n".join(PINS))
    return venv


def freeze(venv: Path) -> list[str]:
    """Every package in MLServer's environment: only PINS are pinned, the rest is what pip chose
    the day the environment was made, so the results say what ran."""
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def write_settings(folder: Path, http_port: int) -> None:
    """MLServer's server and model settings: loopback only, gRPC and metrics on free loopback
    ports (MLServer cannot turn gRPC off), 2 inference workers, `predict_proba` by default."""
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": WORKERS,
        "load_models_at_startup": True,
    }
    model = {
        "name": MODEL,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(MODEL_FILE), "extra": {"predict_fn": "predict_proba"}},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=1))
    (folder / "model-settings.json").write_text(json.dumps(model, indent=1))


class MLServerProcess(ServerProcess):
    """`mlserver start <folder>` as a ServerProcess: settings.json is written with the port the
    harness picked just before each spawn. Its working directory is the folder, where MLServer
    keeps its metrics files. Ready means the model is: the server's own probe answers 200 before
    the inference workers have loaded it."""

    def __init__(self, venv: Path, folder: Path):
        self.folder = folder
        super().__init__(
            command=("start", str(folder)),
            python=str(venv / "bin" / "mlserver"),
            ready_probe=("GET", f"/v2/models/{MODEL}/ready", None),
        )

    def start(self) -> None:
        write_settings(self.folder, self.port)
        self.cwd = self.folder
        super().start()


def stop_group(server: ServerProcess, grace: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL to the whole process group after `grace` seconds or if anything is
    left (MLServer's inference workers may outlive its main process); whether it exited by
    itself. MLServer 1.7.1 sometimes does not: its SIGTERM handler runs twice, the second fails
    on metrics files the first removed, and uvicorn then waits for its background tasks."""
    try:
        server.stop(timeout=grace)
        exited = True
    except subprocess.TimeoutExpired:
        exited = False  # stop() has already SIGKILLed the group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    return exited


def body(server: str, rows: int) -> bytes:
    """A V2 request of `rows` rows: one FP64 tensor of shape [rows, 4], as MLServer's NumPy codec
    takes it; the service is asked for its probability output only, as MLServer answers."""
    data = [value for row in crystal_rows(rows) for value in row]
    tensor = {"name": "input", "shape": [rows, 4], "datatype": "FP64", "data": data}
    document: dict = {"inputs": [tensor]}
    if server == "service":
        document["outputs"] = [{"name": OUTPUTS["service"]}]
    return json.dumps(document, separators=(",", ":")).encode()


def probabilities(server: str, port: int, payload: bytes) -> list[float]:
    """The flat probabilities one server answers; refused unless it answers 200."""
    status, answer = request(port, "POST", f"/v2/models/{MODEL}/infer", payload)
    if status != 200:
        raise RuntimeError(f"{server} answered {status}: {answer[:300]!r}")
    outputs = {output["name"]: output for output in json.loads(answer)["outputs"]}
    return [float(value) for value in outputs[OUTPUTS[server]]["data"]]


def check_agreement(ports: dict[str, int], bodies: dict[tuple[str, int], Path]) -> float:
    """The largest difference between the two servers' probabilities over every body."""
    worst = 0.0
    for rows in ROWS:
        service, mlserver = (
            probabilities(s, ports[s], bodies[s, rows].read_bytes()) for s in SERVERS
        )
        if len(service) != len(mlserver) or len(service) != rows * 3:
            raise RuntimeError(f"{rows} rows: {len(service)} and {len(mlserver)} values")
        worst = max(worst, *(abs(a - b) for a, b in zip(service, mlserver, strict=True)))
    if worst > TOLERANCE:
        raise RuntimeError(f"probabilities differ by {worst:.3g} (> {TOLERANCE})")
    return worst


def process_cpu(server: ServerProcess) -> list[float]:
    """CPU seconds so far of the main process, then of each child: MLServer's main process
    parses and answers all HTTP itself, the service's master none."""
    pids = [server.process.pid, *server.worker_pids()]
    return [cpu_seconds(pid) for pid in pids]


def measurement(
    round_index: int, server: str, rows: int, result: LoadResult, cpu: list[float]
) -> dict:
    """One run in the shape bench.report pairs by round (one endpoint, one client), with the
    CPU seconds per run second of the main process and of its children (each)."""
    return {
        "round": round_index,
        "server": server,
        "endpoint": MODEL,
        "rows": rows,
        "client": "keep-alive",
        "requests": result.requests,
        "errors": result.errors,
        "rps": result.rps,
        "rows_per_s": result.rps * rows,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "main_cores": cpu[0] / result.seconds,
        "children_cores": [round(c / result.seconds, 3) for c in cpu[1:]],
    }


def measure(folder: Path) -> dict:
    """Starts both servers, checks they agree, loads them round by round, stops them."""
    venv = ensure_venv()
    wrk = ensure_wrk(install=True)
    bodies = {}
    for server in SERVERS:
        for rows in ROWS:
            bodies[server, rows] = folder / f"{server}-{rows}.json"
            bodies[server, rows].write_bytes(body(server, rows))
    settings = folder / "mlserver"
    settings.mkdir()
    servers: dict[str, ServerProcess] = {}
    try:
        servers["service"] = ServerProcess({"WORKERS": str(WORKERS)}).wait_ready()
        servers["mlserver"] = MLServerProcess(venv, settings).wait_ready(timeout=120)
        ports = {name: server.port for name, server in servers.items()}
        ready_s = {name: server.ready_seconds for name, server in servers.items()}
        max_diff = check_agreement(ports, bodies)
        runs = []
        for round_index in range(1, ROUNDS + 1):
            for rows in ROWS:
                order = SERVERS if round_index % 2 else SERVERS[::-1]
                for server in order:
                    url = f"{servers[server].url}/v2/models/{MODEL}/infer"
                    before = process_cpu(servers[server])
                    result = run_load(
                        wrk, url, [bodies[server, rows]], CONNECTIONS, THREADS, SECONDS, True
                    )
                    cpu = [b - a for a, b in zip(before, process_cpu(servers[server]), strict=True)]
                    runs.append(measurement(round_index, server, rows, result, cpu))
    finally:
        exited = {name: stop_group(server) for name, server in servers.items()}
    return {
        "mlserver": MLSERVER_VERSION,
        "pins": list(PINS),
        "environment": freeze(venv),
        "model_file": str(MODEL_FILE.relative_to(REPO_ROOT)),
        "client": "wrk" if wrk else "python",
        "connections": CONNECTIONS,
        "seconds": SECONDS,
        "rounds": ROUNDS,
        "workers": WORKERS,
        "ready_seconds": ready_s,
        "max_abs_diff": max_diff,
        "exited_on_sigterm": exited,
        "cells": cells(runs),
        "runs": runs,
    }


def cells(runs: list[dict]) -> list[dict]:
    """Per server and row count: medians over rounds, errors summed, and the service's ratios
    to MLServer paired by round."""
    indexed = index_runs(runs)
    result = []
    for rows in ROWS:
        for server in SERVERS:
            mine = [r for r in runs if r["server"] == server and r["rows"] == rows]
            cell = {"server": server, "rows": rows, "errors": sum(r["errors"] for r in mine)}
            for metric in ("rps", "rows_per_s", "p50_ms", "p99_ms", "main_cores"):
                cell[metric] = statistics.median(r[metric] for r in mine)
            if server == "service":
                shape = (MODEL, rows, "keep-alive")
                cell["vs_mlserver"] = {
                    metric: paired_ratio(indexed, server, "mlserver", shape, metric)
                    for metric in ("rps", "p50_ms", "p99_ms")
                }
            result.append(cell)
    return result


def markdown(results: dict) -> str:
    exited = {name: "yes" if done else "no" for name, done in results["exited_on_sigterm"].items()}
    lines = [
        f"# The service against MLServer {results['mlserver']}",
        "",
        f"`python -m bench.mlserver`: POST /v2/models/sklearn/infer, V2 JSON, FP64 [rows, 4]; "
        f"{results['client']}, keep-alive, {results['connections']} connections, "
        f"{results['seconds']} s per cell, {results['rounds']} rounds interleaved; "
        f"{results['workers']} workers each. Both serve `{results['model_file']}` "
        f"(the service as its ONNX export); probabilities agree within "
        f"{results['max_abs_diff']:.2g}. Ready after: service "
        f"{results['ready_seconds']['service']:.2f} s, MLServer "
        f"{results['ready_seconds']['mlserver']:.2f} s. Exited within 10 s of SIGTERM (else "
        f"SIGKILLed): service {exited['service']}, MLServer {exited['mlserver']}.",
        "",
        "| server | rows | req/s | rows/s | p50 ms | p99 ms | errors | main process CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in results["cells"]:
        lines.append(
            f"| {c['server']} | {c['rows']:,} | {c['rps']:,.0f} | {c['rows_per_s']:,.0f} "
            f"| {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {c['errors']} | {c['main_cores']:.2f} |"
        )
    lines += [
        "",
        "Main process CPU: cores the server's main process used during the load (MLServer's "
        "parses and answers all HTTP; the service's gunicorn master only watches its workers).",
        "",
        "Service ÷ MLServer, median of per-round ratios (req/s: higher is better for the "
        "service; latency: lower is).",
        "",
        "| rows | req/s | p50 | p99 |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for c in results["cells"]:
        if c["server"] == "service":
            r = c["vs_mlserver"]
            lines.append(
                f"| {c['rows']:,} | {r['rps']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mlserver", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mlserver-") as folder:
        results = measure(Path(folder))
    publish(args.out, "mlserver", results, markdown(results))


if __name__ == "__main__":
    main()
