"""Starting, probing and stopping the servers under test, each a gunicorn master and its workers.

All of them run with serve/gunicorn.conf.py, so workers, keep-alive and timeouts are the
service's own. The service and the ASGI floor also share its worker class; the WSGI floor and
the native baseline swap it for gunicorn's `gthread` (4 threads) through GUNICORN_CMD_ARGS,
which outranks the config file.
"""

import hashlib
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

from serve.metrics import FOLDER_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO_ROOT / "serve" / "gunicorn.conf.py"
GTHREAD = "--worker-class gthread --threads 4"
# Inherited values that would make the servers differ from each other or share state.
_SCRUBBED_ENV = ("GUNICORN_CMD_ARGS", FOLDER_ENV)
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: the command line and what it adds to the shared environment."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def server_specs(
    base_env: dict[str, str], sklearn_model: Path | None, pytorch_model: Path | None
) -> dict[str, ServerSpec]:
    """The service, the ASGI floor (the service's worker), the WSGI floor and native (gthread)."""
    python = sys.executable
    gunicorn = (python, "-m", "gunicorn", "--config", str(GUNICORN_CONF))
    gthread = {**base_env, "GUNICORN_CMD_ARGS": GTHREAD}
    native_env = {}
    if sklearn_model and pytorch_model:
        native_env = {
            "BENCH_SKLEARN_MODEL": str(sklearn_model),
            "BENCH_PYTORCH_MODEL": str(pytorch_model),
        }
    apps = {
        "service": ("serve.asgi:application()", dict(base_env)),
        "floor": ("bench.floor_app:app", dict(base_env)),
        "floor-wsgi": ("bench.floor_app:wsgi_app", gthread),
        "native": ("bench.native_app:application()", {**gthread, **native_env}),
    }
    specs = {name: ServerSpec(name, (*gunicorn, app), env) for name, (app, env) in apps.items()}
    # The real entry point: the start-up checks first, then gunicorn with the same config.
    specs["service"] = ServerSpec("service", (python, "-m", "serve"), apps["service"][1])
    return specs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """One request on a fresh connection: status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 on: the command name may hold spaces or parentheses."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (gunicorn's workers are the master's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except OSError:
            continue
        if parent == pid:
            found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of one process so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of one process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def listen_overflows() -> int:
    """Connections dropped because a listening socket's accept queue was full, so far, over this
    network namespace (the kernel's TcpExt ListenOverflows): a dropped SYN costs its client a
    retransmit, a second later."""
    header, values = [
        line.split() for line in Path("/proc/net/netstat").read_text().splitlines()[:2]
    ]
    return int(values[header.index("ListenOverflows")])


def code_state() -> dict[str, object]:
    """The commit measured, the files of serve/ and bench/ that differ from it, and a digest of
    those folders' sources: figures are only comparable between runs of the same code, and a
    digest that changed during a run means its servers did not all run the same code."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "serve").rglob("*")) + sorted((REPO_ROOT / "bench").glob("*")):
        if path.is_file() and path.suffix in (".py", ".json", ".lua"):
            digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + path.read_bytes())
    git = ["git", "--no-optional-locks", "-C", str(REPO_ROOT)]
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "serve", "bench", ":!bench/results"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return {
        "commit": commit or "unknown",
        "uncommitted": [line[3:] for line in changed],
        "sources_sha256": digest.hexdigest(),
    }


def loadavg() -> str:
    """The machine's load averages over 1, 5 and 15 minutes: how busy the shared cores were."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def waits_in_epoll(pid: int) -> bool:
    """Whether the process sleeps in epoll_wait: a gunicorn worker there has booted and is idle
    (the asyncio loop and gthread's poller both wait in epoll)."""
    return Path(f"/proc/{pid}/wchan").read_text() == "do_epoll_wait"


class RunningServer:
    """A started server: its port, its time from spawn to first answer, its workers."""

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
                if request(self.port, "POST", "/sklearn", probe, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        output = self.output
        self.stop()
        raise RuntimeError(f"{self.spec.name} not ready in time:\n{output[-3000:]}")

    def worker_pids(self) -> list[int]:
        return children(self.process.pid)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Waits (at most `timeout`) until every worker has booted and sleeps, so idle memory is
        read after the models are loaded: the first answer comes from one worker while others
        may still boot."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if all(waits_in_epoll(pid) for pid in self.worker_pids()):
                return
            time.sleep(0.05)

    def worker_rss_mb(self) -> list[float]:
        return [rss_mb(pid) for pid in self.worker_pids()]

    def worker_cpu_seconds(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in self.worker_pids()}

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
