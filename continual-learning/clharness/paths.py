"""Where files live: data and caches (a flag, else an environment variable, else a folder in the repository),
and the check of an `--out` path that the command lines share."""

from __future__ import annotations

import os
import tempfile
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
    _check_can_create(out, path.parent)
    return path


def check_out_dir(out: str | os.PathLike[str]) -> Path:
    """A results folder given as `--out`, checked before any work starts: a folder, or a path where one can be
    created (created only when something is written)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise HarnessError(f"--out {out} exists and is not a folder; give the path of a folder")
    _check_can_create(out, path)
    return path


def _check_can_create(out: str | os.PathLike[str], target: Path) -> None:
    """That a file can be created in folder `target`, or in the nearest folder above it that exists (where the
    missing ones would be made): a file is created there and removed. Permission bits are not enough: root
    passes them, and /proc, /sys or a read-only mount still refuse."""
    folder = target
    while not folder.exists() and folder != folder.parent:  # the nearest folder that exists
        folder = folder.parent
    if not folder.is_dir():
        raise HarnessError(f"--out {out}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
    except OSError as exc:
        raise HarnessError(f"--out {out}: cannot write into {folder} ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)


def check_data_dir(flag: str | os.PathLike[str] | None) -> None:
    """An explicit `--data-dir` must be an existing folder: a typo is an error, never the offline fallback (nor a
    folder torchvision's download would create)."""
    if flag is None:
        return
    path = Path(flag).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise HarnessError(
            f"--data-dir {flag} {what}; give the folder that holds MNIST/raw (and cifar-100-python), or leave it "
            "out for $CL_DATA_DIR, else ./data"
        )
