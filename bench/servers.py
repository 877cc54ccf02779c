"""Starting, probing and stopping the servers under test, each a gunicorn master and its workers.

All of them run with serve/gunicorn.conf.py, so worker class, workers, threads and keep-alive are
the service's own; a baseline only swaps the WSGI app, and the sync variant only the worker class.
"""

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO_ROOT / "serve" / "gunicorn.conf.py"
# Inherited values that would make the servers differ from each other or share state.
_SCRUBBED_ENV = ("GUNICORN_CMD_ARGS", "PROMETHEUS_MULTIPROC_DIR")


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: the command line and what it adds to the shared environment."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def server_specs(
    base_env: dict[str, str], sklearn_model: Path | None, pytorch_model: Path | None
) -> dict[str, ServerSpec]:
    """The four servers: the service (gthread, as configured), its sync variant, floor, native."""
    python = sys.executable
    gunicorn = (python, "-m", "gunicorn", "--config", str(GUNICORN_CONF))
    native_env = {}
    if sklearn_model and pytorch_model:
        native_env = {
            "BENCH_SKLEARN_MODEL": str(sklearn_model),
            "BENCH_PYTORCH_MODEL": str(pytorch_model),
        }
    return {
        "service": ServerSpec("service", (python, "-m", "serve"), dict(base_env)),
        # GUNICORN_CMD_ARGS outranks the config file: the real entry point, one setting changed.
        "service-sync": ServerSpec(
            "service-sync",
            (python, "-m", "serve"),
            {**base_env, "GUNICORN_CMD_ARGS": "--worker-class sync"},
        ),
        "floor": ServerSpec("floor", (*gunicorn, "bench.floor_app:app"), dict(base_env)),
        "native": ServerSpec(
            "native", (*gunicorn, "bench.native_app:application()"), {**base_env, **native_env}
        ),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(port: int, path: str, body: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """One POST on a fresh connection: status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (gunicorn's workers are the master's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: fields start after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of one process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RunningServer:
    """A started server: its port, its time from spawn to first answer, its workers' memory."""

    def __init__(self, spec: ServerSpec, probe: bytes, ready_timeout: float = 60.0):
        self.spec = spec
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env.update(spec.env)
        env.update({"HOST": "127.0.0.1", "PORT": str(self.port)})
        # stdout holds one access-log line per request: dropped, as a log shipper would take it.
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the server)
        started = time.perf_counter()
        self.process = subprocess.Popen(
            spec.command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        self._wait_ready(probe, started + ready_timeout)
        self.ready_seconds = time.perf_counter() - started

    @property
    def output(self) -> str:
        self._log.seek(0)
        return self._log.read()

    def _wait_ready(self, probe: bytes, deadline: float) -> None:
        """Polls POST /sklearn until one answers 200: readiness as a client sees it."""
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited early:\n{self.output[-3000:]}")
            try:
                if post(self.port, "/sklearn", probe, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        output = self.output
        self.stop()
        raise RuntimeError(f"{self.spec.name} not ready in time:\n{output[-3000:]}")

    def worker_pids(self) -> list[int]:
        return children(self.process.pid)

    def worker_rss_mb(self) -> list[float]:
        return [rss_mb(pid) for pid in self.worker_pids()]

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
