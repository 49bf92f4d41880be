"""`python -m search status`: trial counts by state and the best trials with their per-benchmark scores."""

from __future__ import annotations

import argparse
import contextlib

from cli.options import add_read_options, study_name
from evaluation.errors import UserError
from search.status import format_status
from search.storage import display_url, open_study, read_storage_url, storage_note
from search.studies import load_study_def


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `status` subcommand."""
    p = sub.add_parser("status", help="trial counts by state and the best trials of a study")
    add_read_options(p)
    p.add_argument("--top", type=int, default=5, help="how many of the best trials to list (default 5)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Print the status of the study named by `args`."""
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    name = study_name(args.study)
    study_def = None
    with contextlib.suppress(UserError):  # a study kept only as storage (no file) still has a status
        study_def = load_study_def(args.study)
    storage = read_storage_url(name, args.storage, reference=args.reference)
    study = open_study(name, storage)
    print(f"storage {display_url(storage)}{storage_note(name, storage)}")
    print(format_status(study, study_def.n_trials if study_def else None, args.top, study_def))
    return 0
