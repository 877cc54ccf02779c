"""`python -m bench.compression`: what gzip costs and saves on the service's own answers.

Answers of 1 to 100,000 seeded random rows, made by the committed models through the droids'
renderer as the service makes them, gzipped at levels 1 and 6: the time against the time the
service takes to make the answer, the saving against a 100 Mbit/s link (GZIP_MIN_BYTES follows)."""

import argparse
import gzip
import timeit
from functools import partial
from pathlib import Path

import numpy as np

from bench.report import publish, table
from serve import release
from serve.classifier import OnnxClassifier
from serve.droid import AnswerRenderer
from serve.metrics import Metrics
from serve.registry import ModelRegistry
from serve.settings import PROJECT_ROOT, Settings

ROWS, LEVELS, LINK_BYTES_PER_S = (1, 10, 40, 100, 1_000, 100_000), (1, 6), 100e6 / 8


def measure(model: str = "sklearn") -> list[dict]:
    models = release.read(Settings.from_env({}))
    classifiers = {m.name: OnnxClassifier(m.name, models.data[m.name]) for m in models.models}
    registry = ModelRegistry(classifiers, models.labels, Metrics())
    render = AnswerRenderer(models.labels)
    rng, results = np.random.default_rng(0), []
    for rows in ROWS:
        batch = rng.uniform(0, 1, (rows, 4)).round(3)
        times = partial(timeit.repeat, number=1, repeat=3 if rows > 10_000 else 50)  # min: the best
        answer = render(*registry.run(model, batch))
        make_s = min(times(lambda batch=batch: render(*registry.run(model, batch))))
        for level in LEVELS:
            size = len(gzip.compress(answer, compresslevel=level, mtime=0))
            gzip_s = min(times(lambda a=answer, n=level: gzip.compress(a, n, mtime=0)))
            result = {"rows": rows, "level": level, "answer_bytes": len(answer), "gzip_bytes": size}
            result |= {"ratio": size / len(answer), "answer_ms": make_s * 1000}
            result |= {"gzip_ms": gzip_s * 1000, "gzip_vs_answer": gzip_s / make_s}
            result["saved_ms_at_100_mbit"] = (len(answer) - size) / LINK_BYTES_PER_S * 1000
            results.append(result)
    return results


def markdown(results: list[dict]) -> str:
    blocks = [
        "# gzip on the service's answers",
        "`python -m bench.compression`: /sklearn answers of seeded random rows; best of repeats.",
        table(
            "rows:={rows:,} | level:={level} | answer bytes:={answer_bytes:,} "
            "| gzip bytes:={gzip_bytes:,} | ratio:={ratio:.2f} | make answer ms:={answer_ms:.3f} "
            "| gzip ms:={gzip_ms:.3f} | gzip / make:={gzip_vs_answer:.2f} "
            "| saved at 100 Mbit/s ms:={saved_ms_at_100_mbit:.3f}",
            results,
        ),
    ]
    return "\n\n".join(blocks) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    out = parser.parse_args().out
    results = measure()
    publish(out, "compression", results, markdown(results))


if __name__ == "__main__":
    main()
