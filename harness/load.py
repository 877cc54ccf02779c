"""One load client: threads that post a fixed list of calls in turn for a bounded time, checking
each answer against the one expected, into one tally with one percentile definition."""

import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# A hard cap on what one client thread sends, on top of the time limit.
MAX_REQUESTS_PER_CLIENT = 1_000_000
# No load lasts longer, whatever it is asked.
MAX_SECONDS = 300.0


@dataclass(frozen=True)
class Call:
    """One request and what a right answer is: its status, and its body when `expected` is set."""

    path: str
    body: bytes
    status: int = 200
    expected: bytes | None = None
    rows: int = 0
    headers: tuple[tuple[str, str], ...] = ()  # besides Content-Type (an Authorization, say)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the value below which `fraction` of the values lie; 0 when
    there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Tally:
    """What the clients saw. `failures` are requests that got no answer, each with when (the
    monotonic clock) and the error's name; `off_status` answers of another status than the call
    expects; `wrong` answers of the expected status whose body differs from the expected one."""

    sent: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    failures: list[tuple[float, str]] = field(default_factory=list)
    off_status: int = 0
    wrong: int = 0
    examples: list[str] = field(default_factory=list)
    rows: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        self.sent += other.sent
        self.by_status.update(other.by_status)
        self.failures.extend(other.failures)
        self.off_status += other.off_status
        self.wrong += other.wrong
        self.examples.extend(other.examples)
        self.rows += other.rows
        self.latencies.extend(other.latencies)

    def record(self, call: Call, status: int, body: bytes, seconds: float) -> None:
        self.latencies.append(seconds)
        self.by_status[status] += 1
        if status != call.status:
            self.off_status += 1
            self.examples.append(f"{call.path}: {status} {body[:80]!r}")
        elif call.expected is not None and body != call.expected:
            self.wrong += 1
            self.examples.append(f"{call.path}: the body differs from the expected answer")
        else:
            self.rows += call.rows

    @property
    def right(self) -> int:
        return len(self.latencies) - self.off_status - self.wrong

    def latency_ms(self) -> dict[str, float]:
        return {
            "p50_ms": round(1000 * percentile(self.latencies, 0.5), 2),
            "p99_ms": round(1000 * percentile(self.latencies, 0.99), 2),
            "max_ms": round(1000 * max(self.latencies, default=0.0), 2),
        }


def _client(
    url: str,
    calls: Sequence[Call],
    offset: int,
    keep_alive: bool,
    timeout: float,
    until: float,
    stop: threading.Event,
    tally: Tally,
) -> None:
    """One droid: sends the calls in turn, from `offset` on, until `until` or `stop`."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if not keep_alive:
        headers["Connection"] = "close"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    for number in range(MAX_REQUESTS_PER_CLIENT):
        if stop.is_set() or time.monotonic() >= until:
            break
        call = calls[(offset + number) % len(calls)]
        tally.sent += 1
        started = time.monotonic()
        try:
            connection.request(
                "POST", parts.path + call.path, call.body, headers | dict(call.headers)
            )
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            tally.failures.append((time.monotonic(), type(exc).__name__))
            connection.close()
            stop.wait(0.01)  # a refused connection fails at once: do not spin
            continue
        tally.record(call, response.status, body, time.monotonic() - started)
        if not keep_alive:
            connection.close()
    connection.close()


def run_load(
    url: str,
    calls: Sequence[Call],
    clients: int,
    seconds: float,
    *,
    keep_alive: bool = True,
    timeout: float = 10.0,
    stop: threading.Event | None = None,
) -> tuple[Tally, float]:
    """`clients` threads against `url` (the calls' paths are appended) for `seconds` (at most
    MAX_SECONDS) or until `stop` is set; the merged tally and the seconds it took."""
    stop = stop or threading.Event()
    until = time.monotonic() + min(seconds, MAX_SECONDS)
    tallies = [Tally() for _ in range(clients)]
    threads = [
        threading.Thread(
            target=_client,
            args=(url, calls, i, keep_alive, timeout, until, stop, tallies[i]),
        )
        for i in range(clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Tally()
    for tally in tallies:
        total.add(tally)
    return total, time.monotonic() - started


@contextmanager
def load_during(
    url: str, calls: Sequence[Call], clients: int, *, keep_alive: bool = True
) -> Iterator[list[tuple[Tally, float]]]:
    """Load for as long as the block runs (at most MAX_SECONDS), for faults injected meanwhile;
    the yielded list holds the tally and its seconds once the block has ended."""
    outcome: list[tuple[Tally, float]] = []
    stop = threading.Event()
    load = threading.Thread(
        target=lambda: outcome.append(
            run_load(url, calls, clients, MAX_SECONDS, keep_alive=keep_alive, stop=stop)
        )
    )
    load.start()
    try:
        yield outcome
    finally:
        stop.set()
        load.join()


def summary(tally: Tally, seconds: float) -> dict[str, Any]:
    """The figures every report gives for one load."""
    failures = Counter(cause for _, cause in tally.failures)
    return {
        "seconds": round(seconds, 2),
        "requests": tally.sent,
        "by_status": {str(k): v for k, v in sorted(tally.by_status.items())},
        "client_errors": dict(sorted(failures.items())),
        "requests_per_second": round(tally.right / seconds, 1) if seconds else 0.0,
        "rows_per_second": round(tally.rows / seconds, 1) if seconds else 0.0,
        **tally.latency_ms(),
    }
