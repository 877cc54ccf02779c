"""gunicorn settings for production, read from the environment through serve.settings."""

import os
import shutil
import tempfile

from serve.settings import Settings

_settings = Settings.from_env()
_host = f"[{_settings.host}]" if ":" in _settings.host else _settings.host

wsgi_app = "serve.wsgi:application()"
bind = [f"{_host}:{_settings.port}"]
workers = _settings.workers
worker_class = "gthread"
threads = _settings.threads
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = 5
# Each worker loads the models after the fork: onnxruntime sessions are never shared.
preload_app = False
reload = False
# No runtime control socket: replicas on one host would share its path, and images run read-only.
control_socket_disable = True
errorlog = "-"
loglevel = "info"
accesslog = None  # the app writes one JSON line per request itself


def on_starting(server) -> None:
    """A fresh metrics folder per server, made before any worker imports prometheus_client."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        shutil.rmtree(configured, ignore_errors=True)
        os.makedirs(configured)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="crystal-metrics-")
        server._owns_metrics_dir = True


def child_exit(server, worker) -> None:
    """A dead worker's live gauges stop counting; its counters and histograms stay summed."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if getattr(server, "_owns_metrics_dir", False):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
