"""`python -m serve.check`: everything that can stop the server, checked before gunicorn starts.

Exit 0 means the deployment can serve: the installed gunicorn has every private name the worker
relies on (serve/worker.py), the settings are valid, HOST resolves and PORT (and GRPC_PORT,
METRICS_PORT) can be bound there, AUTH_TOKENS_FILE holds valid tokens, and the app builds exactly
as a worker builds it (every model file exists, matches its checksum, loads in onnxruntime with
the [batch, 4] input contract, and fits labels.txt).
`python -m serve` runs it in a separate process before starting gunicorn, so a broken deployment
stops within a second with one JSON line and exit code 2, and the gunicorn master never holds an
onnxruntime session.
"""

import socket
import sys
import tempfile
from pathlib import Path

import gunicorn

from serve.app import get_app
from serve.errors import StartupError
from serve.logs import refusal
from serve.settings import Settings


def check_gunicorn() -> None:
    """The worker subclasses gunicorn's and uses its private names: a gunicorn it was not ported
    to is refused here, before gunicorn starts, and not at the first connection."""
    try:
        from serve import worker  # here: an import failure is itself the refusal
    except (ImportError, AttributeError) as exc:
        raise StartupError(
            f"gunicorn {gunicorn.__version__} cannot run serve/worker.py: {exc}"
        ) from None
    worker.check_private_names()


def check_listen(host: str, port: int, name: str = "PORT", reuse_port: bool = False) -> None:
    """Binds and releases the address gunicorn will listen on (SO_REUSEADDR, as gunicorn), or
    with `reuse_port` the one each worker's gRPC server listens on (SO_REUSEPORT, as grpc)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"HOST {host!r} cannot be resolved: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise StartupError(
                f"{name} {port} on HOST {host} cannot be bound: {exc.strerror}"
            ) from None


def check_metrics_dir(parent: Path | None) -> None:
    """The master makes its private metrics folder inside METRICS_DIR: it must be possible."""
    if parent is None:
        return
    try:
        parent.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=".crystal-check-", dir=parent)).rmdir()
    except OSError as exc:
        raise StartupError(f"METRICS_DIR {parent} cannot hold a folder: {exc.strerror}") from None


def main(argv: list[str]) -> int:
    """`--models-only`: the models and labels alone (a reload, while the server holds the port).
    `--gunicorn-only`: the installed gunicorn alone (`make test-upstream`)."""
    try:
        check_gunicorn()
        if "--gunicorn-only" in argv:
            return 0
        settings = Settings.from_env()
        if "--models-only" not in argv:
            check_listen(settings.host, settings.port)
            if settings.metrics_port is not None:
                check_listen(settings.host, settings.metrics_port, "METRICS_PORT")
            if settings.grpc_port:
                check_listen(settings.host, settings.grpc_port, "GRPC_PORT", reuse_port=True)
            check_metrics_dir(settings.metrics_dir)
        get_app(settings)
    except StartupError as exc:
        sys.stderr.buffer.write(refusal(exc) + b"\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
