"""Prometheus metrics, correct across gunicorn's worker processes and cheap on the hot path.

Each worker counts in its own memory (a dict update per sample, no file or lock on the request
path) and writes a snapshot of its totals to the server's metrics folder every
`flush_seconds`, and whenever it answers `/metrics`. `/metrics` adds up every worker's latest
snapshot and the totals of workers that have exited (`retired.json`, kept by the gunicorn master).

A worker killed with SIGKILL loses what it counted since its last snapshot (at most
`flush_seconds` of traffic); a worker that stops normally writes a last snapshot first.

Every exported family is declared once, in FAMILIES below, in the order `/metrics` lists them.
"""

import os
import resource
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# The folder the gunicorn master makes for its workers' snapshots (serve/gunicorn.conf.py).
FOLDER_ENV = "CRYSTAL_METRICS_FOLDER"
RETIRED_FILE = "retired.json"
WORKER_PREFIX = "worker-"
# Worker ids of retired workers remembered so a scrape never counts one twice (see read_all).
RETIRED_IDS_KEPT = 256
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
INFERENCE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2, 0.25, 1.0)
ROW_BUCKETS = (1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 50_000, 100_000)
CONFIDENCE_BUCKETS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)


# One sample: its label values, in the order of its family's labels, and its value.
Sample = tuple[tuple[str, ...], float]


@dataclass(frozen=True)
class Definition:
    """One exported family. Without `live`, a total of work done (a counter or a histogram):
    workers record it, and it outlives a worker's exit. With `live`, it describes the workers
    running now: its samples come from the live workers' snapshots, and go with a worker."""

    name: str
    kind: Literal["counter", "histogram", "gauge"]
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    # Label sets exported as 0 before anything is counted: a rate then sees the first increase.
    initial: tuple[tuple[str, ...], ...] = ()
    live: "Callable[[list[Snapshot]], Iterable[Sample]] | None" = None


# Requests by the protocol whose route answered them (serve/protocol.py; "none" for the
# service's own routes such as /metrics), route template, method, model and status code.
REQUEST_LABELS = ("protocol", "endpoint", "method", "model", "status")
REQUESTS = Definition(
    "crystal_requests",
    "counter",
    "HTTP requests answered, by protocol, route, method, model and status code.",
    REQUEST_LABELS,
)
REQUEST_TIME = Definition(
    "crystal_request_seconds",
    "counter",
    "Time spent answering requests, summed, by the labels of crystal_requests_total: the "
    "mean time of a model's failed requests, say, where the duration histogram has routes only.",
    REQUEST_LABELS,
)
SHED = Definition(
    "crystal_requests_shed",
    "counter",
    "Requests refused with 503 by the per-worker cap on requests at work (MAX_IN_FLIGHT).",
    initial=((),),
)
# Requests refused for want of an accepted bearer token (serve/auth.py), by protocol and reason:
# missing, malformed (not `Bearer <token>`) or wrong.
UNAUTHENTICATED = Definition(
    "crystal_unauthenticated_requests",
    "counter",
    "Requests refused with 401 (gRPC UNAUTHENTICATED) for want of an accepted bearer token, by "
    "protocol and reason: missing, malformed or wrong.",
    ("protocol", "reason"),
)
PREDICTIONS = Definition(
    "crystal_predictions",
    "counter",
    "Predicted rows, by model and predicted label.",
    ("model", "label"),
)
# Why a worker exited, as the gunicorn master knows it (serve/__main__.py, CrystalArbiter):
# retired by a reload (SIGHUP), stopped on purpose (scale-down with TTOU, shutdown), killed for
# not reporting within TIMEOUT, or anything else while the server runs (exception, SIGKILL, OOM).
EXIT_REASONS = ("reload", "stop", "timeout", "crash")
WORKER_EXITS = Definition(
    "crystal_worker_exits",
    "counter",
    "Worker processes that exited, by reason: reload, stop (scale-down or shutdown), timeout "
    "(killed for not reporting within TIMEOUT) or crash (any other exit while serving).",
    ("reason",),
    initial=tuple((reason,) for reason in EXIT_REASONS),
)
# A gauge that workers record keeps the largest value any worker saw, a retired one included.
LAST_PREDICTION = Definition(
    "crystal_last_prediction_timestamp_seconds",
    "gauge",
    "When each model last predicted, as Unix time: the latest over every worker.",
    ("model",),
)
REQUEST_SECONDS = Definition(
    "crystal_request_duration_seconds",
    "histogram",
    "Time to answer a request, from routing to the encoded answer.",
    ("endpoint",),
    LATENCY_BUCKETS,
)
INFERENCE_SECONDS = Definition(
    "crystal_inference_duration_seconds",
    "histogram",
    "Time spent in the model itself (onnxruntime), per model.",
    ("model",),
    INFERENCE_BUCKETS,
)
ROWS = Definition(
    "crystal_request_rows",
    "histogram",
    "Rows per prediction request, per model.",
    ("model",),
    ROW_BUCKETS,
)
CONFIDENCE = Definition(
    "crystal_prediction_confidence",
    "histogram",
    "Probability of the predicted label, per predicted row: a drift signal.",
    ("model",),
    CONFIDENCE_BUCKETS,
)
IN_FLIGHT = Definition(
    "crystal_requests_in_flight",
    "gauge",
    "Requests being handled now, summed over live workers.",
    live=lambda workers: [((), sum(w.in_flight for w in workers))],
)
RESIDENT_MEMORY = Definition(
    "crystal_worker_resident_memory_bytes",
    "gauge",
    "Resident memory of each live worker process.",
    ("worker",),
    live=lambda workers: [((str(w.pid),), w.resident_bytes) for w in workers],
)
CPU_SECONDS = Definition(
    "crystal_worker_cpu_seconds",
    "counter",
    "CPU time (user and system) of each live worker process.",
    ("worker",),
    live=lambda workers: [((str(w.pid),), w.cpu_seconds) for w in workers],
)
MODEL_INFO = Definition(
    "crystal_model_info",
    "gauge",
    "The models served: name, version and sha256 of the source they were exported from.",
    ("model", "version", "source_sha256"),
    live=lambda workers: [(m, 1) for m in sorted({tuple(m) for w in workers for m in w.models})],
)
# What workers record as one value per label set, and a retirement keeps: counters summed,
# gauges the largest (see _merge).
VALUES = (REQUESTS, REQUEST_TIME, SHED, UNAUTHENTICATED, PREDICTIONS, WORKER_EXITS, LAST_PREDICTION)
HISTOGRAMS = (REQUEST_SECONDS, INFERENCE_SECONDS, ROWS, CONFIDENCE)
# Read from the live workers at scrape time.
LIVE = (IN_FLIGHT, RESIDENT_MEMORY, CPU_SECONDS, MODEL_INFO)
# Everything `/metrics` exports, in its order.
FAMILIES = (*VALUES, *HISTOGRAMS, *LIVE)
_LARGEST = frozenset(d.name for d in VALUES if d.kind == "gauge")


