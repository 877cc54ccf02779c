"""Load generators: wrk (C, epoll) when it can be had, a small Python client otherwise.

Both run for a fixed time against one URL with N connections, cycling through the cell's bodies,
either keeping each connection open (keep-alive) or opening one per request (close).
"""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import harness.load
from harness.load import Call

LUA_SCRIPT = Path(__file__).resolve().parent / "post.lua"
RESULT_MARK = "BENCH_RESULT "


@dataclass(frozen=True)
class LoadResult:
    """One measured run: completed requests over the run's time, errors, latency percentiles."""

    requests: int
    seconds: float
    http_errors: int  # answers with status >= 400, 503 excepted
    unavailable: int  # 503 answers: shed by the service's cap on work
    socket_errors: int  # connect, read, write failures and timeouts
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_s: float = 0.0  # CPU the load generator itself used: it shares the two cores

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.http_errors + self.unavailable + self.socket_errors


def ensure_wrk(install: bool) -> str | None:
    """wrk's path; installed from Debian's packages first when missing, allowed and root."""
    found = shutil.which("wrk")
    if found or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        done = subprocess.run(command, env=env, capture_output=True, timeout=600, check=False)
        if done.returncode != 0:
            return None
    return shutil.which("wrk")


def run_wrk(
    wrk: str,
    url: str,
    bodies: list[Path],
    connections: int,
    threads: int,
    seconds: int,
    keep_alive: bool,
) -> LoadResult:
    """One wrk run; post.lua prints the summary as a JSON line."""
    command = [wrk, f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s"]
    command += ["--timeout", "5s", "-s", str(LUA_SCRIPT)]
    if not keep_alive:
        command += ["-H", "Connection: close"]
    command += [url, "--", *map(str, bodies)]
    before = _children_cpu()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    summary = json.loads(lines[-1].removeprefix(RESULT_MARK))
    return LoadResult(
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        http_errors=summary["failed"],
        unavailable=summary["unavailable"],
        socket_errors=sum(summary[k] for k in ("connect", "read", "write", "timeout")),
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        max_ms=summary["max_us"] / 1000,
        client_cpu_s=_children_cpu() - before,
    )


def _children_cpu() -> float:
    """User and system CPU seconds of this process's waited-for children so far."""
    times = os.times()
    return times.children_user + times.children_system


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def run_python(
    url: str, bodies: list[Path], connections: int, seconds: float, keep_alive: bool
) -> LoadResult:
    """The fallback: the shared Python client, one thread per connection. The GIL caps what it
    can send, so its figures show the client's limits more than the server's; fine for a smoke
    run."""
    calls = [Call("", path.read_bytes()) for path in bodies]
    cpu_before = _own_cpu()
    tally, elapsed = harness.load.run_load(
        url, calls, connections, seconds, keep_alive=keep_alive, timeout=5.0
    )
    latency = tally.latency_ms()
    return LoadResult(
        requests=len(tally.latencies),
        seconds=elapsed,
        http_errors=sum(n for status, n in tally.by_status.items() if status >= 400)
        - tally.by_status[503],
        unavailable=tally.by_status[503],
        socket_errors=len(tally.failures),
        p50_ms=latency["p50_ms"],
        p99_ms=latency["p99_ms"],
        max_ms=latency["max_ms"],
        client_cpu_s=_own_cpu() - cpu_before,
    )


def run_load(
    wrk: str | None,
    url: str,
    bodies: list[Path],
    connections: int,
    threads: int,
    seconds: float,
    keep_alive: bool,
) -> LoadResult:
    """wrk when given (whole seconds, at least one), else the Python client."""
    if wrk:
        return run_wrk(wrk, url, bodies, connections, threads, wrk_seconds(seconds), keep_alive)
    return run_python(url, bodies, connections, seconds, keep_alive)


def wrk_seconds(seconds: float) -> int:
    """wrk takes whole seconds."""
    return max(1, round(seconds))
