"""What a study's records mean: the trials that count toward its budget, their ranking, its promoted results,
the names of its metrics, and Optuna's logging kept quiet around them.

`rank_trials` is the one ordering of trials in the project (status, progress lines, export, the tuned baselines
and candidate of the final evaluation, the top designs of the fidelity measurement all use it). `best_promoted` is
what export and `make regenerate` pick first: promotion (`search.promote`) stores each result as a study user
attribute `promoted:<fidelity>:<trial>`, and the dashboard shows them as trials of a companion study
`NAME:promoted` (`promoted_study_name`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluation.errors import UserError
from search.storage import open_study

# fail_kind user attribute: "design" = the design itself failed (it used its budget slot; not retried);
# "crash" = the worker was interrupted or its environment failed (re-queued; the slot stays open).
DESIGN = "design"
CRASH = "crash"

# The objective's name, shown by optuna-dashboard and `status`.
METRIC = "gap closed (proxy, weighted)"
# The name of the objective of studies scored before the gap-share objective (commit a606bce).
LEGACY_METRIC = "mean proxy accuracy"
# The objective of a promoted study: the same gap share, at the fidelity each trial was promoted at.
PROMOTED_METRIC = "gap closed (promoted, weighted)"

# Study user attributes `promoted:<fidelity>:<trial>` hold the promotion results.
PREFIX = "promoted:"
# A study file's name has no colon, so a companion study never has the name of a study of its own.
PROMOTED_SUFFIX = ":promoted"


# A trial a strength sweep added (`search.sweep`; the point's name): a finalist by rule, outside the search budget.
SWEEP_ATTR = "sweep"


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Whether a trial used one of the study's `n_trials`: complete, pruned, or failed by its own design; a
    strength sweep's trials never do."""
    if trial.user_attrs.get(SWEEP_ATTR):
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("fail_kind") == DESIGN


def rank_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The complete trials with a value, best first (highest value; the earlier trial on a tie)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(complete, key=lambda t: (-float(t.value or 0.0), t.number))


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best complete trial (UserError when none has completed)."""
    ranked = rank_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if not ranked:
        raise UserError(
            f"study {study.study_name!r} has no complete trial yet; run `python -m search run` first"
        )
    return ranked[0]


def metric_name(study: optuna.Study) -> str:
    """`METRIC`, or `LEGACY_METRIC` for a study whose trials were scored before the gap-share objective.

    The gap-share objective records its anchors on the study (`anchors:...`) before its first trial ends, so a
    study with completed trials and no anchors was scored by the earlier objective.
    """
    if any(key.startswith("anchors:") for key in study.user_attrs):
        return METRIC
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return LEGACY_METRIC if done else METRIC


def promoted(study: optuna.Study) -> list[dict]:
    """Every promotion result stored on the study."""
    return [v for k, v in study.user_attrs.items() if k.startswith(PREFIX) and isinstance(v, dict)]


def top_promoted(study: optuna.Study) -> list[dict]:
    """The promotion results at the highest fidelity run (most training iterations); empty without promotion."""
    entries = promoted(study)
    top = max((e["iterations"] for e in entries), default=None)
    return [e for e in entries if e["iterations"] == top]


def best_promoted(study: optuna.Study) -> dict | None:
    """The best result at the highest fidelity run (most training iterations), or None without promotion."""
    return max(top_promoted(study), key=lambda e: (e["value"], -e["trial"]), default=None)


def promoted_study_name(name: str) -> str:
    """The companion study of study `name` that holds its promoted trials: `NAME:promoted`."""
    return f"{name}{PROMOTED_SUFFIX}"


def rank_promoted(urls: Mapping[str, str]) -> list[tuple[str, dict]]:
    """The studies (name -> storage URL) that have promoted trials, each with its `best_promoted` result, best
    first (on a tie, the earlier in `urls`). A UserError when their best results are at different fidelities:
    those are not on one scale."""
    found = [(name, best_promoted(open_study(name, url))) for name, url in urls.items()]
    ranked = [(name, entry) for name, entry in found if entry is not None]
    fidelities = sorted({str(entry["fidelity"]) for _, entry in ranked})
    if len(fidelities) > 1:
        where = ", ".join(f"{name} at {entry['fidelity']}" for name, entry in ranked)
        raise UserError(
            f"the studies' best promotions are at different fidelities ({where}); promote them at one"
        )
    return sorted(ranked, key=lambda item: -float(item[1]["value"]))


def best_promoted_study(urls: Mapping[str, str], log: Callable[[str], None] = print) -> str:
    """The study whose best promoted score is highest (on a tie the first named); every one must be promoted.
    `log` hears the ranking in one line."""
    ranked = rank_promoted(urls)
    missing = [name for name in urls if name not in dict(ranked)]
    if missing:
        raise UserError(
            f"study {', '.join(missing)} has no promoted trial; promote every study compared first "
            f"(`make promote STUDY={missing[0]} TOP=3`)"
        )
    log(
        "best promoted (full fidelity, validation split): "
        + ", ".join(f"{name} trial {entry['trial']} {float(entry['value']):.4f}" for name, entry in ranked)
    )
    return ranked[0][0]


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO logs duplicate our progress lines."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)
