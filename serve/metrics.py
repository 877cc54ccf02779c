"""Prometheus metrics, correct across gunicorn's worker processes.

With PROMETHEUS_MULTIPROC_DIR set (serve/gunicorn.conf.py sets it before any worker starts), each
worker writes its samples to files in that folder and /metrics adds them up over all workers.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
INFERENCE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2, 0.25, 1.0)
ROW_BUCKETS = (1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 50_000, 100_000)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self._registry = CollectorRegistry()
        self.requests = Counter(
            "crystal_requests",
            "HTTP requests answered, by endpoint, model and status code.",
            ["endpoint", "model", "status"],
            registry=self._registry,
        )
        self.request_seconds = Histogram(
            "crystal_request_duration_seconds",
            "Time to answer a request, from routing to the response body.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self._registry,
        )
        self.inference_seconds = Histogram(
            "crystal_inference_duration_seconds",
            "Time spent in the model itself (onnxruntime), per model.",
            ["model"],
            buckets=INFERENCE_BUCKETS,
            registry=self._registry,
        )
        self.rows = Histogram(
            "crystal_request_rows",
            "Rows per prediction request, per model.",
            ["model"],
            buckets=ROW_BUCKETS,
            registry=self._registry,
        )
        self.in_flight = Gauge(
            "crystal_requests_in_flight",
            "Requests being handled now, summed over live workers.",
            registry=self._registry,
            multiprocess_mode="livesum",
        )

    def exposition(self) -> bytes:
        """The text format: over all workers in multiprocess mode, else this process's own."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self._registry)
