"""Replaying an unpruned study under candidate pruners: which trials would each have stopped, at what saving
(`bench/pruning_replay.py`).

The study must have run without pruning (`pruner.name = "none"`), so that every trial reported every step. For
each pruner setting the complete trials are fed again, in trial order, into an in-memory study through Optuna's
public `ask`/`report`/`should_prune`/`tell`: a trial the pruner stops is told as pruned with the steps it
reached, as a live study would have recorded it, and later decisions see it that way. Reported per setting: the
trials pruned, whether any of the study's top K would have been pruned (the pruner must never lose the best
designs), and the compute saved, counted in training iterations (each step is one context of one benchmark, of
the study's proxy iterations). The trials can be replayed as if their benchmarks had reported in another order
(`search.reorder`): what a study run in that order would have pruned, measured before it is started.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from clharness.protocol import PROTOCOLS
from optuna.trial import FrozenTrial, TrialState

from evaluation.errors import UserError
from search.reorder import reorder_trial
from search.storage import open_study
from search.studies import load_study_def


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


def replay_study(
    study_name: str,
    storage: str | None = None,
    *,
    top: int = 5,
    order_by: Sequence[str] | None = None,
    first: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Replay the unpruned complete trials of a study (name or file; `storage`: default its own) under every
    pruner setting, `log` the table, and return it as {"study", "order", "counts"}: per count of trials replayed
    (`first`, default all), the top `top` trials and one row per setting. `order_by`: the benchmark labels in the
    order to replay them in. A UserError when the study cannot be replayed so."""
    study_def = load_study_def(study_name)
    per_bench = [(b.steps, b.iters or PROTOCOLS[b.experiment].iters, 1) for b in study_def.benchmarks]
    labels = list(study_def.labels)
    order = list(range(len(labels)))
    if order_by:
        if sorted(order_by) != sorted(labels):
            raise UserError(f"--order must name each of the study's benchmarks once: {' '.join(labels)}")
        order = [labels.index(label) for label in order_by]
    study = open_study(study_def.name, storage)
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
        raise UserError("some complete trials did not report every step: replay needs an unpruned study")
    if first and max(first) > len(every):
        where = f" before trial {first_pruned}, the first pruned one" if first_pruned is not None else ""
        raise UserError(
            f"the study has {len(every)} unpruned complete trials{where}; --first asks for {max(first)}"
        )
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
    log(f"report order: {' '.join(labels[i] for i in order)}")
    counts = first or [len(every)]
    results: dict[int, dict[str, Any]] = {}
    for n in counts:
        trials = every[:n]
        ranked = sorted(trials, key=lambda t: -float(t.value or 0.0))
        best = {t.number for t in ranked[:top]}
        # The warm starts run first, inside every pruner's startup, so they are never at risk: the sampled
        # designs' own top K is the stricter test.
        sampled_top = {t.number for t in [t for t in ranked if "warm_start" not in t.user_attrs][:top]}
        log(
            f"first {len(trials)} complete trials of {study_def.name}: top {top} {sorted(best)}, "
            f"top {top} sampled (not warm starts) {sorted(sampled_top)}"
        )
        rows = []
        for setting in settings:
            res = replay(trials, setting, costs)
            lost, sampled_lost = sorted(best & set(res["pruned"])), sorted(sampled_top & set(res["pruned"]))
            rows.append(
                {"setting": setting.label(), **res, "top_lost": lost, "sampled_top_lost": sampled_lost}
            )
        results[len(trials)] = {"top": sorted(best), "sampled_top": sorted(sampled_top), "rows": rows}
    # One row per setting: per count, pruned / top lost / sampled top lost / saved; "safe" when it loses none
    # of either top at every count.
    log(f"{'pruner':50} " + " ".join(f"{f'{n} trials':>21}" for n in results) + "  safe")
    for i, setting in enumerate(settings):
        cells = [r["rows"][i] for r in results.values()]
        safe = all(not c["top_lost"] and not c["sampled_top_lost"] for c in cells)
        log(
            f"{setting.label():50} "
            + " ".join(
                f"{len(c['pruned']):>3} {len(c['top_lost'])}/{len(c['sampled_top_lost'])} {c['saved']:>6.1%}".rjust(
                    21
                )
                for c in cells
            )
            + ("  yes" if safe else "")
        )
    return {"study": study_def.name, "order": [labels[i] for i in order], "counts": results}
