"""The replicas and the two runs through nginx: throughput over 1, 2 and 3 replicas, and failover
(one replica SIGKILLed under load, then restarted)."""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.multi_replica.nginx import render_config, running_nginx
from harness.load import Call, Tally, load_during, run_load, summary
from harness.server import ServerProcess, free_port

CLIENT_THREADS = 8


@dataclass(frozen=True)
class Mode:
    phase_seconds: float  # load per throughput run (1, 2, 3 replicas)
    kill_at: float  # seconds into the failover run
    restart_at: float
    after_ready: float  # load goes on this long once the restarted replica is ready
    compare_without_retries: bool  # also run the failover with POSTs not retried


def replica(index: int, workdir: Path, models_dir: Path | None) -> ServerProcess:
    """One `python -m serve` with one worker, in its own TMPDIR: each instance makes its own
    metrics folder there (PROMETHEUS_MULTIPROC_DIR unset), which also catches what a killed one
    leaves behind."""
    tmp = workdir / f"replica-{index}" / "tmp"
    tmp.mkdir(parents=True)
    env = {"WORKERS": "1", "TMPDIR": str(tmp)}
    if models_dir is not None:
        env["MODELS_DIR"] = str(models_dir)
    return ServerProcess(env, scrub=("PROMETHEUS_MULTIPROC_DIR",))


def predictions_served(server: ServerProcess) -> int:
    """Prediction requests answered 200 since the last start, from the service's own log."""
    lines = server.output.splitlines()
    return sum('"method":"POST"' in line and '"status":200' in line for line in lines)


def load_summary(tally: Tally, seconds: float) -> dict[str, Any]:
    """A failure is anything but a 200; wrong is a 200 whose body differs from the answer
    computed beforehand (so its rows or scores differ)."""
    return {
        **summary(tally, seconds),
        "failures": tally.sent - tally.by_status[200],
        "wrong": tally.wrong,
    }


def throughput(
    binary: str,
    workdir: Path,
    replicas: Sequence[ServerProcess],
    calls: Sequence[Call],
    mode: Mode,
) -> list[dict[str, Any]]:
    results = []
    for count in range(1, len(replicas) + 1):
        config = render_config([r.port for r in replicas[:count]], free_port())
        with running_nginx(binary, workdir, config) as nginx:
            tally, seconds = run_load(nginx.url, calls, CLIENT_THREADS, mode.phase_seconds)
        results.append(
            {
                "replicas": count,
                **load_summary(tally, seconds),
                "nginx_errors": nginx.upstream_errors(),
            }
        )
    return results


def failover(
    binary: str,
    workdir: Path,
    replicas: Sequence[ServerProcess],
    calls: Sequence[Call],
    mode: Mode,
    retry_posts: bool,
) -> dict[str, Any]:
    """Load through nginx over all replicas; the first one is SIGKILLed, then restarted."""
    victim = replicas[0]
    config = render_config([r.port for r in replicas], free_port(), retry_posts)
    events: dict[str, float] = {}
    with running_nginx(binary, workdir, config) as nginx:
        started = time.monotonic()
        with load_during(nginx.url, calls, CLIENT_THREADS) as outcome:
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
    tally, seconds = outcome[0]
    return {
        "retry_posts": retry_posts,
        **{key: round(value, 2) for key, value in events.items()},
        "served_by_restarted_replica": predictions_served(victim),
        "in_flight_bound": CLIENT_THREADS,
        **load_summary(tally, seconds),
        "nginx_errors": nginx.upstream_errors(),
    }
