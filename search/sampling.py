"""How a study proposes and stops trials: its sampler, seeded per trial, and its pruner.

Each trial is sampled with a seed of its own (`PerTrialSeedSampler`), so no process, worker or resume proposes a
design again from the same seed. A pruner's steps are contexts counted across the study's benchmarks.
"""

from __future__ import annotations

import hashlib
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import optuna_adapter
from search.studies import PrunerDef, SamplerDef


def trial_seed(seed: int | None, number: int) -> int | None:
    """The sampler seed of trial `number`: derived from the study file's `seed`; None (fresh entropy) without one."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"search-sampler:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")  # numpy's RandomState takes < 2**32


def base_sampler(d: SamplerDef, seed: int | None) -> optuna.samplers.BaseSampler:
    """The study's sampler with one seed."""
    if d.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with optuna_adapter.no_experimental_warning():
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=d.n_startup_trials,
            multivariate=d.multivariate,
            # The space is conditional (a field exists only where it acts): group=True models each set of
            # co-occurring fields jointly instead of dropping to independent sampling.
            group=d.multivariate,
            constant_liar=d.constant_liar,
        )


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """The study's sampler, made afresh for every trial with the seed `trial_seed(seed, trial number)`.

    A sampler seeded once per process proposes the same sequence on every start: a resumed run, or a second
    process joining the study, ran designs again (measured: 6 trials held 5 distinct designs; two processes
    with 2 workers each duplicated 2 of 12). Trial numbers are unique within a study, so no two trials draw
    from the same seed whichever process, worker or resume runs them; with a `seed` in the study file trial n
    is still reproducible (the same seed and, with one worker, the same history), without one every trial
    draws fresh entropy. The samplers keep no state between trials besides their random generator (TPE reads
    the history from the storage), so nothing is lost by making them per trial.
    """

    def __init__(self, d: SamplerDef) -> None:
        self._def = d
        self._inner = base_sampler(d, trial_seed(d.seed, -1))

    def __str__(self) -> str:
        return f"PerTrialSeedSampler({self._inner})"

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = base_sampler(self._def, trial_seed(self._def.seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(d: SamplerDef) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per trial (`PerTrialSeedSampler`)."""
    return PerTrialSeedSampler(d)


def make_pruner(d: PrunerDef, n_steps: int) -> optuna.pruners.BasePruner:
    """The study's pruner; steps are contexts counted across the study's benchmarks."""
    if d.name == "none":
        return optuna.pruners.NopPruner()
    if d.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=d.n_startup_trials,
            n_warmup_steps=d.n_warmup_steps,
            interval_steps=d.interval_steps,
        )
    if d.name == "percentile":
        return optuna.pruners.PercentilePruner(
            d.percentile,
            n_startup_trials=d.n_startup_trials,
            n_warmup_steps=d.n_warmup_steps,
            interval_steps=d.interval_steps,
        )
    if d.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=d.min_resource, reduction_factor=d.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=d.min_resource, max_resource=n_steps, reduction_factor=d.reduction_factor
    )