class Snapshot(msgspec.Struct):
    """One worker's totals, or the retired workers' totals, as written to the metrics folder."""

    counters: dict[str, list[tuple[list[str], float]]] = {}
    # Per label set: the count in each bucket (not cumulative; the last is +Inf), then the sum.
    histograms: dict[str, list[tuple[list[str], list[int], float]]] = {}
    # Live workers only: requests in flight, resident memory, CPU seconds.
    in_flight: int = 0
    resident_bytes: int = 0
    cpu_seconds: float = 0.0
    pid: int = 0
    worker_id: str = ""
    models: list[tuple[str, str, str]] = []  # (model, version, source sha256)
    retired_ids: list[str] = []


class Histogram:
    __slots__ = ("buckets", "counts", "edges", "sum")

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.edges = np.array(buckets)  # for observe_many: numpy would convert the tuple per call
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    def observe_many(self, values: np.ndarray) -> None:
        indices = self.edges.searchsorted(values, side="left")
        for index, count in enumerate(np.bincount(indices, minlength=len(self.counts)).tolist()):
            self.counts[index] += count
        self.sum += float(values.sum())


class Metrics:
    """This worker's counts, and `/metrics` over every worker sharing `folder`.

    Recording is a dict update under an uncontended lock: the request path runs on the event
    loop, large batches on the worker's one inference thread.
    """

    def __init__(
        self,
        folder: "MetricsFolder | None" = None,
        models: Iterable[tuple[str, str, str]] = (),
    ):
        self.folder = folder
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[str, ...], float]] = {d.name: {} for d in VALUES}
        self._histograms: dict[str, dict[tuple[str, ...], Histogram]] = {
            d.name: {} for d in HISTOGRAMS
        }
        self.in_flight = 0
        self.models = list(models)
        self.worker_id = f"{os.getpid()}-{time.time_ns()}"

    def _count(self, definition: Definition, labels: tuple[str, ...], amount: float = 1) -> None:
        series = self._counters[definition.name]
        series[labels] = series.get(labels, 0) + amount

    def _histogram(self, definition: Definition, labels: tuple[str, ...]) -> Histogram:
        series = self._histograms[definition.name]
        histogram = series.get(labels)
        if histogram is None:
            histogram = series[labels] = Histogram(definition.buckets)
        return histogram

    def request(
        self, protocol: str, endpoint: str, method: str, model: str, status: str, seconds: float
    ) -> None:
        labels = (protocol, endpoint, method, model, status)
        with self._lock:
            self._count(REQUESTS, labels)
            self._count(REQUEST_TIME, labels, seconds)
            self._histogram(REQUEST_SECONDS, (endpoint,)).observe(seconds)

    def shed(self) -> None:
        with self._lock:
            self._count(SHED, ())

    def unauthenticated(self, protocol: str, reason: str) -> None:
        with self._lock:
            self._count(UNAUTHENTICATED, (protocol, reason))

    def prediction(
        self,
        model: str,
        seconds: float,
        labels: Sequence[str],
        best: np.ndarray,
        confidence: np.ndarray,
    ) -> None:
        """One batch: its size, its time in the model, and per row the index in `labels` of the
        predicted label and its probability."""
        key = (model,)
        now = time.time()
        with self._lock:
            self._counters[LAST_PREDICTION.name][key] = now
            self._histogram(ROWS, key).observe(len(best))
            self._histogram(INFERENCE_SECONDS, key).observe(seconds)
            if len(best) == 1:
                self._count(PREDICTIONS, (model, labels[int(best[0])]))
                self._histogram(CONFIDENCE, key).observe(float(confidence[0]))
                return
            for index, count in enumerate(np.bincount(best, minlength=len(labels)).tolist()):
                if count:
                    self._count(PREDICTIONS, (model, labels[index]), count)
            self._histogram(CONFIDENCE, key).observe_many(confidence)

    def snapshot(self) -> Snapshot:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with self._lock:
            counters = {
                name: [(list(labels), value) for labels, value in series.items()]
                for name, series in self._counters.items()
            }
            histograms = {
                name: [(list(labels), list(h.counts), h.sum) for labels, h in series.items()]
                for name, series in self._histograms.items()
            }
        return Snapshot(
            counters=counters,
            histograms=histograms,
            in_flight=self.in_flight,
            resident_bytes=_resident_bytes(),
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            pid=os.getpid(),
            worker_id=self.worker_id,
            models=self.models,
        )

    def flush(self) -> None:
        """Publishes this worker's totals to the other workers' scrapes."""
        if self.folder is not None:
            self.folder.write(self.snapshot())

    def _everyone(self) -> tuple[Snapshot, list[Snapshot]]:
        """(retired totals, live workers' snapshots): every worker when they share a folder."""
        if self.folder is None:
            return Snapshot(), [self.snapshot()]
        self.flush()
        return self.folder.read_all()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) in the format the `accept` header asks for."""
        return exposition(*self._everyone(), accept)

    def totals(self) -> "Totals":
        """What every worker, live or retired, has recorded, added up as `/metrics` adds it."""
        retired, workers = self._everyone()
        return Totals(_merge([retired, *workers], live=False))


def _resident_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Snapshot)


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _read(path: Path) -> Snapshot | None:
    try:
        return _decoder.decode(path.read_bytes())
    except (FileNotFoundError, msgspec.DecodeError):
        return None


class MetricsFolder:
    """The folder the server's workers share: one snapshot per live worker, one for the retired."""

    def __init__(self, path: Path):
        self.path = path

    def worker_file(self, snapshot: Snapshot) -> Path:
        return self.path / f"{WORKER_PREFIX}{snapshot.worker_id}.json"

    def write(self, snapshot: Snapshot) -> None:
        _write_atomically(self.worker_file(snapshot), _encoder.encode(snapshot))

    def retire(self, pid: int, reason: str) -> None:
        """Called by the master when worker `pid` exits: its totals move into the retired file,
        its live gauges go, and its exit is counted under `reason` (one of EXIT_REASONS), so
        reloads and deliberate stops are told apart from crashes and timeouts."""
        if reason not in EXIT_REASONS:
            raise ValueError(f"unknown worker exit reason {reason!r}")
        retired = _read(self.path / RETIRED_FILE) or Snapshot()
        for worker_file in self.path.glob(f"{WORKER_PREFIX}{pid}-*.json"):
            snapshot = _read(worker_file)
            if snapshot is not None:
                retired = _merge([retired, snapshot], live=False)
                retired.retired_ids = [*retired.retired_ids, snapshot.worker_id]
        exits = {
            tuple(labels): value for labels, value in retired.counters.get(WORKER_EXITS.name, [])
        }
        exits[(reason,)] = exits.get((reason,), 0.0) + 1
        retired.counters[WORKER_EXITS.name] = [(list(labels), n) for labels, n in exits.items()]
        retired.retired_ids = retired.retired_ids[-RETIRED_IDS_KEPT:]
        _write_atomically(self.path / RETIRED_FILE, _encoder.encode(retired))
        for worker_file in self.path.glob(f"{WORKER_PREFIX}{pid}-*.json"):
            worker_file.unlink(missing_ok=True)

    def read_all(self) -> tuple[Snapshot, list[Snapshot]]:
        """(retired totals, live workers' snapshots).

        Worker files are read before the retired file, and a worker already listed there is
        skipped: the master writes the retired file before it deletes the worker's own, so a
        scrape racing with a retirement counts that worker exactly once.
        """
        workers = [
            snapshot
            for path in sorted(self.path.glob(f"{WORKER_PREFIX}*.json"))
            if (snapshot := _read(path)) is not None
        ]
        retired = _read(self.path / RETIRED_FILE) or Snapshot()
        gone = set(retired.retired_ids)
        return retired, [w for w in workers if w.worker_id not in gone]


