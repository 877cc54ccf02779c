"""`python -m export.train_sources --out DIR`: the project's own stand-in source models.

They let the export, its tests and the service run without the data team's files. Synthetic
crystals: each colour has a typical measurement (a centroid in the unit cube) and samples scatter
around it. Seeded and single-threaded, so the same machine always writes the same two files.
"""

import argparse
import hashlib
import io
import sys
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from export.network import CrystalNet
from serve.contract import N_FEATURES

SEED = 7
SAMPLES_PER_CLASS = 1_000
NOISE = 0.2
# Typical measurements of a blue, a green and a yellow crystal.
CENTROIDS = np.array(
    [
        [0.80, 0.20, 0.30, 0.15],
        [0.35, 0.55, 0.75, 0.20],
        [0.30, 0.20, 0.25, 0.85],
    ]
)
EPOCHS = 300
# A modest rate keeps the logits moderate, like the data team's network: float32 rounding, and so
# the ONNX parity error, grows with the size of the logits.
LEARNING_RATE = 0.001


def crystals(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features in [0, 1] and class indices 0, 1, 2, shuffled."""
    labels = np.repeat(np.arange(len(CENTROIDS)), SAMPLES_PER_CLASS)
    features = CENTROIDS[labels] + rng.normal(0.0, NOISE, (len(labels), N_FEATURES))
    order = rng.permutation(len(labels))
    return np.clip(features, 0.0, 1.0)[order], labels[order]


def train_sklearn(features: np.ndarray, labels: np.ndarray) -> LogisticRegression:
    return LogisticRegression(max_iter=1_000).fit(features, labels)


def train_pytorch(features: np.ndarray, labels: np.ndarray) -> CrystalNet:
    """Full-batch Adam on the cross-entropy of the logits."""
    torch.manual_seed(SEED)
    network = CrystalNet()
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    inputs = torch.from_numpy(features.astype(np.float32))
    targets = torch.from_numpy(labels)
    loss_function = nn.CrossEntropyLoss()
    for _ in range(EPOCHS):
        optimizer.zero_grad()
        loss_function(network.logits(inputs), targets).backward()
        optimizer.step()
    return network.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export.train_sources", description="Train the stand-in source models."
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the two model files")
    out = parser.parse_args(argv).out
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    features, labels = crystals(np.random.default_rng(SEED))
    classifier = train_sklearn(features, labels)
    network = train_pytorch(features, labels)

    with torch.no_grad():
        network_labels = network(torch.from_numpy(features.astype(np.float32))).argmax(dim=1)
    sklearn_file, pytorch_file = io.BytesIO(), io.BytesIO()
    joblib.dump(classifier, sklearn_file)
    torch.save(network.state_dict(), pytorch_file)
    out.mkdir(parents=True, exist_ok=True)
    for name, buffer, predicted in (
        ("sklearn.joblib", sklearn_file, classifier.predict(features)),
        ("pytorch.pt", pytorch_file, network_labels.numpy()),
    ):
        data = buffer.getvalue()
        (out / name).write_bytes(data)
        print(
            f"{out / name}: sha256 {hashlib.sha256(data).hexdigest()}, "
            f"training accuracy {(predicted == labels).mean():.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
