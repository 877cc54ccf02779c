"""The classes a source model must predict: one per line of labels.txt, numbered from 0."""

from serve.labels import load_labels
from serve.settings import PROJECT_ROOT

CLASSES = tuple(range(len(load_labels(PROJECT_ROOT / "labels.txt"))))
N_CLASSES = len(CLASSES)
