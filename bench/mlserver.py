"""`python -m bench.mlserver`: the service against MLServer, the usual off-the-shelf V2 server.

Both serve `export/sources/sklearn.joblib` over V2 JSON (loaded with wrk, and with an asyncio
client) and gRPC ModelInfer (the same asyncio client), 2 workers each (MLServer's `parallel_workers`
behind its one HTTP and gRPC process): the service its ONNX export, MLServer (`mlserver_sklearn`,
`predict_proba`) the joblib itself, so their answers can be compared. MLServer lives in a virtual
environment of its own, made once: its dependencies have no business in the project's."""

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import grpc
import numpy as np

from bench.report import STATUS, errors, group, medians, paired_ratios, publish, table
from bench.runner import CONNECTIONS, ROWS, SOURCES, asyncio_load, find_wrk, observed, run_load
from harness.bodies import crystal_rows, encode
from harness.server import REPO_ROOT, ServerProcess, free_port, request
from serve.grpc_messages import INFER_ENDPOINT, ModelInferRequest, ModelInferResponse

VERSION = "1.7.1"
# scikit-learn: the version the served joblib was saved with. uvloop 0.23.0, pip's own pick, raises
# in asyncio.get_event_loop() without a running loop, which MLServer 1.7.1's inference workers
# call as they start: they die, no model loads.
PINS = (f"mlserver=={VERSION}", f"mlserver-sklearn=={VERSION}", "scikit-learn==1.9.1")
PINS += ("joblib==1.6.0", "uvloop==0.21.0")
VENV = Path.home() / ".cache" / "crystal-bench" / f"mlserver-{VERSION}"
INFER = "/v2/models/sklearn/infer"
SECONDS, ROUNDS, WORKERS, TOLERANCE = 2, 3, 2, 1e-9
PROTOCOLS, ASYNCIO, SHAPE = ("REST", "gRPC"), "asyncio", ("rows", "protocol", "client")
# The service's 1-row gRPC req/s over MLServer's gRPC, over its own REST (the same client).
TARGETS = {"vs_mlserver": (3.0, "MLServer's gRPC"), "vs_rest": (0.5, "the service's REST")}
OUTPUTS = {"service": "probabilities", "mlserver": "predict_proba"}  # output, predict_fn


