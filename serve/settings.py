"""Settings from the environment, with the documented defaults."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serve.errors import StartupError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    threads: int
    intra_op_threads: int
    inter_op_threads: int
    timeout: int
    graceful_timeout: int
    limits: Limits

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        # One worker per core: each runs onnxruntime on one thread, so they never oversubscribe.
        default_workers = _int(env, "WEB_CONCURRENCY", os.cpu_count() or 1, 1)
        return cls(
            host=env.get("HOST", "").strip() or "0.0.0.0",
            port=_int(env, "PORT", 3000, 0),
            models_dir=_path(env, "MODELS_DIR", PROJECT_ROOT / "onnx_models"),
            labels_file=_path(env, "LABELS_FILE", PROJECT_ROOT / "labels.txt"),
            workers=_int(env, "WORKERS", default_workers, 1),
            threads=_int(env, "THREADS", 4, 1),
            intra_op_threads=_int(env, "ORT_INTRA_OP_THREADS", 1, 1),
            inter_op_threads=_int(env, "ORT_INTER_OP_THREADS", 1, 1),
            timeout=_int(env, "TIMEOUT", 30, 1),
            graceful_timeout=_int(env, "GRACEFUL_TIMEOUT", 30, 1),
            limits=Limits(
                max_body_bytes=_int(env, "MAX_BODY_BYTES", Limits.max_body_bytes, 1),
                max_rows=_int(env, "MAX_ROWS", Limits.max_rows, 1),
                max_abs_value=_float(env, "MAX_ABS_VALUE", Limits.max_abs_value),
            ),
        )
