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
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState


@dataclass(frozen=True)
class Setting:
    """One pruner configuration to replay."""

    name: str  # "median" or "percentile"
    percentile: float
    n_startup_trials: int
    n_warmup_steps: int
    interval_steps: int = 1

    def label(self) -> str:
        """Short description for the table."""
        every = f" every {self.interval_steps}" if self.interval_steps > 1 else ""
        return (
            f"{self.name} keep {self.percentile:g}% startup {self.n_startup_trials} warmup {self.n_warmup_steps}"
            + every
        )

    def build(self) -> optuna.pruners.BasePruner:
        """The Optuna pruner (median is the 50th percentile)."""
        return optuna.pruners.PercentilePruner(
            self.percentile,
            n_startup_trials=self.n_startup_trials,
            n_warmup_steps=self.n_warmup_steps,
            interval_steps=self.interval_steps,
        )


def step_costs(study_def_benchmarks: Sequence[tuple[int, int, int]]) -> list[int]:
    """Training iterations of each step: (contexts, iters, seeds) per benchmark, in report order."""
    costs: list[int] = []
    for contexts, iters, seeds in study_def_benchmarks:
        costs += [iters] * (contexts * seeds)
    return costs


def replay(trials: Sequence[FrozenTrial], setting: Setting, costs: Sequence[int]) -> dict:
    """Replay complete trials under one pruner setting; returns what it pruned and the iterations it saved."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=setting.build())
    pruned: dict[int, int] = {}
    spent = 0
    for t in trials:
        live = study.ask()
        steps = sorted(t.intermediate_values)
        for step in steps:
            live.report(t.intermediate_values[step], step)
            spent += costs[step - 1]
            if step < steps[-1] and live.should_prune():
                pruned[t.number] = step
                study.tell(live, state=TrialState.PRUNED)
                break
        else:
            study.tell(live, t.value)
    total = sum(costs) * len(trials)
    return {"pruned": pruned, "spent": spent, "total": total, "saved": 1.0 - spent / total}


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    from search.reorder import reorder_trial
    from search.storage import open_study
    from search.studies import load_study_def

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

    from clharness.protocol import PROTOCOLS

    study_def = load_study_def(args.study)
    per_bench = [(b.steps, b.iters or PROTOCOLS[b.experiment].iters, 1) for b in study_def.benchmarks]
    labels = list(study_def.labels)
    order = list(range(len(labels)))
    if args.order:
        if sorted(args.order) != sorted(labels):
            print(f"error: --order must name each of the study's benchmarks once: {' '.join(labels)}")
            return 2
        order = [labels.index(label) for label in args.order]
    study = open_study(study_def.name, args.storage)
    trials = study.get_trials(deepcopy=False)
    # Once a pruner ran, the complete trials are its survivors: only the trials before the first pruned one
    # are an unpruned sample.
    first_pruned = min((t.number for t in trials if t.state == TrialState.PRUNED), default=None)
    every = sorted(
        (
            t
            for t in trials
            if t.state == TrialState.COMPLETE
            and t.value is not None
            and (first_pruned is None or t.number < first_pruned)
        ),
        key=lambda t: t.number,
    )
    if any(len(t.intermediate_values) != len(step_costs(per_bench)) for t in every):
        print("error: some complete trials did not report every step: replay needs an unpruned study")
        return 2
    if args.first and max(args.first) > len(every):
        where = f" before trial {first_pruned}, the first pruned one" if first_pruned is not None else ""
        print(
            f"error: the study has {len(every)} unpruned complete trials{where}; --first asks for {max(args.first)}"
        )
        return 2
    every = [reorder_trial(t, [n for n, _, _ in per_bench], order) for t in every]
    per_bench = [per_bench[i] for i in order]
    costs = step_costs(per_bench)
    # Checks at every context from an early step, or only where a benchmark ends (its whole proxy score known):
    # once after the first, once after the second, or at each end when the benchmarks are equally long.
    ends = list(itertools.accumulate(n for n, _, _ in per_bench))[:-1]
    schedules = [(2, 1), (5, 1)] + [(end, len(costs)) for end in ends]
    if len(ends) > 1 and all(b - a == ends[0] for a, b in zip([0, *ends], ends, strict=False)):
        schedules.append((ends[0], ends[0]))
    settings = [
        Setting(name, p, startup, warmup, interval)
        # Optuna's percentile is the share kept: 75 prunes the bottom 25 %, 90 the bottom 10 %
        for name, p in (("median", 50.0), ("percentile", 75.0), ("percentile", 90.0))
        for startup in (5, 10)
        for warmup, interval in schedules
    ]
    print(f"report order: {' '.join(labels[i] for i in order)}")
    counts = args.first or [len(every)]
    results = {}
    for n in counts:
        trials = every[:n]
        ranked = sorted(trials, key=lambda t: -float(t.value or 0.0))
        top = {t.number for t in ranked[: args.top]}
        # The warm starts run first, inside every pruner's startup, so they are never at risk: the sampled
        # designs' own top K is the stricter test.
        sampled_top = {t.number for t in [t for t in ranked if "warm_start" not in t.user_attrs][: args.top]}
        print(
            f"first {len(trials)} complete trials of {study_def.name}: top {args.top} {sorted(top)}, "
            f"top {args.top} sampled (not warm starts) {sorted(sampled_top)}"
        )
        rows = []
        for setting in settings:
            res = replay(trials, setting, costs)
            lost, sampled_lost = sorted(top & set(res["pruned"])), sorted(sampled_top & set(res["pruned"]))
            rows.append(
                {"setting": setting.label(), **res, "top_lost": lost, "sampled_top_lost": sampled_lost}
            )
        results[len(trials)] = {"top": sorted(top), "sampled_top": sorted(sampled_top), "rows": rows}
    # One row per setting: per count, pruned / top lost / sampled top lost / saved; "safe" when it loses none
    # of either top at every count.
    print(f"{'pruner':50} " + " ".join(f"{f'{n} trials':>21}" for n in results) + "  safe")
    for i, setting in enumerate(settings):
        cells = [r["rows"][i] for r in results.values()]
        safe = all(not c["top_lost"] and not c["sampled_top_lost"] for c in cells)
        print(
            f"{setting.label():50} "
            + " ".join(
                f"{len(c['pruned']):>3} {len(c['top_lost'])}/{len(c['sampled_top_lost'])} {c['saved']:>6.1%}".rjust(
                    21
                )
                for c in cells
            )
            + ("  yes" if safe else "")
        )
    if args.json:
        summary = {"study": study_def.name, "order": [labels[i] for i in order], "counts": results}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
