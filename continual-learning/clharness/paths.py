"""Where data and caches live: a flag, else an environment variable, else a folder in the repository."""

from __future__ import annotations

import os
from pathlib import Path

# continual-learning/clharness/paths.py -> the repository root is two folders above this package.
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """The torchvision dataset root: `flag`, else $CL_DATA_DIR, else <repo>/data."""
    return Path(flag or os.environ.get("CL_DATA_DIR") or REPO_ROOT / "data")


def cache_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """Where derived artefacts (CIFAR trunk, features) are cached: `flag`, else $CL_CACHE_DIR, else <repo>/.cache."""
    return Path(flag or os.environ.get("CL_CACHE_DIR") or REPO_ROOT / ".cache")