def _merge(snapshots: list[Snapshot], live: bool) -> Snapshot:
    """Counters and histograms summed; gauges kept only when `live` (see exposition)."""
    counters: dict[str, dict[tuple[str, ...], float]] = {}
    histograms: dict[str, dict[tuple[str, ...], tuple[list[int], float]]] = {}
    for snapshot in snapshots:
        for name, series in snapshot.counters.items():
            merged = counters.setdefault(name, {})
            combine = max if name in _LARGEST else _add
            for labels, value in series:
                key = tuple(labels)
                merged[key] = combine(merged[key], value) if key in merged else value
        for name, series in snapshot.histograms.items():
            merged_h = histograms.setdefault(name, {})
            for labels, counts, total in series:
                old_counts, old_sum = merged_h.get(tuple(labels), ([0] * len(counts), 0.0))
                merged_h[tuple(labels)] = (
                    [a + b for a, b in zip(old_counts, counts, strict=True)],
                    old_sum + total,
                )
    return Snapshot(
        counters={n: [(list(k), v) for k, v in s.items()] for n, s in counters.items()},
        histograms={n: [(list(k), c, t) for k, (c, t) in s.items()] for n, s in histograms.items()},
        in_flight=sum(s.in_flight for s in snapshots) if live else 0,
        retired_ids=[i for s in snapshots for i in s.retired_ids],
    )


