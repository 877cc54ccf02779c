"""Three replicas of the crystal service behind nginx, on one machine.

Measures throughput through nginx with 1, 2 and 3 replicas, then kills one replica with SIGKILL
under load and restarts it, counting what the clients saw: every answer is checked against one
computed beforehand. It is also a worked example of running the service behind nginx: the
configuration is deploy/nginx/crystal.conf, rendered with this run's loopback ports.

    .venv/bin/python -m deploy.multi_replica --quick --json /tmp/multi-replica.json

Needs nginx (Debian's package): run as root, the run installs it with apt-get when missing.
Everything listens on 127.0.0.1 only, and every load loop is bounded in time and count.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from deploy.multi_replica.nginx import nginx_binary
from deploy.multi_replica.runs import CLIENT_THREADS, Mode, failover, replica, throughput
from harness.bodies import COMMITTED_MODELS, prediction_calls, with_answers

REPLICAS = 3
# The body sizes a droid sends, to every prediction endpoint: one sample, or a batch of 100.
BATCH_ROWS = (1, 100)
QUICK = Mode(1.0, 1.0, 1.5, 4.0, compare_without_retries=False)
FULL = Mode(15.0, 10.0, 20.0, 20.0, compare_without_retries=True)


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
        replicas = []
        for index in range(REPLICAS):
            replicas.append(replica(index, workdir, args.models_dir))
            stack.callback(replicas[-1].stop)
        for server in replicas:
            server.wait_ready()
        bodies = prediction_calls(BATCH_ROWS, args.models_dir or COMMITTED_MODELS)
        calls = with_answers(bodies, [r.port for r in replicas])
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
