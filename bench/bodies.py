"""Request bodies the load generators send: fixed and seeded, so every run posts the same bytes."""

import json
import random
from dataclasses import dataclass
from pathlib import Path

# The published example's first row: the one-row body is a real droid's request.
EXAMPLE_ROW = (0.92, 0.12, 0.31, 0.09)
MODELS = ("sklearn", "pytorch")
ENDPOINTS = ("sklearn", "pytorch", "astromech")


@dataclass(frozen=True)
class Body:
    """One request body on disk (wrk reads files), with what a correct answer must hold."""

    endpoint: str
    rows: int
    path: Path
    size: int


def crystal_rows(n: int, seed: int = 0) -> list[list[float]]:
    """n rows of four measurements in [0, 1), six decimals as instruments report them."""
    if n == 1:
        return [list(EXAMPLE_ROW)]
    rng = random.Random(seed)
    return [[round(rng.random(), 6) for _ in range(4)] for _ in range(n)]


def documents(endpoint: str, n: int) -> list[dict]:
    """The JSON documents for one cell; /astromech alternates its two models request by request."""
    rows = crystal_rows(n)
    if endpoint == "astromech":
        return [{"crystalData": rows, "model": model} for model in MODELS]
    return [{"crystalData": rows}]


def write_bodies(folder: Path, endpoint: str, n: int) -> list[Body]:
    """Writes the cell's bodies as compact JSON files and describes them."""
    folder.mkdir(parents=True, exist_ok=True)
    bodies = []
    for i, document in enumerate(documents(endpoint, n)):
        data = json.dumps(document, separators=(",", ":")).encode()
        path = folder / f"{endpoint}-{n}-{i}.json"
        path.write_bytes(data)
        bodies.append(Body(endpoint, n, path, len(data)))
    return bodies
