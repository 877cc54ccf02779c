"""Class labels: the service names classes from labels.txt, never from the models."""

from pathlib import Path

from serve.errors import StartupError


def load_labels(path: Path) -> tuple[str, ...]:
    """One label per line, for model outputs 0, 1, 2, ... in that order."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StartupError(f"labels file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"labels file {path} cannot be read: {exc}") from None
    labels = tuple(line.strip() for line in text.splitlines())
    if not labels or any(not label for label in labels):
        raise StartupError(f"labels file {path} must hold one non-empty label per line")
    if len(set(labels)) != len(labels):
        raise StartupError(f"labels file {path} repeats a label")
    return labels
