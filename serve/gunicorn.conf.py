"""gunicorn settings for production, read from the environment through serve.settings."""

import os
import shutil
import tempfile
from pathlib import Path

from serve.metrics import FOLDER_ENV, MetricsFolder
from serve.settings import Settings

_settings = Settings.from_env()
_host = f"[{_settings.host}]" if ":" in _settings.host else _settings.host

wsgi_app = "serve.asgi:application()"
bind = [f"{_host}:{_settings.port}"]
if _settings.metrics_port is not None:  # answers /metrics alone (serve/app.py, MetricsPortSplit)
    bind.append(f"{_host}:{_settings.metrics_port}")
workers = _settings.workers
# gunicorn's asyncio worker (uvloop, the gunicorn-h1c C parser), with a first-request-head
# timeout and JSON error answers: serve/worker.py.
worker_class = "serve.worker.CrystalWorker"
# A worker that stops reporting for `timeout` is replaced; a request body that stops arriving
# for as long is answered 408.
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = _settings.keepalive
# Each worker loads the models after the fork: onnxruntime sessions are never shared.
preload_app = False
reload = False
# No runtime control socket: replicas on one host would share its path, and images run read-only.
control_socket_disable = True
errorlog = "-"
loglevel = "info"
logger_class = "serve.logs.GunicornJsonLogger"
accesslog = None  # the app writes one JSON line per request itself


def on_starting(server) -> None:
    """A private metrics folder per server, inside METRICS_DIR when set: the server only ever
    deletes the folder it made, so replicas sharing METRICS_DIR never touch each other's."""
    parent = _settings.metrics_dir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f"crystal-metrics-{os.getpid()}-", dir=parent)
    server._metrics_folder = MetricsFolder(Path(folder))
    os.environ[FOLDER_ENV] = folder  # the workers, forked from here, inherit it


def child_exit(server, worker) -> None:
    """A dead worker's totals stay counted, its live gauges go, and its exit is counted under
    why it exited: what the master stopped it for (CrystalArbiter.stop_reasons in
    serve/__main__.py; plain gunicorn's master, as the bench runs its floors, records none), else
    a crash while the server listens (a shutdown closes the listeners before it stops the
    workers). A reload or a deliberate stop is not an alert, a crash or a timeout is."""
    reason = getattr(server, "stop_reasons", {}).pop(worker.pid, None)
    if reason is None:
        reason = "crash" if server.LISTENERS else "stop"
    server._metrics_folder.retire(worker.pid, reason)


def on_exit(server) -> None:
    shutil.rmtree(server._metrics_folder.path, ignore_errors=True)
