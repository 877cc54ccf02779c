"""The measurement loop: servers started once per round, cells interleaved across servers.

A round starts every server (timing spawn to first answer), checks each answers every cell's
bodies by the contract, then loads each cell on each server in turn, the server order rotating
from round to round, and reads the workers' memory at the end. Noise from other work on the
machine then lands on all servers alike, and medians over rounds smooth what remains.
"""

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.bodies import Body, write_bodies
from bench.load import LoadResult, run_python, run_wrk
from bench.servers import RunningServer, ServerSpec, post

KEEP_ALIVE = "keep-alive"
CLOSE = "close"


@dataclass(frozen=True)
class Cell:
    """One load shape: which route, how many rows per request, which kind of client."""

    endpoint: str
    rows: int
    client: str


@dataclass(frozen=True)
class Plan:
    servers: dict[str, ServerSpec]
    cells: list[Cell]
    rounds: int
    seconds: float
    connections: int
    wrk_threads: int
    wrk: str | None  # None: the Python client


def check_answer(server: str, body: Body, status: int, answer: bytes) -> None:
    """Refuses to measure a server that does not answer the contract: fast and wrong is no use."""
    if status != 200:
        raise RuntimeError(f"{server} /{body.endpoint} answered {status}: {answer[:300]!r}")
    document = json.loads(answer)
    if len(document["prediction"]) != body.rows or len(document["scores"]) != body.rows:
        raise RuntimeError(f"{server} /{body.endpoint} answered the wrong number of rows")


def load_cell(plan: Plan, port: int, cell: Cell, bodies: list[Body]) -> LoadResult:
    url = f"http://127.0.0.1:{port}/{cell.endpoint}"
    paths = [body.path for body in bodies]
    keep_alive = cell.client == KEEP_ALIVE
    if plan.wrk:
        seconds = max(1, round(plan.seconds))
        return run_wrk(
            plan.wrk, url, paths, plan.connections, plan.wrk_threads, seconds, keep_alive
        )
    return run_python(url, paths, plan.connections, plan.seconds, keep_alive)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_plan(plan: Plan, body_dir: Path, log: Callable[[str], None] = _progress) -> dict:
    """Runs every round; returns raw per-round measurements and per-round server facts."""
    bodies = {
        (cell.endpoint, cell.rows): write_bodies(body_dir, cell.endpoint, cell.rows)
        for cell in plan.cells
    }
    probe = write_bodies(body_dir, "sklearn", 1)[0].path.read_bytes()
    names = list(plan.servers)
    measurements, server_rounds = [], []
    for round_index in range(plan.rounds):
        running: dict[str, RunningServer] = {}
        try:
            for name in names:
                running[name] = RunningServer(plan.servers[name], probe)
                log(f"round {round_index + 1}: {name} ready in {running[name].ready_seconds:.2f}s")
            for name, server in running.items():
                for cell_bodies in bodies.values():
                    for body in cell_bodies:
                        path = f"/{body.endpoint}"
                        check_answer(name, body, *post(server.port, path, body.path.read_bytes()))
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for cell in plan.cells:
                for name in order:
                    result = load_cell(
                        plan, running[name].port, cell, bodies[cell.endpoint, cell.rows]
                    )
                    measurements.append(_measurement(round_index, name, cell, result))
                    log(
                        f"round {round_index + 1}: {name:<12} /{cell.endpoint:<9} "
                        f"{cell.rows:>5} rows {cell.client:<10} {result.rps:8.0f} req/s "
                        f"p99 {result.p99_ms:7.2f} ms errors {result.errors}"
                    )
            for name, server in running.items():
                server_rounds.append(
                    {
                        "round": round_index,
                        "server": name,
                        "ready_s": server.ready_seconds,
                        "worker_rss_mb": server.worker_rss_mb(),
                    }
                )
        finally:
            for server in running.values():
                server.stop()
    return {"measurements": measurements, "server_rounds": server_rounds}


def _measurement(round_index: int, server: str, cell: Cell, result: LoadResult) -> dict:
    return {
        "round": round_index,
        "server": server,
        "endpoint": cell.endpoint,
        "rows": cell.rows,
        "client": cell.client,
        "requests": result.requests,
        "seconds": round(result.seconds, 3),
        "rps": result.rps,
        "rows_per_s": result.rps * cell.rows,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "http_errors": result.http_errors,
        "socket_errors": result.socket_errors,
        "client_cores": result.client_cpu_s / result.seconds if result.seconds else 0.0,
        "time": time.time(),
    }
