"""Write small CIFAR-10 / CIFAR-100 files in the real pickle layout, for tests (the real ones are not here).

Layout and keys are those of the published files: `cifar-100-python/{train,test,meta}` with b'data' (N, 3072)
uint8 channel-major rows, b'fine_labels', b'coarse_labels', b'filenames', b'batch_label'; and
`cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}` with b'data', b'labels', ... . Pixel values
follow `pixel(i, c, r, col)`, so a test can check any pixel of image i in a file without storing the arrays.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def pixel(i: int, c: int, r: int, col: int) -> int:
    """Value of channel c, row r, column col of the i-th image of a file (rows and columns told apart)."""
    return (i + 85 * c + 3 * r + 7 * col) % 256


def _images(n: int) -> np.ndarray:
    i = np.arange(n).reshape(n, 1, 1, 1)
    c = np.arange(3).reshape(1, 3, 1, 1)
    r = np.arange(32).reshape(1, 1, 32, 1)
    col = np.arange(32).reshape(1, 1, 1, 32)
    x = (i + 85 * c + 3 * r + 7 * col) % 256
    return x.astype(np.uint8).reshape(n, 3072)  # channel-major rows, as the real files


def _labels(n_classes: int, per_class: int, seed: int) -> list[int]:
    # Every class per_class times, in a fixed shuffled order (the real files are not sorted by class).
    labels = np.repeat(np.arange(n_classes), per_class)
    return [int(v) for v in np.random.default_rng(seed).permutation(labels)]


def _dump(obj: dict[bytes, object], path: Path) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar100(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> dict[str, list[int]]:
    """Write `<root>/cifar-100-python/`; returns the labels written, {'train': [...], 'test': [...]}."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, per_class, seed in (("train", train_per_class, 1), ("test", test_per_class, 2)):
        fine = _labels(100, per_class, seed)
        n = len(fine)
        _dump(
            {
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
                b"batch_label": f"{split}ing batch 1 of 1".encode(),
                b"fine_labels": fine,
                b"coarse_labels": [v // 5 for v in fine],
                b"data": _images(n),
            },
            folder / split,
        )
        written[split] = fine
    _dump(
        {
            b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)],
        },
        folder / "meta",
    )
    return written


def write_cifar10(root: Path, train_per_class: int = 30, test_per_class: int = 2) -> dict[str, list[int]]:
    """Write `<root>/cifar-10-batches-py/`; training images split over the five batches in order."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = _labels(10, train_per_class, 3)
    chunks = np.array_split(np.arange(len(train)), 5)
    for b, idx in enumerate(chunks, start=1):
        labels = [train[i] for i in idx]
        _dump(
            {
                b"batch_label": f"training batch {b} of 5".encode(),
                b"labels": labels,
                # pixel index i counts within each file, as everywhere in this helper
                b"data": _images(len(labels)),
                b"filenames": [f"img_{i}.png".encode() for i in idx],
            },
            folder / f"data_batch_{b}",
        )
    test = _labels(10, test_per_class, 4)
    _dump(
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test,
            b"data": _images(len(test)),
            b"filenames": [],
        },
        folder / "test_batch",
    )
    _dump(
        {
            b"num_cases_per_batch": 10000,
            b"label_names": [f"c{k}".encode() for k in range(10)],
            b"num_vis": 3072,
        },
        folder / "batches.meta",
    )
    return {"train": train, "test": test, "batch_sizes": [len(c) for c in chunks]}
