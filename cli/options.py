"""The options that several subcommands share, each declared once: `--study`, `--storage`, `--reference`,
`--threads`, `--device`, `--data-dir`."""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluation.errors import UserError

# What a command that reads a study opens without --storage (`search.storage.default_storage_url`).
READ_DEFAULT = "your studies/local/NAME.db, else the campaign's studies/campaign/NAME.db, else the committed studies/NAME.db"
# What `run` writes without --storage (`search.storage.local_storage_url`).
WRITE_DEFAULT = "sqlite:///studies/local/NAME.db, your own study; the committed studies/NAME.db references are never written"


def study_name(arg: str) -> str:
    """A study given by name or by the path of its file -> its name."""
    return Path(arg).stem if arg.endswith(".toml") else arg


def add_study(parser: argparse.ArgumentParser, *, required: bool = False, note: str = "") -> None:
    """`--study`: a study's name (studies/NAME.toml) or the path of its file; `default` unless `required`."""
    parser.add_argument(
        "--study",
        required=required,
        default=None if required else "default",
        help=f"study name (studies/NAME.toml) or path to a study file{', ' + note if note else ''}"
        + ("" if required else " (default: default)"),
    )


def add_storage(parser: argparse.ArgumentParser, *, of: str = "", writes: bool = False) -> None:
    """`--storage`: the Optuna storage URL of the study (`of`: which option names the study, when not --study)."""
    default = WRITE_DEFAULT if writes else READ_DEFAULT
    parser.add_argument(
        "--storage",
        default=None,
        help=f"Optuna storage URL{' of ' + of if of else ''} (default: {default})",
    )


def add_reference(parser: argparse.ArgumentParser) -> None:
    """`--reference`: read the committed study even where a local one shadows it."""
    parser.add_argument(
        "--reference",
        action="store_true",
        help="read the committed study (studies/campaign/NAME.db, else studies/NAME.db) even if you have a local one",
    )


def add_read_options(parser: argparse.ArgumentParser) -> None:
    """`--study`, `--storage` and `--reference` of a command that reads one study (status, dashboard)."""
    add_study(parser)
    add_storage(parser)
    add_reference(parser)


def add_threads(parser: argparse.ArgumentParser, *, default: str = "torch's") -> None:
    """`--threads`: torch CPU threads per process (applied by `set_threads`, or by `run` to each worker)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch CPU threads per process (default: {default}; 1 on a busy machine: docs/search.md)",
    )


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads when asked (one per process is far faster on an oversubscribed CPU)."""
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    import torch  # deferred: a command that runs nothing starts without it

    torch.set_num_threads(threads)


def add_device(parser: argparse.ArgumentParser) -> None:
    """`--device`: where torch runs."""
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default: auto)"
    )


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """`--data-dir`: the dataset root, checked to exist (`search.data_check.check_data_dir`)."""
    parser.add_argument(
        "--data-dir",
        default=None,
        help="dataset root, an existing folder (default: $CL_DATA_DIR, else <repo>/data)",
    )
