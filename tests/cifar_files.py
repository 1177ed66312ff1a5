"""Writes small data sets in the standard ``cifar-10-batches-py`` format for tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 40, test_size: int = 30, seed: int = 0) -> Path:
    """Five training batches and a test batch of random images, as the CIFAR pickles hold them."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(name: str, count: int, label: str) -> None:
        labels = [int(i % 10) for i in range(count)]
        entry = {
            "batch_label": label,
            "labels": labels,
            "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(count)],
        }
        with (folder / name).open("wb") as handle:
            pickle.dump(entry, handle, protocol=2)

    for index in range(1, 6):
        batch(f"data_batch_{index}", per_batch, f"training batch {index} of 5")
    batch("test_batch", test_size, "testing batch 1 of 1")
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": per_batch}, handle)
    return folder
