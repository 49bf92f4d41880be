"""`python -m search sweep`: a tuned baseline's strength sweep, each point a trial of its study (search/sweep.py)."""

from __future__ import annotations

import argparse

from cli.options import add_data_dir, add_device, add_storage, add_study, add_threads, set_threads
from search import sweep as swp
from search.storage import read_storage_url
from search.studies import load_study_def


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `sweep` subcommand."""
    p = sub.add_parser(
        "sweep",
        help="add a preset at several strengths to a study as trials (a strength sweep's finalists)",
        description=(
            "Adds each point (NAME@X: the preset or variant NAME at X times its strength) that the study lacks as "
            "a trial scored by the study's proxies, unpruned and outside its trial budget, marked as a warm start "
            "so that `promote` runs it at full fidelity beside the study's best (the budget rule's strength "
            "sweep, README)."
        ),
    )
    add_study(p, required=True)
    add_storage(p)
    p.add_argument(
        "--points", nargs="+", required=True, metavar="NAME@X", help="e.g. mas@2 mas@4 mas@8 mas@16"
    )
    add_data_dir(p)
    add_device(p)
    add_threads(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    study_def = load_study_def(args.study)
    url = read_storage_url(study_def.name, args.storage)
    found = swp.sweep(study_def, url, args.points, data_dir=args.data_dir, device=args.device)
    print(f"sweep of study {study_def.name}: " + ", ".join(f"{p} trial {n}" for p, n in found.items()))
    return 0
