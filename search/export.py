"""Reading back what a trial scored: its stored module source, byte for byte."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.cli import UserError
from search.storage import open_study


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The complete trial with the highest value (UserError when none has completed)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(
            f"study {study.study_name!r} has no complete trial yet; run `python -m search run` first"
        )
    return max(complete, key=lambda t: (t.value if t.value is not None else float("-inf"), -t.number))


def get_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """Trial `number` of the study, or its best trial when `number` is None."""
    if number is None:
        return best_trial(study)
    trials = study.get_trials(deepcopy=False)
    matches = [t for t in trials if t.number == number]
    if not matches:
        raise UserError(f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1})")
    return matches[0]


def trial_source(study_name: str, storage: str | None = None, trial: int | None = None) -> str:
    """The exact module source that trial `trial` (default: the best) of the study scored."""
    study = open_study(study_name, storage)
    frozen = get_trial(study, trial)
    source = frozen.user_attrs.get("module_source")
    if not isinstance(source, str):
        raise UserError(
            f"trial {frozen.number} of study {study_name!r} stored no module source "
            f"({frozen.state.name.lower()} before its module was generated)"
        )
    return source
