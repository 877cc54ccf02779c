"""The classes a source model must predict: one per line of labels.txt, numbered from 0.

A classifier may name them by number (0, 1, 2) or by the labels themselves, in that order."""

from serve.labels import load_labels
from serve.settings import PROJECT_ROOT

LABELS = load_labels(PROJECT_ROOT / "labels.txt")
CLASSES = tuple(range(len(LABELS)))
N_CLASSES = len(CLASSES)


def class_problem(found: list[object]) -> str | None:
    """Why a model's classes are not the service's, naming both; None when they are."""
    if found == list(CLASSES) or found == list(LABELS):
        return None
    return f"classes {found}, expected {list(CLASSES)} or {list(LABELS)} (labels.txt)"
