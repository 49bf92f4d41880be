"""Are random points of the space plausible regularizers? The figure of `bench/random_designs.py`: the share of
random designs within a margin of the best preset, on a study's proxies (issue 9 asks for at least a quarter within
0.01 on the Permuted-MNIST proxy).

The random designs are drawn by the bench script, or taken from a study of today's space (`study_randoms`): its
first sampled trials, which the study's sampler drew at random and scored on the same proxies.
"""

from __future__ import annotations

import statistics
from typing import Any

from optuna.trial import TrialState

from evaluation.errors import UserError
from search.objective import chance_accuracy
from search.status import trial_origins
from search.storage import default_storage_url, open_study
from search.studies import load_study_def


def study_randoms(name: str, storage: str | None, n: int, labels: list[str]) -> dict[str, dict[str, float]]:
    """`random_<k>` -> {proxy label: score} of the study's first `n` sampled (not warm-start) trials, checked to
    be the sampler's random start; a design that failed (diverged) scores chance on every proxy."""

    study_def = load_study_def(name)
    benches = {b.label: b for b in study_def.benchmarks}
    study = open_study(study_def.name, storage or default_storage_url(study_def.name))
    trials = study.get_trials(deepcopy=False)
    startup = study_def.sampler.n_startup_trials - len(study_def.warm_start)
    if study_def.sampler.name == "tpe" and startup < n:
        raise UserError(f"study {name} samples only {startup} trials at random before TPE; asked for {n}")
    origins = trial_origins(trials, study_def)
    first = sorted((t for t in trials if origins.get(t.number) == "random start"), key=lambda t: t.number)[:n]
    if len(first) < n or any(t.state not in (TrialState.COMPLETE, TrialState.FAIL) for t in first):
        raise UserError(f"study {name}: its first {n} sampled trials have not all finished unpruned")
    return {
        f"random_{k}": {
            label: float(t.user_attrs[f"proxy_{label}"])
            if t.state == TrialState.COMPLETE
            else chance_accuracy(benches[label].experiment)
            for label in labels
        }
        for k, t in enumerate(first)
    }


def summarize(scores: dict[str, dict[str, float]], labels: list[str], margin: float) -> dict[str, Any]:
    """Share of random designs within `margin` of the best preset: on the mean over the proxies, and on each."""
    complete = {k: v for k, v in scores.items() if set(v) == set(labels)}
    mean = {k: statistics.fmean(v[label] for label in labels) for k, v in complete.items()}
    out: dict[str, Any] = {}
    # the mean counts the designs scored on every proxy; each proxy, every design scored on it
    each = [(label, {k: v[label] for k, v in scores.items() if label in v}) for label in labels]
    for what, score in [("mean", mean), *each]:
        presets = {k: v for k, v in score.items() if k.startswith("preset_")}
        randoms = {k: v for k, v in score.items() if k.startswith("random_")}
        if not presets or not randoms:
            continue
        best = max(presets, key=presets.__getitem__)
        close = sorted(k for k, v in randoms.items() if v >= presets[best] - margin)
        out[what] = {
            "best_preset": best,
            "best_preset_score": presets[best],
            "presets": presets,
            "within_margin": len(close),
            "share_within_margin": len(close) / len(randoms),
            "random_median": statistics.median(randoms.values()),
            "random_scored": len(randoms),
            "close": close,
        }
    return out
