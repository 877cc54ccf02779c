"""Three replicas of the crystal service behind nginx, on one machine.

Measures throughput through nginx with 1, 2 and 3 replicas, then kills one replica with SIGKILL
under load and restarts it, counting what the clients saw: every answer is checked against one
computed beforehand. It is also a worked example of running the service behind nginx: the
configuration is deploy/nginx/crystal.conf, rendered with this run's loopback ports.

    .venv/bin/python deploy/multi_replica.py --quick --json /tmp/multi-replica.json

Needs nginx (Debian's package): run as root, the script installs it with apt-get when missing.
Everything listens on 127.0.0.1 only, and every load loop is bounded in time and count.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "nginx" / "crystal.conf"
REPLICAS = 3
CLIENT_THREADS = 8
MAX_REQUESTS_PER_THREAD = 200_000
REQUEST_TIMEOUT = 10.0
# Every prediction endpoint, and the body sizes a droid sends: one sample, or a batch of 100.
TARGETS = (
    ("/sklearn", None),
    ("/pytorch", None),
    ("/astromech", "sklearn"),
    ("/astromech", "pytorch"),
)
BATCH_ROWS = (1, 100)


@dataclass(frozen=True)
class Mode:
    phase_seconds: float  # load per throughput run (1, 2, 3 replicas)
    kill_at: float  # seconds into the failover run
    restart_at: float
    after_ready: float  # load goes on this long once the restarted replica is ready
    compare_without_retries: bool  # also run the failover with POSTs not retried


QUICK = Mode(2.0, 1.5, 2.5, 4.0, compare_without_retries=False)
FULL = Mode(15.0, 10.0, 20.0, 20.0, compare_without_retries=True)
# nginx leaves a failed replica out this long before trying it again.
FAIL_TIMEOUT_SECONDS = 3
# No run lasts longer, whatever happens.
MAX_RUN_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")


def answers_200(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


class Replica:
    """One `python -m serve` with one worker. It runs in its own process group, so a SIGKILL
    takes the whole instance down at once, as when a container or machine dies."""

    def __init__(self, index: int, workdir: Path, models_dir: Path | None):
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir / f"replica-{index}"
        # PROMETHEUS_MULTIPROC_DIR stays unset: each instance makes its own folder, here in
        # its own TMPDIR, which also catches what a killed instance leaves behind.
        (self.workdir / "tmp").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(
            HOST="127.0.0.1", PORT=str(self.port), WORKERS="1", TMPDIR=str(self.workdir / "tmp")
        )
        if models_dir is not None:
            env["MODELS_DIR"] = str(models_dir)
        self.env = env
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"start-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "serve"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"replica {self.index} exited:\n{tail}")
            return answers_200(f"{self.url}/v2/health/ready")

        wait_until(ready, timeout, f"replica {self.index}")

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops an instance; SIGKILL if it does not finish."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def predictions_served(self) -> int:
        """Prediction requests answered 200 since the last start, from the service's own log."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return sum('"method":"POST"' in line and '"status":200' in line for line in lines)


def nginx_binary() -> str:
    """nginx from PATH or Debian's /usr/sbin, installed with apt-get when missing and root."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(
            "multi_replica: nginx is not installed and this user cannot install it; "
            "install Debian's package first (apt-get install nginx) or put nginx on PATH"
        )
    print("installing nginx with apt-get ...", flush=True)
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=apt_env, check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"],
        env=apt_env,
        check=True,
    )
    return shutil.which("nginx", path="/usr/sbin:/usr/bin") or "/usr/sbin/nginx"


def max_body_bytes() -> int:
    """The service's MAX_BODY_BYTES as the replicas will read it, for client_max_body_size."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from serve.settings import Settings

    return Settings.from_env().limits.max_body_bytes


def render_config(ports: Sequence[int], listen_port: int, retry_posts: bool = True) -> str:
    servers = "\n        ".join(
        f"server 127.0.0.1:{port} max_fails=1 fail_timeout={FAIL_TIMEOUT_SECONDS}s;"
        for port in ports
    )
    text = (
        TEMPLATE.read_text()
        .replace("{{servers}}", servers)
        .replace("{{listen}}", f"127.0.0.1:{listen_port}")
        .replace("{{max_body_bytes}}", str(max_body_bytes()))
    )
    if re.search(r"\{\{\w+\}\}", text):
        raise RuntimeError(f"{TEMPLATE}: a placeholder was left unfilled")
    if not retry_posts:
        if " non_idempotent;" not in text:
            raise RuntimeError(f"{TEMPLATE}: proxy_next_upstream has no non_idempotent to drop")
        text = text.replace(" non_idempotent;", ";")
    return text


NGINX_ERROR = re.compile(r"\[error\] \d+#\d+: \*\d+ (?P<what>.+?) while (?P<doing>[^,]+),")


