"""Request bodies on disk for wrk (which reads files): the harness's seeded documents, so every
run posts the same bytes."""

from dataclasses import dataclass
from pathlib import Path

from harness.bodies import documents, encode, endpoints

ENDPOINTS = tuple(endpoints())


@dataclass(frozen=True)
class Body:
    """One request body on disk, with what a correct answer must hold."""

    endpoint: str
    rows: int
    path: Path
    size: int


def write_bodies(folder: Path, endpoint: str, n: int) -> list[Body]:
    """Writes the cell's bodies as compact JSON files and describes them."""
    folder.mkdir(parents=True, exist_ok=True)
    bodies = []
    for i, document in enumerate(documents(endpoint, n)):
        data = encode(document)
        path = folder / f"{endpoint}-{n}-{i}.json"
        path.write_bytes(data)
        bodies.append(Body(endpoint, n, path, len(data)))
    return bodies
