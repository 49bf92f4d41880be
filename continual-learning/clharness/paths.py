"""Where files live: data and caches (a flag, else an environment variable, else a folder in the repository),
and the check of an `--out` path that the command lines share."""

from __future__ import annotations

import os
from pathlib import Path

from clharness.errors import HarnessError

# continual-learning/clharness/paths.py -> the repository root is two folders above this package.
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """The torchvision dataset root: `flag`, else $CL_DATA_DIR, else <repo>/data."""
    return Path(flag or os.environ.get("CL_DATA_DIR") or REPO_ROOT / "data")


def cache_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """Where derived artefacts (CIFAR trunk, features) are cached: `flag`, else $CL_CACHE_DIR, else <repo>/.cache."""
    return Path(flag or os.environ.get("CL_CACHE_DIR") or REPO_ROOT / ".cache")


def check_out_path(out: str, hooks: str | None = None, example: str = "result.json") -> Path:
    """`--out`, checked before any work starts, so a finished run is never lost to an unusable path.

    It must name a file (not a folder, not a device), not the hook module itself, in a folder that exists or can
    be created; missing folders are created only when the result is written. `example` is the file name
    suggested when `out` is a folder.
    """
    if out.endswith(("/", os.sep)):
        raise HarnessError(f"--out {out} ends with a path separator; give the path of a file")
    path = Path(out)
    if path.is_dir():
        raise HarnessError(f"--out {out} is a folder; give the path of a file, e.g. {path / example}")
    if path.exists():
        if not path.is_file():
            raise HarnessError(f"--out {out} exists and is not a regular file")
        if hooks is not None and Path(hooks).is_file() and os.path.samefile(path, hooks):
            raise HarnessError(f"--out {out} is the hook module; the result would overwrite it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the nearest folder that exists
        folder = folder.parent
    if not folder.is_dir():
        raise HarnessError(f"--out {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise HarnessError(f"--out {out}: cannot write into {folder}")
    return path
