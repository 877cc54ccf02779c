"""Settings from the environment, with the documented defaults."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serve.errors import StartupError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_PORT = 65535


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StartupError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise StartupError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StartupError(f"{name} must be a number, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise StartupError(f"{name} must be positive and finite, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("0", "1", "true", "false"):
        raise StartupError(f"{name} must be true or false, got {raw!r}")
    return raw in ("1", "true")


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = env.get(name, "").strip()
    return Path(raw) if raw else default


@dataclass(frozen=True)
class Limits:
    """Requests beyond these are answered 413 before they cost memory or time."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_rows: int = 100_000
    # No crystal measurement comes near; the bound keeps every model's arithmetic finite.
    max_abs_value: float = 1e12


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
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
        # One worker per core: each runs onnxruntime on one thread, so they never oversubscribe.
        default_workers = _int(env, "WEB_CONCURRENCY", os.cpu_count() or 1, 1)
        port = _int(env, "PORT", 3000, 0)
        if port > MAX_PORT:
            raise StartupError(f"PORT must be at most {MAX_PORT}, got {port}")
        metrics_dir = env.get("METRICS_DIR", "").strip()
        return cls(
            host=env.get("HOST", "").strip() or "0.0.0.0",
            port=port,
            models_dir=_path(env, "MODELS_DIR", PROJECT_ROOT / "onnx_models"),
            labels_file=_path(env, "LABELS_FILE", PROJECT_ROOT / "labels.txt"),
            workers=_int(env, "WORKERS", default_workers, 1),
            intra_op_threads=_int(env, "ORT_INTRA_OP_THREADS", 1, 1),
            inter_op_threads=_int(env, "ORT_INTER_OP_THREADS", 1, 1),
            timeout=_int(env, "TIMEOUT", 10, 1),
            graceful_timeout=_int(env, "GRACEFUL_TIMEOUT", 30, 1),
            keepalive=_int(env, "KEEPALIVE", 5, 1),
            header_timeout=_int(env, "HEADER_TIMEOUT", 5, 1),
            max_in_flight=_int(env, "MAX_IN_FLIGHT", 16, 1),
            offload_bytes=_int(env, "OFFLOAD_BYTES", 64 * 1024, 0),
            gzip_min_bytes=_int(env, "GZIP_MIN_BYTES", 4096, 1),
            metrics_dir=Path(metrics_dir) if metrics_dir else None,
            metrics_flush_seconds=_float(env, "METRICS_FLUSH_SECONDS", 1.0),
            log_probes=_bool(env, "LOG_PROBES", False),
            limits=Limits(
                max_body_bytes=_int(env, "MAX_BODY_BYTES", Limits.max_body_bytes, 1),
                max_rows=_int(env, "MAX_ROWS", Limits.max_rows, 1),
                max_abs_value=_float(env, "MAX_ABS_VALUE", Limits.max_abs_value),
            ),
        )
