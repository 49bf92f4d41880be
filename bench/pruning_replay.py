"""Replay an unpruned study under candidate pruners: which trials would each have stopped, at what saving.

The study must have run without pruning (`pruner.name = "none"`), so that every trial reported every step. For
each pruner setting the complete trials are fed again, in trial order, into an in-memory study through Optuna's
public `ask`/`report`/`should_prune`/`tell`: a trial the pruner stops is told as pruned with the steps it
reached, as a live study would have recorded it, and later decisions see it that way. Reported per setting: the
trials pruned, whether any of the study's top K would have been pruned (the pruner must never lose the best
designs), and the compute saved, counted in training iterations (each step is one context of one benchmark, of
the study's proxy iterations).

    python bench/pruning_replay.py --study campaign --storage sqlite:///studies/campaign/campaign.db --top 5 \
        --json results/fidelity/pruning_replay.json [--order permMNIST_n500 permMNIST_lr splitMNIST] [--first N]

`--order` replays the same trials as if their benchmarks had reported in another order (`search.reorder`,
which can also move a study to that order): what a study run in that order would have pruned, measured before it
is started.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    from evaluation.errors import UserError
    from search.pruning_replay import replay_study

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", help="storage URL (default: the study's own)")
    parser.add_argument("--top", type=int, default=5, help="the best trials that must survive (default 5)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--order", nargs="+", metavar="LABEL", help="replay as if the benchmarks had reported in this order"
    )
    parser.add_argument(
        "--first",
        type=int,
        nargs="+",
        metavar="N",
        help="replay the first N complete trials, for each N given (does a verdict hold as the study grows?)",
    )
    args = parser.parse_args(argv)
    try:
        summary = replay_study(args.study, args.storage, top=args.top, order_by=args.order, first=args.first)
    except UserError as exc:
        print(f"error: {exc}")
        return 2
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