def ensure_venv() -> None:
    """MLServer's environment, made with python3.11 once: the pins stamped in it mark it done."""
    stamp = VENV / "pins.txt"
    if stamp.exists() and stamp.read_text() == "\n".join(PINS):
        return
    shutil.rmtree(VENV, ignore_errors=True)  # a half-made one; venv makes the parents
    subprocess.run(["python3.11", "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *PINS], check=True, timeout=1800)
    stamp.write_text("\n".join(PINS))


class MLServerProcess(ServerProcess):
    """`mlserver start` in a folder, where it keeps its metrics files. Ready means the model is:
    the server's own probe answers 200 before its inference workers have loaded it."""

    def __init__(self, folder: Path):
        ensure_venv()
        self.folder, probe = folder, ("GET", "/v2/models/sklearn/ready", None)
        mlserver, command = str(VENV / "bin" / "mlserver"), ("start", str(folder))
        super().__init__(None, command, python=mlserver, cwd=folder, ready_probe=probe)

    def start(self) -> None:
        """Settings with this spawn's ports, metrics (it cannot turn them off) on another."""
        settings = {"host": "127.0.0.1", "http_port": self.port, "grpc_port": self.grpc_port}
        settings |= {"metrics_port": free_port(), "parallel_workers": WORKERS}
        settings["load_models_at_startup"] = True
        model = {"name": "sklearn", "implementation": "mlserver_sklearn.SKLearnModel"}
        model["parameters"] = {"uri": str(SOURCES / "sklearn.joblib")}
        model["parameters"]["extra"] = {"predict_fn": "predict_proba"}
        (self.folder / "settings.json").write_text(json.dumps(settings, indent=1))
        (self.folder / "model-settings.json").write_text(json.dumps(model, indent=1))
        super().start()


def stop_group(server: ServerProcess) -> bool:
    """Whether the server exited within 10 s of SIGTERM; its group SIGKILLed after: MLServer 1.7.1
    may hang (its SIGTERM handler runs twice) and its inference workers may outlive it."""
    exited = False
    with contextlib.suppress(subprocess.TimeoutExpired):  # then stop() has SIGKILLed the group
        server.stop(timeout=10.0)
        exited = True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    return exited


def write_bodies(folder: Path, server: str, rows: int) -> dict[str, Path]:
    """One FP64 tensor of shape [rows, 4] in V2 JSON (as MLServer's NumPy codec takes it) and in a
    ModelInferRequest's raw_input_contents; the service asked for its probabilities only, as
    MLServer answers."""
    tensor, values = {"name": "input", "shape": [rows, 4], "datatype": "FP64"}, crystal_rows(rows)
    outputs = {"outputs": [{"name": OUTPUTS[server]}]} if server == "service" else {}
    rest = {"inputs": [tensor | {"data": [value for row in values for value in row]}]} | outputs
    raw = {"raw_input_contents": [np.array(values, dtype=np.float64).tobytes()]}
    rpc = ModelInferRequest(model_name="sklearn", inputs=[tensor], **raw, **outputs)
    paths = {protocol: folder / f"{server}-{rows}.{protocol}" for protocol in PROTOCOLS}
    paths["REST"].write_bytes(encode(rest))
    paths["gRPC"].write_bytes(rpc.SerializeToString())
    return paths


def max_difference(servers: dict[str, ServerProcess], bodies: dict[tuple, dict]) -> float:
    """The largest difference between the servers' probabilities over REST and gRPC; refused over
    TOLERANCE, or on an answer other than 200 or OK."""
    worst, first = 0.0, {}
    for rows, (name, server), protocol in itertools.product(ROWS, servers.items(), PROTOCOLS):
        body = bodies[name, rows][protocol].read_bytes()
        if protocol == "gRPC":  # an error status raises
            with grpc.insecure_channel(server.grpc_url) as channel:
                answer = ModelInferResponse.FromString(channel.unary_unary(INFER_ENDPOINT)(body))
            values = np.frombuffer(answer.raw_output_contents[0])
        elif (answer := request(server.port, "POST", INFER, body))[0] != 200:
            raise RuntimeError(f"{name} answered {answer[0]}: {answer[1][:300]!r}")
        else:
            outputs = {output["name"]: output for output in json.loads(answer[1])["outputs"]}
            values = np.array(outputs[OUTPUTS[name]]["data"])
        if len(values) != rows * 3:
            raise RuntimeError(f"{name} over {protocol}: {len(values)} values for {rows} rows")
        worst = max(worst, float(np.abs(values - first.setdefault(rows, values)).max()))
    if worst > TOLERANCE:
        raise RuntimeError(f"probabilities differ by {worst:.3g} (> {TOLERANCE})")
    return worst


def measure(folder: Path) -> dict:
    """Starts both servers, checks they agree, loads them round by round, stops them."""
    bodies = {(name, rows): write_bodies(folder, name, rows) for name in OUTPUTS for rows in ROWS}
    rest = "wrk" if (wrk := find_wrk()) else "python"  # REST's first client; then asyncio's, both
    loads = [("REST", wrk, rest), ("REST", asyncio_load, ASYNCIO), ("gRPC", asyncio_load, ASYNCIO)]
    servers: dict[str, ServerProcess] = {}
    try:
        servers["service"] = ServerProcess({"WORKERS": str(WORKERS)}).wait_ready()
        servers["mlserver"] = MLServerProcess(folder).wait_ready(timeout=120)  # bodies beside
        worst, runs = max_difference(servers, bodies), []
        for index, rows, how in itertools.product(range(1, ROUNDS + 1), ROWS, loads):
            for name in list(servers)[:: 1 if index % 2 else -1]:
                (protocol, client, label), server = how, servers[name]
                url = server.grpc_url if protocol == "gRPC" else server.url + INFER
                load = (client, url, [bodies[name, rows][protocol]], CONNECTIONS, SECONDS, True)
                run = observed(server, partial(run_load, *load)) | {"round": index, "server": name}
                run |= {"rows": rows, "protocol": protocol, "client": label, "errors": errors(run)}
                cores = [round(c / run["seconds"], 3) for c in run["worker_cpu_s"]]
                run |= {"main_cores": run["main_cpu_s"] / run["seconds"], "children_cores": cores}
                runs.append(run | {"worker_cores": sum(cores), "rows_per_s": run["rps"] * rows})
    finally:
        exited = {name: stop_group(server) for name, server in servers.items()}
    freeze = subprocess.run([VENV / "bin" / "pip", "freeze"], capture_output=True, text=True)
    results = {"mlserver": VERSION, "pins": list(PINS), "environment": freeze.stdout.split()}
    results |= {"model_file": "export/sources/sklearn.joblib", "client": rest}
    results |= {"connections": CONNECTIONS, "seconds": SECONDS, "rounds": ROUNDS}
    results["ready_seconds"] = {name: server.ready_seconds for name, server in servers.items()}
    results |= {"workers": WORKERS, "max_abs_diff": worst, "exited_on_sigterm": exited}
    results |= {"cells": cells(runs), "runs": runs}
    return results


def cells(runs: list[dict]) -> list[dict]:
    """Medians over rounds per row count, protocol, client and server; the service's ratios to
    MLServer under the same load and, over gRPC, to its own REST from the same client."""
    result, shapes = [], group(runs, *SHAPE)
    for (rows, protocol, client, server), mine in group(runs, *SHAPE, "server").items():
        cell = {"server": server, "rows": rows, "protocol": protocol, "client": client}
        cell |= medians(mine, "main_cores", "worker_cores", "client_cores")
        cell["errors"] = sum(r["errors"] for r in mine)
        cell["worker_ms"] = 1000 * cell["worker_cores"] / cell["rps"]  # CPU per request
        if server == "service":
            cell["vs_mlserver"] = paired_ratios(shapes[rows, protocol, client], server, "mlserver")
        if server == "service" and protocol == "gRPC":
            rest = [r for r in shapes[rows, "REST", client] if r["server"] == server]
            cell["vs_rest"] = paired_ratios([*mine, *rest], "gRPC", "REST", key="protocol")
        result.append(cell)
    return result


def markdown(results: dict) -> str:
    exited = {name: "yes" if done else "no" for name, done in results["exited_on_sigterm"].items()}
    ready, cells = results["ready_seconds"], results["cells"]
    one = next(c for c in cells if "vs_rest" in c and c["rows"] == 1)  # the service's gRPC
    goals = [(one[k]["rps"], n, of) for k, (n, of) in TARGETS.items()]
    ratios = [{k: f"{c[k]['rps']:.2f}" if k in c else "-" for k in TARGETS} for c in cells]
    blocks = [
        f"# The service against MLServer {results['mlserver']}",
        f"`python -m bench.mlserver`: POST {INFER}, V2 JSON, FP64 [rows, 4], or ModelInfer over "
        f"gRPC (raw_input_contents); {results['connections']} connections (keep-alive), "
        f"{results['seconds']} s per cell, {results['rounds']} rounds interleaved; "
        f"{results['workers']} workers each. Both serve `{results['model_file']}` (the service as "
        f"its ONNX export); probabilities agree within {results['max_abs_diff']:.2g} over both "
        f"protocols. Ready after: service {ready['service']:.2f} s, MLServer "
        f"{ready['mlserver']:.2f} s. Exited within 10 s of SIGTERM (else SIGKILLed): service "
        f"{exited['service']}, MLServer {exited['mlserver']}.",
        table(
            "server={server} | protocol={protocol} | client={client} | rows:={rows:,} "
            "| req/s:={rps:,.0f} | rows/s:={rows_per_s:,.0f} | p50 ms:={p50_ms:.2f} "
            "| p99 ms:={p99_ms:.2f} | errors:={errors} | ÷ MLServer req/s:={vs_mlserver} "
            "| gRPC ÷ REST req/s:={vs_rest} | client CPU:={client_cores:.2f} "
            "| main process CPU:={main_cores:.2f} | workers' CPU:={worker_cores:.2f} "
            "| workers' CPU ms per request:={worker_ms:.2f}",
            (cell | ratio for cell, ratio in zip(cells, ratios, strict=True)),
        ),
        "÷ MLServer: the service's req/s over MLServer's under the same load; gRPC ÷ REST: the "
        "service's over its own REST from the same client; medians of per-round ratios (latency "
        "ratios in mlserver.json). 1-row gRPC req/s: "
        + "; ".join(f"{x:.2f}x {of} (target >= {n:g}x: {STATUS[x >= n]})" for x, n, of in goals),
        "CPU: cores used by the client (one asyncio process tops out near one), the server's main "
        "process (MLServer's answers all HTTP and gRPC; gunicorn's only watches) and its workers.",
    ]
    return "\n\n".join(blocks) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mlserver", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mlserver-") as folder:
        results = measure(Path(folder))
    publish(args.out, "mlserver", results, markdown(results))


if __name__ == "__main__":
    main()
