"""`python -m search modules`: the module files the run records name, written back (search/modules.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from search import modules
from search.studies import repo_root


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `modules` subcommand."""
    p = sub.add_parser(
        "modules",
        help="write back the module files the run records name (they are not kept in the repository)",
        description=(
            "Writes every module file a run record under the folders names and this checkout lacks, from the "
            "design and provenance the record keeps, the committed study trial it came from, or the commit that "
            "last held it, each checked against the sha256 the harness recorded."
        ),
    )
    p.add_argument(
        "folders",
        nargs="*",
        type=Path,
        help=f"where the run records are (default: {' '.join(modules.DEFAULT_ROOTS)})",
    )
    p.add_argument(
        "--check", action="store_true", help="regenerate every module, present or not, and write nothing"
    )
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    roots = args.folders or [repo_root() / r for r in modules.DEFAULT_ROOTS]
    counts = modules.restore(roots, check=args.check)
    done = ", ".join(f"{counts[w]} {w}" for w in modules.WAYS if counts[w])
    what = "regenerated with their sha256" if args.check else "module files"
    print(f"{sum(counts.values())} {what}: {done or 'none named'}")
    return 0
