"""Shared fixtures: the real-data root, and small synthetic streams for logic tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOOKS = REPO / "tests" / "hooks"


def _data_root() -> Path | None:
    root = os.environ.get("CL_DATA_DIR")
    if root and (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        return Path(root)
    return None


@pytest.fixture
def mnist_root() -> Path:
    """The real MNIST root from $CL_DATA_DIR; the test is skipped when it is absent."""
    root = _data_root()
    if root is None:
        pytest.skip(
            "real MNIST not found: set CL_DATA_DIR to a torchvision root holding MNIST/raw (../shared/data)"
        )
    return root
