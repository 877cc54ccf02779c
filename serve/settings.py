"""Settings from the environment. `SETTINGS` is the one table of them: `Settings.from_env` parses
with it, `python -m serve --help` prints it, and a test holds the table in docs/operations.md
equal to it."""

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from serve.errors import StartupError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_PORT = 65535

Parse = Callable[[str, str], object]  # (name, stripped non-blank text) -> value, or StartupError


def integer(minimum: int, maximum: int | None = None) -> Parse:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise StartupError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise StartupError(f"{name} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise StartupError(f"{name} must be at most {maximum}, got {value}")
        return value

    return parse


def number(name: str, raw: str) -> float:
    """A positive, finite float: zero, infinity or NaN would disable or break what it bounds."""
    try:
        value = float(raw)
    except ValueError:
        raise StartupError(f"{name} must be a number, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise StartupError(f"{name} must be positive and finite, got {raw!r}")
    return value


def boolean(name: str, raw: str) -> bool:
    raw = raw.lower()
    if raw not in ("0", "1", "true", "false"):
        raise StartupError(f"{name} must be true or false, got {raw!r}")
    return raw in ("1", "true")


def text(name: str, raw: str) -> str:
    """Any text: what it names (a host, a folder) is checked where it is used."""
    return raw


def path(name: str, raw: str) -> Path:
    """Any path: whether it exists or can be written is checked where it is used."""
    return Path(raw)


@dataclass(frozen=True)
class Limits:
    """Requests beyond these are answered 413 (408 for time) before they cost memory or time."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_rows: int = 100_000
    # No crystal measurement comes near; the bound keeps every model's arithmetic finite.
    max_abs_value: float = 1e12
    body_timeout: float = 60.0


@dataclass(frozen=True)
class Setting:
    """One environment variable. A blank value counts as unset, so `default` applies."""

    name: str
    shown: str  # the default as --help and docs/operations.md show it
    meaning: str
    parse: Parse
    default: object

    def read(self, env: Mapping[str, str]) -> object:
        raw = env.get(self.name, "").strip()
        return self.parse(self.name, raw) if raw else self.default


SETTINGS = (
    Setting("PORT", "3000", "listening port (0 to 65535)", integer(0, MAX_PORT), 3000),
    Setting("HOST", "0.0.0.0", "listening address", text, "0.0.0.0"),
    Setting(
        "GRPC_PORT",
        "8081",
        "the Open Inference Protocol's gRPC port (h2c) on HOST, served by every worker "
        "(SO_REUSEPORT); 0 turns gRPC off",
        integer(0, MAX_PORT),
        8081,
    ),
    Setting(
        "METRICS_PORT",
        "unset: /metrics on PORT",
        "a port of its own for /metrics (as Triton's 8002 and MLServer's 8082), differing from "
        "PORT and GRPC_PORT: it answers /metrics only, and PORT no longer does",
        integer(1, MAX_PORT),
        None,
    ),
    Setting(
        "AUTH_TOKENS_FILE",
        "unset: no tokens asked",
        "a file of bearer tokens, one a line (at least 16 characters each; several at once, to "
        "rotate one without downtime); requests to the models must then send Authorization: "
        "Bearer <token>, while probes, /metrics, / and the API page stay open; read at start and "
        "on SIGHUP, with the models; set but blank stops the start, as it would open the models",
        path,
        None,
    ),
    Setting(
        "MODELS_DIR",
        "onnx_models (beside serve/)",
        "folder with the ONNX files and manifest.json",
        path,
        PROJECT_ROOT / "onnx_models",
    ),
    Setting(
        "LABELS_FILE",
        "labels.txt (beside serve/)",
        "one label per line, for model outputs 0, 1, 2",
        path,
        PROJECT_ROOT / "labels.txt",
    ),
    Setting(
        "WORKERS",
        "WEB_CONCURRENCY, else the number of cores",
        "gunicorn worker processes, one event loop each",
        integer(1),
        None,
    ),
    Setting(
        "WEB_CONCURRENCY",
        "unset",
        "the worker count when WORKERS is unset (the variable hosting platforms set); checked "
        "even when WORKERS is set, as gunicorn reads it too",
        integer(1),
        None,
    ),
    Setting(
        "ORT_INTRA_OP_THREADS",
        "1",
        "onnxruntime threads within one operator, per worker: one worker per core, one thread "
        "each, so workers never oversubscribe the CPU",
        integer(1),
        1,
    ),
    Setting(
        "ORT_INTER_OP_THREADS",
        "1",
        "onnxruntime threads across operators, per worker (used only by onnxruntime's parallel "
        "execution mode, which the service does not enable)",
        integer(1),
        1,
    ),
    Setting(
        "MAX_BODY_BYTES",
        "16777216 (16 MiB)",
        "larger bodies get 413; a declared Content-Length is checked before reading, a chunked "
        "body is refused as soon as it passes the limit",
        integer(1),
        Limits.max_body_bytes,
    ),
    Setting("MAX_ROWS", "100000", "more rows get 413", integer(1), Limits.max_rows),
    Setting(
        "MAX_ABS_VALUE",
        "1e12",
        "larger measurements get 422: no crystal comes near, and it keeps every model's "
        "arithmetic finite (a float64 logistic regression fed 1e308 overflows to NaN)",
        number,
        Limits.max_abs_value,
    ),
    Setting(
        "MAX_IN_FLIGHT",
        "16",
        "requests at work per worker (body arrived whole: decoding, predicting, encoding or "
        "waiting for the inference thread) beyond which a request is answered 503 with "
        "Retry-After: 1 at once; requests still receiving their body, probes and /metrics "
        "never count",
        integer(1),
        16,
    ),
    Setting(
        "HEADER_TIMEOUT",
        "5 s",
        "a new connection that sends no complete request head in this time gets 408 and is closed",
        integer(1),
        5,
    ),
    Setting(
        "BODY_TIMEOUT",
        "60 s",
        "a request body must arrive whole within this many seconds of its first byte, or the "
        "request gets 408 and its connection closes (TIMEOUT still bounds each pause)",
        number,
        Limits.body_timeout,
    ),
    Setting(
        "TIMEOUT",
        "10 s",
        "a request body that stops arriving for this long gets 408 and its connection closes; a "
        "worker that stops reporting for this long is replaced",
        integer(1),
        10,
    ),
    Setting(
        "KEEPALIVE", "5 s", "an idle kept-alive connection is closed after this", integer(1), 5
    ),
    Setting(
        "GRACEFUL_TIMEOUT", "30 s", "time given to in-flight requests on SIGTERM", integer(1), 30
    ),
    Setting(
        "GZIP_MIN_BYTES",
        "4096",
        "answers this large or larger are gzip-compressed for clients that accept gzip",
        integer(1),
        4096,
    ),
    Setting(
        "OFFLOAD_BYTES",
        "65536",
        "bodies larger than this (about 1,500 rows) are decoded, predicted and encoded on the "
        "worker's inference thread, so the event loop keeps answering probes and small requests "
        "meanwhile",
        integer(0),
        64 * 1024,
    ),
    Setting(
        "METRICS_DIR",
        "the system's temporary folder",
        "where the server makes its private metrics folder (crystal-metrics-<pid>-*), created "
        "when missing, removed at exit; nothing else in it is touched",
        path,
        None,
    ),
    Setting(
        "METRICS_FLUSH_SECONDS",
        "1",
        "how often each worker publishes its metrics to the others",
        number,
        1.0,
    ),
    Setting(
        "LOG_PROBES",
        "false",
        "true writes access lines for probes and scrapes too",
        boolean,
        False,
    ),
)


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    grpc_port: int
    metrics_port: int | None
    auth_tokens_file: Path | None
    models_dir: Path
    labels_file: Path
    workers: int
    intra_op_threads: int
    inter_op_threads: int
    timeout: int
    graceful_timeout: int
    keepalive: int
    header_timeout: int
    max_in_flight: int
    offload_bytes: int
    gzip_min_bytes: int
    metrics_dir: Path | None
    metrics_flush_seconds: float
    log_probes: bool
    limits: Limits

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        """Every setting in SETTINGS is parsed, so any bad value stops the start, used or not."""
        value = {setting.name: setting.read(env) for setting in SETTINGS}
        # One worker per core: each runs onnxruntime on one thread, so they never oversubscribe.
        workers = value["WORKERS"] or value["WEB_CONCURRENCY"] or os.cpu_count() or 1
        if value["AUTH_TOKENS_FILE"] is None and "AUTH_TOKENS_FILE" in env:
            # Blank counts as unset everywhere else; here it would open the models silently.
            raise StartupError(
                "AUTH_TOKENS_FILE is blank: name the token file, or unset it to ask no tokens"
            )
        metrics_port = value["METRICS_PORT"]
        for other in ("PORT", "GRPC_PORT"):
            if metrics_port is not None and metrics_port == value[other]:
                raise StartupError(
                    f"METRICS_PORT must differ from {other}, both are {metrics_port}"
                )
        return cls(
            host=value["HOST"],
            port=value["PORT"],
            grpc_port=value["GRPC_PORT"],
            metrics_port=metrics_port,
            auth_tokens_file=value["AUTH_TOKENS_FILE"],
            models_dir=value["MODELS_DIR"],
            labels_file=value["LABELS_FILE"],
            workers=workers,
            intra_op_threads=value["ORT_INTRA_OP_THREADS"],
            inter_op_threads=value["ORT_INTER_OP_THREADS"],
            timeout=value["TIMEOUT"],
            graceful_timeout=value["GRACEFUL_TIMEOUT"],
            keepalive=value["KEEPALIVE"],
            header_timeout=value["HEADER_TIMEOUT"],
            max_in_flight=value["MAX_IN_FLIGHT"],
            offload_bytes=value["OFFLOAD_BYTES"],
            gzip_min_bytes=value["GZIP_MIN_BYTES"],
            metrics_dir=value["METRICS_DIR"],
            metrics_flush_seconds=value["METRICS_FLUSH_SECONDS"],
            log_probes=value["LOG_PROBES"],
            limits=Limits(
                max_body_bytes=value["MAX_BODY_BYTES"],
                max_rows=value["MAX_ROWS"],
                max_abs_value=value["MAX_ABS_VALUE"],
                body_timeout=value["BODY_TIMEOUT"],
            ),
        )
