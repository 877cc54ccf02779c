"""The servers compared, the load on them, and the rounds.

Every round starts every server, checks its answers, loads each cell on each server in turn (the
order rotating, so noise on the shared machine lands on all alike), then runs the scenarios.
Around every load each worker's CPU time is read (a load that went mostly to one worker halves
what two answer), and the connections the kernel dropped from full accept queues."""

import asyncio
import hashlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import grpc

from harness.bodies import documents, encode, endpoints, with_answers
from harness.load import Call, Tally
from harness.load import run_load as python_load
from harness.server import REPO_ROOT, SERVE, ServerProcess, cpu_seconds, request
from serve.grpc_messages import INFER_ENDPOINT
from serve.metrics import FOLDER_ENV

ENDPOINTS, ROWS = tuple(endpoints()), (1, 1000)  # of the cells
KEEP_ALIVE, CLOSE = "keep-alive", "close"
JSON = {"Content-Type": "application/json", "Accept-Encoding": "identity"}  # as wrk: no gzip
OWN_TCP = [("grpc.use_local_subchannel_pool", 1)]  # a gRPC channel's own TCP connection
Client = str | Callable[..., tuple[Tally, float]] | None  # run_load's
CONNECTIONS, WRK_THREADS = 8, 2
OVERLOAD_CONNECTIONS, PROBE_INTERVAL_S = 256, 0.1
# Held open in the slow-client scenario; stalled uploads twice what 2 workers' MAX_IN_FLIGHT holds.
HELD = {"silent": 300, "slow": 50, "stalled": 32}
SOURCES = REPO_ROOT / "export" / "sources"
_GUNICORN = ("-m", "gunicorn", "--config", str(REPO_ROOT / "serve" / "gunicorn.conf.py"))
_GTHREAD = {"GUNICORN_CMD_ARGS": "--worker-class gthread --threads 4"}  # outranks the config
MODELS = {"sklearn": SOURCES / "sklearn.joblib", "pytorch": SOURCES / "pytorch.pt"}  # native's
_MODELS = {f"BENCH_{name.upper()}_MODEL": str(path) for name, path in MODELS.items()}
# Each server's arguments to python and what it adds to the environment.
SERVERS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "service": (SERVE, {}),  # the real entry point, start-up checks included
    "floor": ((*_GUNICORN, "bench.floor_app:app"), {}),
    "floor-wsgi": ((*_GUNICORN, "bench.floor_app:wsgi_app"), _GTHREAD),
    "native": ((*_GUNICORN, "bench.native_app:application()"), _GTHREAD | _MODELS),
}


class Plan(NamedTuple):
    servers: list[str]
    cells: list[tuple[str, str, int]]  # (client, endpoint, rows)
    rounds: int
    seconds: float
    workers: int
    wrk: str | None  # None: the harness's Python client


def find_wrk() -> str | None:
    """wrk's path; installed from Debian's packages when missing and this is root."""
    if shutil.which("wrk") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return shutil.which("wrk")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        if subprocess.run(command, env=env, capture_output=True, timeout=600).returncode:
            return None
    return shutil.which("wrk")


def run_load(
    wrk: Client, url: str, bodies: list[Path], clients: int, seconds: float, keep_alive: bool
) -> dict:
    """`clients` connections posting the bodies in turn, with wrk (its path; post.lua prints a JSON
    line) or a Python client with harness.load.run_load's signature (asyncio_load; None: the
    harness's, whose GIL caps its rate: a smoke run's); 503s apart from other errors."""

    def client_cpu() -> float:  # the load client's CPU seconds so far (wrk's once waited for)
        t = os.times()
        return t.children_user + t.children_system if isinstance(wrk, str) else t.user + t.system

    cpu = client_cpu()
    if not isinstance(wrk, str):
        calls, load = [Call("", path.read_bytes()) for path in bodies], wrk or python_load
        tally, elapsed = load(url, calls, clients, seconds, keep_alive=keep_alive, timeout=5)
        requests, unavailable = len(tally.latencies), tally.by_status[503]
        failed = sum(n for status, n in tally.by_status.items() if status >= 400) - unavailable
        figures = tally.latency_ms() | {"socket_errors": len(tally.failures)}
    else:
        command = [wrk, f"-t{min(WRK_THREADS, clients)}", f"-c{clients}", "--timeout", "5s"]
        command += [f"-d{round(seconds)}s", "-s", str(Path(__file__).with_name("post.lua"))]
        command += [*([] if keep_alive else ["-H", "Connection: close"]), url, "--", *bodies]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
        lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
        if done.returncode or not lines:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        s = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
        requests, unavailable, failed = s["requests"], s["unavailable"], s["failed"]
        elapsed = s["duration_us"] / 1e6
        figures = {f"{k}_ms": s[f"{k}_us"] / 1000 for k in ("p50", "p99", "max")}
        figures["socket_errors"] = sum(s[k] for k in ("connect", "read", "write", "timeout"))
    figures |= {"http_errors": failed, "unavailable": unavailable, "requests": requests}
    figures |= {"seconds": round(elapsed, 3), "rps": requests / elapsed}
    return figures | {"client_cores": (client_cpu() - cpu) / elapsed}


