"""Sustained mixed load on the real server while its workers are killed, reloaded and stopped.

    python -m tools.soak --seconds 60 --clients 8 --json soak.json

The server asks for bearer tokens (AUTH_TOKENS_FILE): the clients send one, and one call comes
without it. Every answer is checked: valid and invalid bodies alike must be answered with their
expected status and, byte for byte, the body the server gave them before the load began. Faults, in
order: SIGKILL one worker at 30% of the run, SIGHUP (reload) at 60%, SIGTERM at 90% while the
clients keep sending. Each client opens a connection per request, so the faults hit connections
in every state.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.bodies import prediction_calls, with_answers
from harness.load import Call, load_during, summary
from harness.server import ServerProcess

INVALID = (
    Call("/sklearn", b'{"crystalData": [[1, 2, 3]]}', 422),
    Call("/pytorch", b'{"crystalData": [[NaN, 0, 0, 0]]}', 422),
    Call("/astromech", b'{"crystalData": [[1, 2, 3, 4]], "model": "keras"}', 400),
    Call("/sklearn", b"not json", 422),
)
TOKEN = "soak-droid-token-0123456789"
AUTHORIZED = (("Authorization", f"Bearer {TOKEN}"),)
# Every call sends the token but this one, which must be refused whatever the faults.
UNAUTHORIZED = Call("/pytorch", b'{"crystalData": [[1, 2, 3, 4]]}', 401)


def phase_at(events: list[tuple[float, str]], moment: float) -> str:
    phase = "steady"
    for at, name in events:
        if moment >= at:
            phase = name
    return phase


def faults(server: ServerProcess, seconds: float, workers: int) -> dict[str, Any]:
    """SIGKILL a worker, SIGHUP, SIGTERM at 30%, 60%, 90% of `seconds`; when each came, how long
    the master took to replace the worker and to exit."""
    start = time.monotonic()
    events: list[tuple[float, str]] = []

    def sleep_until(fraction: float) -> None:
        time.sleep(max(0.0, start + seconds * fraction - time.monotonic()))

    sleep_until(0.3)
    victim = min(server.worker_pids())
    events.append((time.monotonic(), "after SIGKILL"))
    os.kill(victim, signal.SIGKILL)
    while len(set(server.worker_pids()) - {victim}) < workers:
        time.sleep(0.01)
    recovery = time.monotonic() - events[-1][0]

    sleep_until(0.6)
    events.append((time.monotonic(), "after SIGHUP"))
    server.process.send_signal(signal.SIGHUP)

    sleep_until(0.9)
    events.append((time.monotonic(), "after SIGTERM"))
    exit_code = server.stop(timeout=60)
    return {
        "events": events,
        "recovery_after_kill_s": round(recovery, 3),
        "exit_code": exit_code,
        "exit_after_sigterm_s": round(time.monotonic() - events[-1][0], 3),
    }


def run(seconds: float, clients: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="crystal-soak-") as folder:
        tokens = Path(folder) / "tokens"
        tokens.write_text(TOKEN + "\n")
        env = {"WORKERS": str(workers), "GRACEFUL_TIMEOUT": "10", "AUTH_TOKENS_FILE": str(tokens)}
        return soak(ServerProcess(env).wait_ready(30), seconds, clients, workers)


def soak(server: ServerProcess, seconds: float, clients: int, workers: int) -> dict:
    try:
        guarded = [
            replace(call, headers=AUTHORIZED) for call in (*prediction_calls((1, 100)), *INVALID)
        ]
        calls = with_answers([*guarded, UNAUTHORIZED], [server.port])
        with load_during(server.url, calls, clients, keep_alive=False) as outcome:
            fault = faults(server, seconds, workers)
            time.sleep(0.2)
    finally:
        server.stop()
    tally, elapsed = outcome[0]
    log = server.output
    handled = sum(
        1
        for line in log.splitlines()
        if '"message":"request"' in line and '"path":"/v2/health/ready"' not in line
    ) - len(calls)
    answered = sum(tally.by_status.values())
    failures = Counter(f"{phase_at(fault['events'], at)}: {cause}" for at, cause in tally.failures)
    figures = summary(tally, elapsed)
    return {
        "seconds": seconds,
        "clients": clients,
        "workers": workers,
        "requests": tally.sent,
        "answered_by_status": figures["by_status"],
        "handled_by_server": handled,
        "handled_but_not_answered": handled - answered,
        "wrong_answers": tally.off_status + tally.wrong,
        "wrong_examples": tally.examples[:5],
        "failures": dict(sorted(failures.items())),
        "latency_ms": {"p50": figures["p50_ms"], "p99": figures["p99_ms"]},
        "recovery_after_kill_s": fault["recovery_after_kill_s"],
        "exit_code": fault["exit_code"],
        "exit_after_sigterm_s": fault["exit_after_sigterm_s"],
        "tracebacks_in_log": log.count("Traceback"),
        "tokens_in_log": log.count(TOKEN),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(args.seconds, args.clients, args.workers)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if figures["wrong_answers"] == 0 and figures["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