def _add(a: float, b: float) -> float:
    return a + b


class Totals:
    """Added-up values and histograms, read by family and label values."""

    def __init__(self, snapshot: Snapshot):
        self._snapshot = snapshot

    def values(self, definition: Definition) -> dict[tuple[str, ...], float]:
        return {tuple(k): v for k, v in self._snapshot.counters.get(definition.name, [])}

    def histogram(self, definition: Definition, labels: tuple[str, ...]) -> tuple[int, float]:
        """(count, sum) of one histogram series; (0, 0.0) when nothing was observed."""
        for series_labels, counts, total in self._snapshot.histograms.get(definition.name, []):
            if tuple(series_labels) == labels:
                return sum(counts), total
        return 0, 0.0


_FAMILY_TYPES = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}


class _Collector:
    """FAMILIES over the given snapshots: totals over every worker, live or retired; the live
    families over the live workers only, so a dead worker's gauges go with it."""

    def __init__(self, retired: Snapshot, workers: list[Snapshot]):
        self._total = _merge([retired, *workers], live=False)
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        for definition in FAMILIES:
            if definition.kind == "histogram":
                yield self._histogram(definition)
                continue
            family = _FAMILY_TYPES[definition.kind](
                definition.name, definition.help, labels=definition.labels
            )
            for labels, value in self._samples(definition):
                family.add_metric(list(labels), value)
            yield family

    def _samples(self, definition: Definition) -> Iterable[Sample]:
        if definition.live is not None:
            return definition.live(self._workers)
        values = dict.fromkeys(definition.initial, 0.0)
        for labels, value in self._total.counters.get(definition.name, []):
            values[tuple(labels)] = value
        return values.items()

    def _histogram(self, definition: Definition) -> HistogramMetricFamily:
        family = HistogramMetricFamily(definition.name, definition.help, labels=definition.labels)
        bounds = [*(f"{b:g}" for b in definition.buckets), "+Inf"]
        for labels, counts, total in self._total.histograms.get(definition.name, []):
            cumulative = np.cumsum(counts).tolist()
            family.add_metric(labels, list(zip(bounds, cumulative, strict=True)), total)
        return family


def exposition(retired: Snapshot, workers: list[Snapshot], accept: str = "") -> tuple[bytes, str]:
    """(body, content type) of the given snapshots added up: OpenMetrics when the scraper's
    Accept header asks for it (as Prometheus does), else the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(retired, workers))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
