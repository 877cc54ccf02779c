"""A server under test: a gunicorn master (by default `python -m serve`) on a free loopback port,
started with an environment, waited for, inspected through /proc and stopped."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from serve.listeners import children

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVE = ("-m", "serve")
# Readiness as the service's probes define it; servers without that route pass their own.
READY_PROBE = ("GET", "/v2/health/ready", None)
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port nobody listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    timeout: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request to 127.0.0.1 on a fresh connection: status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body, sent)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of one process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of one process so far (the command name may hold spaces)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def waits_in_epoll(pid: int) -> bool:
    """Whether the process sleeps in epoll_wait: a gunicorn worker there has booted and is idle."""
    return Path(f"/proc/{pid}/wchan").read_text() == "do_epoll_wait"


class ServerProcess:
    """One server in its own process group on 127.0.0.1:`port`, two workers unless `env` says
    otherwise. Its output goes to a file, not a pipe: a pipe nobody reads would block it."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = SERVE,
        *,
        python: str = sys.executable,
        cwd: Path = REPO_ROOT,
        scrub: Sequence[str] = (),
        ready_probe: tuple[str, str, bytes | None] = READY_PROBE,
        keep_stdout: bool = True,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The service's gRPC port (GRPC_PORT): a free one, never the shared default.
        self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.command = [python, *command]
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if k not in scrub}
        self.env.update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "GRPC_PORT": str(self.grpc_port),
                "WORKERS": "2",
            }
        )
        self.env.update(env or {})
        self.ready_probe = ready_probe
        self.keep_stdout = keep_stdout
        self.starts = 0
        self.start()

    def start(self) -> None:
        """Spawns the server (again, after a kill: same port, fresh output)."""
        self.starts += 1
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the run)
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdout=self._log if self.keep_stdout else subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )

    @property
    def output(self) -> str:
        """What the server wrote since its last start."""
        self._log.seek(0)
        return self._log.read()

    def wait_ready(self, timeout: float = 60.0) -> "ServerProcess":
        """Polls the ready probe until it answers 200; `ready_seconds` is spawn to that answer."""
        deadline = time.perf_counter() + timeout
        method, path, body = self.ready_probe
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output}")
            try:
                if request(self.port, method, path, body, timeout=2)[0] == 200:
                    self.ready_seconds = time.perf_counter() - self.started
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        output = self.output
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{output[-3000:]}")

    def worker_pids(self) -> list[int]:
        return children(self.process.pid)

    def worker_rss_mb(self) -> list[float]:
        return [rss_mb(pid) for pid in self.worker_pids()]

    def worker_cpu_seconds(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in self.worker_pids()}

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Waits (at most `timeout`) until every worker has booted and sleeps, so idle memory is
        read after the models are loaded: the first answer may come while others still boot."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if all(waits_in_epoll(pid) for pid in self.worker_pids()):
                return
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL to the whole process group at once, as when a container or machine dies."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """`sig` to the master, then its exit code; the group is SIGKILLed if it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
