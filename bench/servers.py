"""The servers the bench compares, each a gunicorn master and its workers, and facts about the
machine and code measured.

All of them run with serve/gunicorn.conf.py, so workers, keep-alive and timeouts are the
service's own. The service and the ASGI floor also share its worker class; the WSGI floor and
the native baseline swap it for gunicorn's `gthread` (4 threads) through GUNICORN_CMD_ARGS,
which outranks the config file.
"""

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.server import REPO_ROOT, SERVE, ServerProcess
from serve.metrics import FOLDER_ENV

GUNICORN_CONF = REPO_ROOT / "serve" / "gunicorn.conf.py"
GTHREAD = "--worker-class gthread --threads 4"
# Inherited values that would make the servers differ from each other or share state.
_SCRUBBED_ENV = ("GUNICORN_CMD_ARGS", FOLDER_ENV)


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: the arguments to python and what it adds to the environment."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def server_specs(
    base_env: dict[str, str], sklearn_model: Path | None, pytorch_model: Path | None
) -> dict[str, ServerSpec]:
    """The service, the ASGI floor (the service's worker), the WSGI floor and native (gthread)."""
    gunicorn = ("-m", "gunicorn", "--config", str(GUNICORN_CONF))
    gthread = {**base_env, "GUNICORN_CMD_ARGS": GTHREAD}
    native_env = {}
    if sklearn_model and pytorch_model:
        native_env = {
            "BENCH_SKLEARN_MODEL": str(sklearn_model),
            "BENCH_PYTORCH_MODEL": str(pytorch_model),
        }
    apps = {
        "service": ("serve.asgi:application()", dict(base_env)),
        "floor": ("bench.floor_app:app", dict(base_env)),
        "floor-wsgi": ("bench.floor_app:wsgi_app", gthread),
        "native": ("bench.native_app:application()", {**gthread, **native_env}),
    }
    specs = {name: ServerSpec(name, (*gunicorn, app), env) for name, (app, env) in apps.items()}
    # The real entry point: the start-up checks first, then gunicorn with the same config.
    specs["service"] = ServerSpec("service", SERVE, apps["service"][1])
    return specs


def listen_overflows() -> int:
    """Connections dropped because a listening socket's accept queue was full, so far, over this
    network namespace (the kernel's TcpExt ListenOverflows): a dropped SYN costs its client a
    retransmit, a second later."""
    header, values = [
        line.split() for line in Path("/proc/net/netstat").read_text().splitlines()[:2]
    ]
    return int(values[header.index("ListenOverflows")])


def code_state() -> dict[str, object]:
    """The commit measured, the files of serve/ and bench/ that differ from it, and a digest of
    those folders' sources: figures are only comparable between runs of the same code, and a
    digest that changed during a run means its servers did not all run the same code."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "serve").rglob("*")) + sorted((REPO_ROOT / "bench").glob("*")):
        if path.is_file() and path.suffix in (".py", ".json", ".lua"):
            digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + path.read_bytes())
    git = ["git", "--no-optional-locks", "-C", str(REPO_ROOT)]
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "serve", "bench", ":!bench/results"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return {
        "commit": commit or "unknown",
        "uncommitted": [line[3:] for line in changed],
        "sources_sha256": digest.hexdigest(),
    }


def loadavg() -> str:
    """The machine's load averages over 1, 5 and 15 minutes: how busy the shared cores were."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def start(spec: ServerSpec, probe: bytes) -> ServerProcess:
    """The server started and ready: POST /sklearn answered 200, readiness as a client sees it.
    Its stdout (one access-log line per request) is dropped, as a log shipper would take it."""
    server = ServerProcess(
        spec.env,
        spec.command,
        scrub=_SCRUBBED_ENV,
        ready_probe=("POST", "/sklearn", probe),
        keep_stdout=False,
    )
    return server.wait_ready()
