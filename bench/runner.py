"""The measurement loop: servers started once per round, cells interleaved across servers.

A round starts every server (timing spawn to first answer), checks each answers every cell's
bodies by the contract, reads each worker's idle memory, then loads each cell on each server in
turn, the server order rotating from round to round, then runs the overload and slow-client
scenarios on the service, and reads the workers' memory again. Noise from other work on the
machine then lands on all servers alike, and medians over rounds smooth what remains.

Around every load, each worker's CPU time is read from /proc: its share of the server's work
shows when the load went mostly to one worker, which halves what two workers can answer. The
kernel's count of connections dropped from full accept queues is read too.
"""

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench import scenarios
from bench.bodies import Body, write_bodies
from bench.load import LoadResult, run_load
from bench.servers import ServerSpec, listen_overflows, start
from harness.server import ServerProcess, request

KEEP_ALIVE = "keep-alive"
CLOSE = "close"
SERVICE = "service"
FLOOR = "floor"
OVERLOAD = "overload"
SLOW_CLIENTS = "slow-clients"
T = TypeVar("T")


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


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def observed(server: ServerProcess, load: Callable[[], T]) -> tuple[T, dict]:
    """Runs `load`; returns its result with each worker's CPU seconds spent meanwhile and the
    connections the kernel dropped from full accept queues."""
    cpu_before, dropped_before = server.worker_cpu_seconds(), listen_overflows()
    result = load()
    cpu_after, dropped = server.worker_cpu_seconds(), listen_overflows() - dropped_before
    worker_cpu = [
        round(cpu_after[pid] - cpu_before[pid], 3) for pid in sorted(cpu_before) if pid in cpu_after
    ]
    return result, {"worker_cpu_s": worker_cpu, "listen_overflows": dropped}


def load_fields(result: LoadResult) -> dict:
    return {
        "requests": result.requests,
        "seconds": round(result.seconds, 3),
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "max_ms": result.max_ms,
        "http_errors": result.http_errors,
        "unavailable": result.unavailable,
        "socket_errors": result.socket_errors,
        "client_cores": result.client_cpu_s / result.seconds if result.seconds else 0.0,
    }


def run_cell(plan: Plan, name: str, server: ServerProcess, cell: Cell, bodies: list[Body]) -> dict:
    url = f"http://127.0.0.1:{server.port}/{cell.endpoint}"
    paths = [body.path for body in bodies]
    result, facts = observed(
        server,
        lambda: run_load(
            plan.wrk,
            url,
            paths,
            plan.connections,
            plan.wrk_threads,
            plan.seconds,
            cell.client == KEEP_ALIVE,
        ),
    )
    return {
        "server": name,
        "endpoint": cell.endpoint,
        "rows": cell.rows,
        "client": cell.client,
        "connections": plan.connections,
        **load_fields(result),
        "rows_per_s": result.rps * cell.rows,
        **facts,
        "time": time.time(),
    }


def run_scenarios(plan: Plan, running: dict[str, ServerProcess], body: Body) -> list[dict]:
    """Overload on the service (with probes) and on the ASGI floor when it runs, then slow
    clients on the service; one record each."""
    path = f"/{body.endpoint}"
    records = []
    for name in (SERVICE, FLOOR):
        if name not in running:
            continue
        server = running[name]
        (result, probes), facts = observed(
            server,
            lambda server=server, name=name: scenarios.overload(
                plan.wrk,
                server.port,
                path,
                [body.path],
                plan.wrk_threads,
                plan.seconds,
                probe=name == SERVICE,
            ),
        )
        records.append(
            {
                "scenario": OVERLOAD,
                "server": name,
                "connections": scenarios.OVERLOAD_CONNECTIONS,
                **load_fields(result),
                **facts,
                **({"probes": vars(probes)} if probes else {}),
            }
        )
    server = running[SERVICE]
    (result, held), facts = observed(
        server, lambda: scenarios.slow_clients(plan.wrk, server.port, path, body.path, plan.seconds)
    )
    records.append(
        {
            "scenario": SLOW_CLIENTS,
            "server": SERVICE,
            "connections": 1,
            **load_fields(result),
            **facts,
            "silent": scenarios.SILENT_CONNECTIONS,
            "slow": scenarios.SLOW_CONNECTIONS,
            "stalled": scenarios.STALLED_UPLOADS,
            "held_at_end": held,
        }
    )
    return records


def run_plan(plan: Plan, body_dir: Path, log: Callable[[str], None] = _progress) -> dict:
    """Runs every round; returns raw per-round measurements, scenarios and server facts."""
    bodies = {
        (cell.endpoint, cell.rows): write_bodies(body_dir, cell.endpoint, cell.rows)
        for cell in plan.cells
    }
    one_row = write_bodies(body_dir, "sklearn", 1)[0]
    names = list(plan.servers)
    measurements, scenario_runs, server_rounds = [], [], []
    for round_index in range(plan.rounds):
        running: dict[str, ServerProcess] = {}
        try:
            for name in names:
                running[name] = start(plan.servers[name], one_row.path.read_bytes())
                log(f"round {round_index + 1}: {name} ready in {running[name].ready_seconds:.2f}s")
            idle_rss = {}
            for name, server in running.items():
                for body in [b for cell_bodies in bodies.values() for b in cell_bodies]:
                    path = f"/{body.endpoint}"
                    answer = request(server.port, "POST", path, body.path.read_bytes())
                    check_answer(name, body, *answer)
                server.wait_idle()
                idle_rss[name] = server.worker_rss_mb()
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for cell in plan.cells:
                for name in order:
                    m = run_cell(plan, name, running[name], cell, bodies[cell.endpoint, cell.rows])
                    measurements.append({"round": round_index, **m})
                    log(
                        f"round {round_index + 1}: {name:<10} /{cell.endpoint:<9} "
                        f"{cell.rows:>5} rows {cell.client:<10} {m['rps']:8.0f} req/s "
                        f"p99 {m['p99_ms']:7.2f} ms errors {m['http_errors']}+"
                        f"{m['unavailable']}+{m['socket_errors']} worker CPU {m['worker_cpu_s']}"
                    )
            if SERVICE in running:
                for record in run_scenarios(plan, running, one_row):
                    scenario_runs.append({"round": round_index, **record})
                    log(
                        f"round {round_index + 1}: {record['server']:<10} {record['scenario']:<12} "
                        f"{record['rps']:8.0f} req/s p99 {record['p99_ms']:7.2f} ms "
                        f"max {record['max_ms']:7.2f} ms errors {record['http_errors']}+"
                        f"{record['unavailable']}+{record['socket_errors']}"
                    )
            for name, server in running.items():
                server_rounds.append(
                    {
                        "round": round_index,
                        "server": name,
                        "ready_s": server.ready_seconds,
                        "worker_rss_mb_idle": idle_rss[name],
                        "worker_rss_mb_after": server.worker_rss_mb(),
                    }
                )
        finally:
            for server in running.values():
                server.stop()
    return {
        "measurements": measurements,
        "scenarios": scenario_runs,
        "server_rounds": server_rounds,
    }
