"""Sustained mixed load on the real server while its workers are killed, reloaded and stopped.

    python -m tools.soak --seconds 60 --clients 8 --json soak.json

Every answer is checked: a valid body must come back byte-for-byte as it did before the load
began, an invalid one with its expected status. Faults, in order: SIGKILL one worker at 30% of
the run, SIGHUP (reload) at 60%, SIGTERM at 90% while the clients keep sending.
"""

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Probe:
    path: str
    body: bytes
    status: int


def make_probes(seed: int) -> list[Probe]:
    rng = random.Random(seed)

    def rows(n: int) -> list[list[float]]:
        return [[round(rng.uniform(0, 1), 6) for _ in range(4)] for _ in range(n)]

    probes = []
    for n in (1, 1, 1, 100):
        data = rows(n)
        for path, extra in (
            ("/sklearn", {}),
            ("/pytorch", {}),
            ("/astromech", {"model": "pytorch"}),
            ("/astromech", {"model": "sklearn"}),
        ):
            probes.append(Probe(path, json.dumps({"crystalData": data, **extra}).encode(), 200))
    probes += [
        Probe("/sklearn", b'{"crystalData": [[1, 2, 3]]}', 422),
        Probe("/pytorch", b'{"crystalData": [[NaN, 0, 0, 0]]}', 422),
        Probe("/astromech", b'{"crystalData": [[1, 2, 3, 4]], "model": "keras"}', 400),
        Probe("/sklearn", b"not json", 422),
    ]
    return probes


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_pids(master: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def root_cause(exc: BaseException) -> str:
    """The innermost error's name: ConnectionRefusedError, ConnectionResetError, ..."""
    while exc.__context__ is not None or (exc.args and isinstance(exc.args[0], BaseException)):
        inner = exc.__context__
        if inner is None:
            inner = exc.args[0]
        if isinstance(getattr(inner, "reason", None), BaseException):
            inner = inner.reason
        exc = inner
    return type(exc).__name__


def phase_at(events: list[tuple[float, str]], moment: float) -> str:
    phase = "steady"
    for at, name in events:
        if moment >= at:
            phase = name
    return phase


def client(
    url: str,
    probes: list[Probe],
    expected: dict[Probe, bytes],
    stop: threading.Event,
    tally: Tally,
    events: list[tuple[float, str]],
    seed: int,
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        probe = rng.choice(probes)
        started = time.monotonic()
        try:
            response = requests.post(
                url + probe.path, data=probe.body, timeout=30, headers={"Connection": "close"}
            )
        except requests.RequestException as exc:
            cause = root_cause(exc)
            with tally.lock:
                tally.failures[(phase_at(events, time.monotonic()), cause)] += 1
            if cause == "ConnectionRefusedError":
                time.sleep(0.01)
            continue
        elapsed = time.monotonic() - started
        with tally.lock:
            tally.statuses[response.status_code] += 1
            tally.latencies.append(elapsed)
            if response.status_code != probe.status:
                tally.wrong.append(f"{probe.path}: {response.status_code} {response.text[:80]}")
            elif probe.status == 200 and response.content != expected[probe]:
                tally.wrong.append(f"{probe.path}: scores differ from the reference answer")


def run(seconds: float, clients: int, workers: int, seed: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(workers),
        "GRACEFUL_TIMEOUT": "10",
    }
    log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
    server = subprocess.Popen(
        [sys.executable, "-m", "serve"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(url + "/v2/health/ready", timeout=1).ok:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("soak: the server did not become ready")
        time.sleep(0.1)

    probes = make_probes(seed)
    expected = {
        p: requests.post(url + p.path, data=p.body, timeout=30).content
        for p in probes
        if p.status == 200
    }
    tally, stop, events = Tally(), threading.Event(), []
    threads = [
        threading.Thread(target=client, args=(url, probes, expected, stop, tally, events, seed + i))
        for i in range(clients)
    ]
    start = time.monotonic()
    for thread in threads:
        thread.start()

    def sleep_until(fraction: float) -> None:
        time.sleep(max(0.0, start + seconds * fraction - time.monotonic()))

    sleep_until(0.3)
    victim = min(worker_pids(server.pid))
    events.append((time.monotonic(), "after SIGKILL"))
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    while len(worker_pids(server.pid) - {victim}) < workers:
        time.sleep(0.01)
    recovery = time.monotonic() - killed_at

    sleep_until(0.6)
    events.append((time.monotonic(), "after SIGHUP"))
    server.send_signal(signal.SIGHUP)

    sleep_until(0.9)
    events.append((time.monotonic(), "after SIGTERM"))
    term_at = time.monotonic()
    server.send_signal(signal.SIGTERM)
    exit_code = server.wait(timeout=60)
    exit_seconds = time.monotonic() - term_at
    time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    log.seek(0)
    server_log = log.read().decode(errors="replace")

    handled = sum(
        1
        for line in server_log.splitlines()
        if '"message":"request"' in line and '"path":"/v2/health/ready"' not in line
    ) - len(expected)
    answered = sum(tally.statuses.values())
    latencies = sorted(tally.latencies)
    return {
        "seconds": seconds,
        "clients": clients,
        "workers": workers,
        "requests": sum(tally.statuses.values()) + sum(tally.failures.values()),
        "answered_by_status": {str(k): v for k, v in sorted(tally.statuses.items())},
        "handled_by_server": handled,
        "handled_but_not_answered": handled - answered,
        "wrong_answers": len(tally.wrong),
        "wrong_examples": tally.wrong[:5],
        "failures": {
            f"{phase}: {cause}": n for (phase, cause), n in sorted(tally.failures.items())
        },
        "latency_ms": {
            "p50": round(1000 * statistics.median(latencies), 2) if latencies else None,
            "p99": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2)
            if latencies
            else None,
        },
        "recovery_after_kill_s": round(recovery, 3),
        "exit_code": exit_code,
        "exit_after_sigterm_s": round(exit_seconds, 3),
        "tracebacks_in_log": server_log.count("Traceback"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(args.seconds, args.clients, args.workers, args.seed)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if figures["wrong_answers"] == 0 and figures["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
