"""`python -m search reorder`: copy a study into a new storage with its trials' reports in the study file's
benchmark order.

A trial reports after every context, benchmarks in the study file's order, so the report order decides which
contexts a pruning decision rests on (docs/fidelity.md, section 3). The final value does not depend on it, but
the intermediate values do, and a pruner compares a running trial with finished ones step by step: a study
whose file changed its order refuses to resume (`check_scoring`), since old and new reports would mix. This
command moves such a study to the new order instead of starting it again: each complete trial's reports are
recomputed exactly (`reorder_trial`), into a new storage; the source is not written.

    python -m search reorder --study campaign --from sqlite:///studies/campaign/old.db \\
        --to sqlite:///studies/campaign/campaign.db

Failed trials keep their attributes but not their partial reports (which cannot be reordered; pruners read
complete trials only); waiting trials are copied as they are. A study with pruned or running trials is refused.
"""

from __future__ import annotations

import argparse

from cli.options import add_study
from search.reorder import reorder_study
from search.studies import load_study_def


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `reorder` subcommand."""
    p = sub.add_parser(
        "reorder",
        help="copy a study into a new storage, its trials' reports in the study file's benchmark order",
        description=__doc__.split("\n\n")[1],
    )
    add_study(p, required=True, note="in the new order")
    p.add_argument("--from", dest="source", required=True, help="storage URL holding the study (read only)")
    p.add_argument("--to", dest="target", required=True, help="storage URL to create the reordered study in")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    print(reorder_study(load_study_def(args.study), args.source, args.target))
    return 0