def asyncio_load(url: str, calls: list[Call], clients: int, seconds: float, **_: object) -> tuple:
    """The harness's client's part from one asyncio loop, for REST or (a URL without a scheme) gRPC
    ModelInfer: `clients` aiohttp sessions or gRPC channels, a call in flight on each."""
    tally, rpc = Tally(), "://" not in url

    async def loop(conn: Any, number: int, deadline: float) -> None:
        while (started := time.perf_counter()) < deadline:
            call, number = calls[number % len(calls)], number + 1
            try:
                if rpc:
                    answer = 200, await conn(call.body, timeout=5)
                else:
                    async with conn.post(url, data=call.body) as response:
                        answer = response.status, await response.read()
            except grpc.aio.AioRpcError as error:  # an answer, with its status
                answer = 503 if error.code() == grpc.StatusCode.UNAVAILABLE else 500, b""
            except (OSError, aiohttp.ClientError, TimeoutError) as error:
                tally.failures.append((time.monotonic(), type(error).__name__))
                await asyncio.sleep(0.01)  # a refused connection fails at once: do not spin
                continue
            tally.record(call, *answer, time.perf_counter() - started)

    async def run() -> float:
        if rpc:
            opened = [grpc.aio.insecure_channel(url, options=OWN_TCP) for _ in range(clients)]
            conns = [channel.unary_unary(INFER_ENDPOINT) for channel in opened]
        else:
            opened = conns = [aiohttp.ClientSession(headers=JSON) for _ in range(clients)]
        started = time.perf_counter()
        await asyncio.gather(*(loop(c, i, started + seconds) for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - started
        await asyncio.gather(*(each.close() for each in opened))
        return elapsed

    return tally, asyncio.run(run())


def start(name: str, workers: int) -> ServerProcess:
    """Ready when a 1-row POST /sklearn is answered 200; its access lines dropped, as a log
    shipper would take them, and inherited settings that would make servers differ left out."""
    command, env = SERVERS[name]
    probe = ("POST", "/sklearn", encode(documents("sklearn", 1)[0]))
    env, scrub = env | {"WORKERS": str(workers)}, ("GUNICORN_CMD_ARGS", FOLDER_ENV)
    server = ServerProcess(env, command, scrub=scrub, ready_probe=probe, keep_stdout=False)
    return server.wait_ready()


def listen_overflows() -> int:
    """Connections dropped so far from full accept queues (TcpExt ListenOverflows)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    return int(lines[1].split()[lines[0].split().index("ListenOverflows")])


def observed(server: ServerProcess, load: Callable[[], dict]) -> dict:
    """`load`'s figures, with the CPU seconds of the main process and of each worker meanwhile
    (one gone by the end left out), and the accept-queue drops."""
    main, dropped = cpu_seconds(server.process.pid), listen_overflows()
    workers = server.worker_cpu_seconds()
    figures = load()
    after = server.worker_cpu_seconds()
    figures["worker_cpu_s"] = [round(after[p] - cpu, 3) for p, cpu in workers.items() if p in after]
    figures["main_cpu_s"] = round(cpu_seconds(server.process.pid) - main, 3)
    return figures | {"listen_overflows": listen_overflows() - dropped}


def alongside(work: Callable[[threading.Event], None], load: Callable[[], dict]) -> dict:
    """`load`'s figures, with `work(stop)` running in a thread meanwhile."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,))
    thread.start()
    try:
        return load()
    finally:
        stop.set()
        thread.join()


def scenarios(plan: Plan, service: ServerProcess, floor: ServerProcess, body: Path) -> list[dict]:
    """256 connections on the service with readiness probed as a kubelet would, and on the ASGI
    floor for its tail in the same round; then one client on the service while HELD connections
    stay open (a default run ends within HEADER_TIMEOUT and TIMEOUT, which would close them)."""
    probes: list[float | None] = []  # ms; None: not 200 within 5 s

    def load(server: ServerProcess, clients: int) -> Callable[[], dict]:
        url = f"{server.url}/sklearn"
        return partial(run_load, plan.wrk, url, [body], clients, plan.seconds, True)

    def probe(stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = request(service.port, "GET", "/v2/health/ready", timeout=5.0)[0] == 200
            except OSError:
                ok = False
            probes.append((time.perf_counter() - started) * 1000 if ok else None)
            stop.wait(PROBE_INTERVAL_S)

    def slow_clients() -> dict:
        connect = partial(socket.create_connection, ("127.0.0.1", service.port))
        head = f"POST /sklearn HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\n"
        head += "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"
        held = {kind: [connect() for _ in range(n)] for kind, n in HELD.items()}
        for sock in held["stalled"]:
            sock.sendall(head.format(1000).encode() + b'{"crystalData": [[1,')
        slow_head = head.format(body.stat().st_size).encode()

        def send_slowly(stop: threading.Event) -> None:
            for i in range(len(slow_head)):
                if stop.wait(0.1):
                    return
                for sock in held["slow"]:
                    with suppress(OSError):  # closed by the server: counted at the end
                        sock.send(slow_head[i : i + 1])

        figures = alongside(send_slowly, load(service, 1)) | HELD
        # open: nothing from the server yet; answered: such as a 408; closed: end or reset.
        states = {"open": 0, "answered": 0, "closed": 0}
        for sock in itertools.chain(*held.values()):
            try:
                peek = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                states["answered" if peek else "closed"] += 1
            except BlockingIOError:
                states["open"] += 1
            except OSError:
                states["closed"] += 1
            sock.close()
        return figures | {"held_at_end": states}

    overload = {"scenario": "overload", "connections": OVERLOAD_CONNECTIONS}
    probed = observed(service, lambda: alongside(probe, load(service, OVERLOAD_CONNECTIONS)))
    answered = [ms for ms in probes if ms is not None]
    probed["probes"] = {"count": len(probes), "failed": len(probes) - len(answered)}
    probed["probes"]["max_ms"] = max(answered, default=0.0)
    return [
        overload | {"server": "service"} | probed,
        overload | {"server": "floor"} | observed(floor, load(floor, OVERLOAD_CONNECTIONS)),
        {"scenario": "slow-clients", "server": "service", "connections": 1}
        | observed(service, slow_clients),
    ]


def write_bodies(folder: Path, endpoint: str, rows: int) -> list[Path]:
    """The harness's seeded documents as files for wrk: every run posts the same bytes."""
    paths = []
    for i, document in enumerate(documents(endpoint, rows)):
        paths.append(folder / f"{endpoint}-{rows}-{i}.json")
        paths[-1].write_bytes(encode(document))
    return paths


def _log(r: dict) -> None:
    load = r.get("scenario") or f"/{r['endpoint']} {r['rows']} {r['client']}"
    errors = f"{r['http_errors']}+{r['unavailable']}+{r['socket_errors']}"
    head = f"round {r['round'] + 1}: {r['server']:<10} {load:<25}"
    tail = f"{r['rps']:8.0f} req/s p99 {r['p99_ms']:7.2f} ms errors {errors}"
    print(head, tail, f"worker CPU {r['worker_cpu_s']}", file=sys.stderr)


def run_plan(plan: Plan, folder: Path) -> dict[str, list[dict]]:
    """Every round; the raw per-round measurements, scenario runs and server facts."""
    bodies = {(e, r): write_bodies(folder, e, r) for _, e, r in plan.cells}
    calls = [Call(f"/{e}", p.read_bytes(), rows=r) for (e, r), ps in bodies.items() for p in ps]
    raw: dict[str, list[dict]] = {"measurements": [], "scenarios": [], "server_rounds": []}
    for index in range(plan.rounds):
        running: dict[str, ServerProcess] = {}
        try:
            for name in plan.servers:  # measured only if it answers (fast and wrong is no use)
                running[name] = start(name, plan.workers)
                with_answers(calls, [running[name].port])
            for server in running.values():
                server.wait_idle()
            idle_rss = {name: server.worker_rss_mb() for name, server in running.items()}
            turn = index % len(plan.servers)
            for client, endpoint, rows in plan.cells:
                for name in plan.servers[turn:] + plan.servers[:turn]:
                    url, paths = f"{running[name].url}/{endpoint}", bodies[endpoint, rows]
                    load = (plan.wrk, url, paths, CONNECTIONS, plan.seconds, client == KEEP_ALIVE)
                    record = {"round": index, "server": name, "endpoint": endpoint, "rows": rows}
                    record |= {"client": client, "connections": CONNECTIONS}
                    record |= observed(running[name], partial(run_load, *load))
                    raw["measurements"].append(record | {"rows_per_s": record["rps"] * rows})
                    _log(record)
            body = bodies["sklearn", 1][0]
            for record in scenarios(plan, running["service"], running["floor"], body):
                raw["scenarios"].append({"round": index} | record)
                _log(raw["scenarios"][-1])
            for name, server in running.items():
                facts = {"round": index, "server": name, "ready_s": server.ready_seconds}
                facts["worker_rss_mb_idle"] = idle_rss[name]
                raw["server_rounds"].append(facts | {"worker_rss_mb_after": server.worker_rss_mb()})
        finally:
            for server in running.values():
                server.stop()
    return raw


def code_state() -> dict[str, object]:
    """The commit, the files of serve/ and bench/ that differ from it, a digest of their sources."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "serve").rglob("*")) + sorted((REPO_ROOT / "bench").glob("*")):
        if path.is_file() and path.suffix in (".py", ".json", ".lua"):
            digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + path.read_bytes())
    git = ["git", "--no-optional-locks", "-C", str(REPO_ROOT)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    status = [*git, "status", "--porcelain", "--", "serve", "bench", ":!bench/results"]
    changed = subprocess.run(status, capture_output=True, text=True).stdout.splitlines()
    code = {"commit": commit.strip() or "unknown", "uncommitted": [line[3:] for line in changed]}
    return code | {"sources_sha256": digest.hexdigest()}


def loadavg() -> str:
    """The load averages over 1, 5 and 15 minutes: how busy the shared cores were."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
