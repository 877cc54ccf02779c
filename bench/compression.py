"""`python -m bench.compression`: what gzip costs and saves on the service's own answers.

Answers of 1 to 100,000 rows of seeded random measurements are made by the committed models
through the droids' renderer, as the service makes them, then compressed at levels 1 and 6. The
time is set against the time the service spends making the answer (predict and render), and the
saving against a 100 Mbit/s link, so the default GZIP_MIN_BYTES follows from the figures.
"""

import argparse
import gzip
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from bench.report import publish
from serve import release
from serve.classifier import OnnxClassifier
from serve.droid import AnswerRenderer
from serve.metrics import Metrics
from serve.registry import ModelRegistry
from serve.settings import PROJECT_ROOT, Settings

ROWS = (1, 10, 40, 100, 1_000, 100_000)
LEVELS = (1, 6)
LINK_BYTES_PER_S = 100e6 / 8


def _best_seconds(action: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def _make(registry: ModelRegistry, render: AnswerRenderer, model: str, batch: np.ndarray) -> bytes:
    return render(*registry.run(model, batch))


def measure(model: str = "sklearn") -> list[dict]:
    models = release.read(Settings.from_env({}))
    registry = ModelRegistry(
        {m.name: OnnxClassifier(m.name, models.data[m.name]) for m in models.models},
        models.labels,
        Metrics(),
    )
    render = AnswerRenderer(models.labels)
    rng = np.random.default_rng(0)
    results = []
    for rows in ROWS:
        batch = rng.uniform(0, 1, (rows, 4)).round(3)
        repeat = 3 if rows > 10_000 else 50
        answer = render(*registry.run(model, batch))
        make_s = _best_seconds(partial(_make, registry, render, model, batch), repeat)
        for level in LEVELS:
            packed = gzip.compress(answer, compresslevel=level, mtime=0)
            gzip_s = _best_seconds(
                partial(gzip.compress, answer, compresslevel=level, mtime=0), repeat
            )
            results.append(
                {
                    "rows": rows,
                    "level": level,
                    "answer_bytes": len(answer),
                    "gzip_bytes": len(packed),
                    "ratio": len(packed) / len(answer),
                    "answer_ms": make_s * 1000,
                    "gzip_ms": gzip_s * 1000,
                    "gzip_vs_answer": gzip_s / make_s,
                    "saved_ms_at_100_mbit": (len(answer) - len(packed)) / LINK_BYTES_PER_S * 1000,
                }
            )
    return results


def markdown(results: list[dict]) -> str:
    lines = [
        "# gzip on the service's answers",
        "",
        "`python -m bench.compression`: /sklearn answers of seeded random rows; best of repeats.",
        "",
        "| rows | level | answer bytes | gzip bytes | ratio | make answer ms | gzip ms "
        "| gzip / make | saved at 100 Mbit/s ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['level']} | {r['answer_bytes']:,} | {r['gzip_bytes']:,} "
            f"| {r['ratio']:.2f} | {r['answer_ms']:.3f} | {r['gzip_ms']:.3f} "
            f"| {r['gzip_vs_answer']:.2f} | {r['saved_ms_at_100_mbit']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    args = parser.parse_args()
    results = measure()
    publish(args.out, "compression", results, markdown(results))


if __name__ == "__main__":
    main()