@dataclass(frozen=True)
class Nginx:
    url: str
    prefix: Path

    def upstream_errors(self) -> dict[str, int]:
        """What nginx logged about the replicas, counted by kind (without ids and addresses)."""
        kinds: Counter[str] = Counter()
        for line in (self.prefix / "error.log").read_text(errors="replace").splitlines():
            found = NGINX_ERROR.search(line)
            if found:
                kinds[f"{found['what']} while {found['doing']}"] += 1
        return dict(kinds.most_common())


@contextmanager
def running_nginx(binary: str, workdir: Path, config: str) -> Iterator[Nginx]:
    """nginx in the foreground with its own prefix folder."""
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
    # nginx started as root runs its workers as an unprivileged user, who must reach the prefix.
    prefix.chmod(0o755)
    (prefix / "tmp").mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(config)
    listen = config.split("listen ", 1)[1].split(";", 1)[0]
    command = [binary, "-p", str(prefix), "-e", "error.log", "-c", str(conf), "-g", "daemon off;"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                log = (prefix / "error.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited with {process.returncode}:\n{log}")
            return answers_200(f"http://{listen}/v2/health/ready")

        wait_until(ready, 10, "nginx")
        yield Nginx(f"http://{listen}", prefix)
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish open requests, then exit
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Call:
    path: str
    body: bytes
    rows: int
    expected: bytes  # the whole answer, as one replica gave it directly


def make_calls(replicas: Sequence[Replica]) -> list[Call]:
    """Each endpoint with a 1-row and a 100-row body, and its answer asked of every replica
    directly: they must all agree, and that answer is what every later one must equal."""
    rng = random.Random(20261123)
    calls = []
    for rows in BATCH_ROWS:
        data = [[round(rng.uniform(0.0, 1.0), 6) for _ in range(4)] for _ in range(rows)]
        for path, model in TARGETS:
            document: dict[str, Any] = {"crystalData": data}
            if model is not None:
                document["model"] = model
            body = json.dumps(document).encode()
            answers = set()
            for replica in replicas:
                response = requests.post(replica.url + path, data=body, timeout=REQUEST_TIMEOUT)
                response.raise_for_status()
                answer = response.json()
                if len(answer["prediction"]) != rows or len(answer["scores"]) != rows:
                    raise RuntimeError(f"{path}: {rows} rows sent, another number answered")
                answers.add(response.content)
            if len(answers) != 1:
                raise RuntimeError(f"{path}: the replicas answer differently")
            calls.append(Call(path, body, rows, answers.pop()))
    return calls


@dataclass
class Tally:
    """What the clients saw. A failure is anything but a 200; wrong is a 200 whose body differs
    from the precomputed answer (so its rows or scores differ)."""

    sent: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    rows: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        self.sent += other.sent
        self.by_status.update(other.by_status)
        self.errors.update(other.errors)
        self.wrong += other.wrong
        self.rows += other.rows
        self.latencies.extend(other.latencies)

    @property
    def ok(self) -> int:
        return self.by_status["200"] - self.wrong

    @property
    def failures(self) -> int:
        return self.sent - self.by_status["200"]

    def summary(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies) or [0.0]
        return {
            "seconds": round(seconds, 2),
            "requests": self.sent,
            "by_status": dict(sorted(self.by_status.items())),
            "client_errors": dict(sorted(self.errors.items())),
            "failures": self.failures,
            "wrong": self.wrong,
            "requests_per_second": round(self.ok / seconds, 1),
            "rows_per_second": round(self.rows / seconds, 1),
            "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        }


def client(
    base_url: str, calls: Sequence[Call], offset: int, stop: threading.Event, tally: Tally
) -> None:
    """One droid: sends the calls in turn until told to stop, on one keep-alive session."""
    with requests.Session() as session:
        for number in range(MAX_REQUESTS_PER_THREAD):
            if stop.is_set():
                return
            call = calls[(offset + number) % len(calls)]
            tally.sent += 1
            started = time.perf_counter()
            try:
                response = session.post(
                    base_url + call.path,
                    data=call.body,
                    headers={"Content-Type": "application/json"},
                    timeout=REQUEST_TIMEOUT,
                )
            except requests.RequestException as exc:
                tally.errors[type(exc).__name__] += 1
                continue
            tally.latencies.append(time.perf_counter() - started)
            tally.by_status[str(response.status_code)] += 1
            if response.status_code == 200:
                if response.content == call.expected:
                    tally.rows += call.rows
                else:
                    tally.wrong += 1


def run_load(
    base_url: str, calls: Sequence[Call], seconds: float, stop: threading.Event | None = None
) -> tuple[Tally, float]:
    """CLIENT_THREADS droids for `seconds`, or until `stop` is set (within MAX_RUN_SECONDS)."""
    stop = stop or threading.Event()
    timer = threading.Timer(min(seconds, MAX_RUN_SECONDS), stop.set)
    tallies = [Tally() for _ in range(CLIENT_THREADS)]
    threads = [
        threading.Thread(target=client, args=(base_url, calls, 2 * i, stop, tallies[i]))
        for i in range(CLIENT_THREADS)
    ]
    started = time.monotonic()
    timer.start()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        timer.cancel()
    total = Tally()
    for tally in tallies:
        total.add(tally)
    return total, time.monotonic() - started


def throughput(
    binary: str, workdir: Path, replicas: Sequence[Replica], calls: Sequence[Call], mode: Mode
) -> list[dict[str, Any]]:
    results = []
    for count in range(1, len(replicas) + 1):
        config = render_config([r.port for r in replicas[:count]], free_port())
        with running_nginx(binary, workdir, config) as nginx:
            tally, seconds = run_load(nginx.url, calls, mode.phase_seconds)
        results.append(
            {"replicas": count, **tally.summary(seconds), "nginx_errors": nginx.upstream_errors()}
        )
    return results


def failover(
    binary: str,
    workdir: Path,
    replicas: Sequence[Replica],
    calls: Sequence[Call],
    mode: Mode,
    retry_posts: bool,
) -> dict[str, Any]:
    """Load through nginx over all replicas; the first one is SIGKILLed, then restarted."""
    victim = replicas[0]
    config = render_config([r.port for r in replicas], free_port(), retry_posts)
    events: dict[str, float] = {}
    with running_nginx(binary, workdir, config) as nginx:
        outcome: list[tuple[Tally, float]] = []
        stop = threading.Event()
        load = threading.Thread(
            target=lambda: outcome.append(run_load(nginx.url, calls, MAX_RUN_SECONDS, stop))
        )
        started = time.monotonic()
        load.start()
        try:
            time.sleep(mode.kill_at)
            victim.kill()
            events["killed_at_s"] = time.monotonic() - started
            time.sleep(max(0.0, mode.restart_at - (time.monotonic() - started)))
            victim.start()
            events["restarted_at_s"] = time.monotonic() - started
            victim.wait_ready()
            events["ready_again_at_s"] = time.monotonic() - started
            # Long enough for nginx to try the replica again and send it its share.
            time.sleep(mode.after_ready)
        finally:
            stop.set()
            load.join()
    tally, seconds = outcome[0]
    return {
        "retry_posts": retry_posts,
        **{key: round(value, 2) for key, value in events.items()},
        "served_by_restarted_replica": victim.predictions_served(),
        "in_flight_bound": CLIENT_THREADS,
        **tally.summary(seconds),
        "nginx_errors": nginx.upstream_errors(),
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{CLIENT_THREADS} client threads, replicas with 1 worker each, {os.cpu_count()} CPUs")
    header = ("replicas", "seconds", "requests", "req/s", "rows/s", "p50 ms", "p99 ms")
    header += ("failures", "wrong")
    print("  ".join(f"{h:>9}" for h in header))
    for row in report["throughput"]:
        values = [row["replicas"], row["seconds"], row["requests"], row["requests_per_second"]]
        values += [row["rows_per_second"], row["p50_ms"], row["p99_ms"], row["failures"]]
        values += [row["wrong"]]
        print("  ".join(f"{v:>9}" for v in values))
    for key in ("failover", "failover_without_post_retries"):
        if key not in report:
            continue
        run = report[key]
        print(
            f"\n{key}: {REPLICAS} replicas, one SIGKILLed at {run['killed_at_s']} s, "
            f"restarted at {run['restarted_at_s']} s, ready at {run['ready_again_at_s']} s, "
            f"load for {run['seconds']} s"
        )
        print(
            f"  requests {run['requests']}, by status {run['by_status']}, "
            f"client errors {run['client_errors']}"
        )
        print(
            f"  failures {run['failures']} (in-flight bound {run['in_flight_bound']}), "
            f"wrong {run['wrong']}, answered by the restarted replica "
            f"{run['served_by_restarted_replica']}"
        )
        print(f"  nginx upstream errors {run['nginx_errors']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run for CI (~20 s)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--models-dir", type=Path, help="MODELS_DIR for the replicas (default: the service's)"
    )
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    binary = nginx_binary()
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=True).stderr
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="multi-replica-")))
        replicas = [Replica(i, workdir, args.models_dir) for i in range(REPLICAS)]
        for replica in replicas:
            stack.callback(replica.stop)
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        calls = make_calls(replicas)
        report: dict[str, Any] = {
            "mode": "quick" if args.quick else "full",
            "nginx": version.strip().split("/")[-1],
            "cpus": os.cpu_count(),
            "client_threads": CLIENT_THREADS,
            "workers_per_replica": 1,
            "bodies_rows": list(BATCH_ROWS),
            "throughput": throughput(binary, workdir, replicas, calls, mode),
            "failover": failover(binary, workdir, replicas, calls, mode, retry_posts=True),
        }
        if mode.compare_without_retries:
            report["failover_without_post_retries"] = failover(
                binary, workdir, replicas, calls, mode, retry_posts=False
            )
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    runs = [*report["throughput"], report["failover"]]
    wrong = sum(run["wrong"] for run in runs)
    return 1 if wrong or report["failover"]["failures"] > CLIENT_THREADS else 0


if __name__ == "__main__":
    sys.exit(main())
