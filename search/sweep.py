"""A strength sweep as finalists of a study (the budget rule, README "The tuned baselines, and what shipped").

A tuned baseline whose best strength moved far from the published one is swept at full fidelity in steps of at
most 2x. Each point (`mas@4`: the preset at 4 times its strength) becomes a trial of the baseline's study, scored
by the study's proxies like any trial, so that `promote` takes it with the warm starts and it competes for the
family's pick on the same full-fidelity value. Sweep trials are outside the search budget
(`records.counts_toward_budget`) and are never pruned: they are finalists by rule, not by proxy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import TrialState

from evaluation.errors import UserError
from search import interrupts
from search.objective import DesignFailed, make_objective
from search.prepare import prepare_study
from search.records import SWEEP_ATTR, quiet_optuna
from search.storage import check_writable, make_storage
from search.studies import StudyDef, point_of

LogFn = Callable[[str], None]


def sweep(
    study_def: StudyDef,
    storage_url: str,
    points: Sequence[str],
    *,
    data_dir: str | None = None,
    device: str = "auto",
    log: LogFn = print,
) -> dict[str, int]:
    """Add each point (NAME@X) the study lacks as a trial scored by its proxies; returns point -> trial number.

    A point whose design is already a complete trial of the study (a warm start, a searched trial, an earlier
    sweep) is that trial. A point whose trial failed is tried again on the next call.
    """
    import space  # deferred: it imports torch

    designs = {p: point_of(p, study_def.fixed, study_def.scale_center) for p in points}
    check_writable(storage_url)  # a committed reference study is evidence: never written
    with quiet_optuna():
        study = prepare_study(study_def, storage_url)
        storage = make_storage(storage_url)
        done: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            done.setdefault(json.dumps(t.user_attrs.get("design"), sort_keys=True), t.number)
        found: dict[str, int] = {}
        for name, design in designs.items():
            key = json.dumps(design.to_dict(), sort_keys=True)
            if key in done:
                found[name] = done[key]
                log(f"{name}: trial {done[key]} of study {study_def.name} already")
                continue
            waiting = [
                t
                for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                if t.user_attrs.get(SWEEP_ATTR) == name
            ]
            if not waiting:
                params = space.trial_params(design, study_def.fixed)
                study.enqueue_trial(params, user_attrs={"warm_start": name, SWEEP_ATTR: name})
        # Unpruned: a sweep point is a finalist by rule, whatever its proxy value.
        runner = optuna.load_study(
            study_name=study.study_name, storage=storage, pruner=optuna.pruners.NopPruner()
        )
        objective = make_objective(study_def, data_dir=data_dir, device=device)
        while True:
            waiting = [
                t
                for t in runner.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                if t.user_attrs.get(SWEEP_ATTR) in designs
            ]
            if not waiting:
                break
            trial = runner.ask()
            name = str(trial.user_attrs.get(SWEEP_ATTR) or "")
            if name not in designs:  # another enqueued trial came first: not this command's to run
                runner.tell(trial, state=TrialState.FAIL)
                raise UserError(
                    f"study {study_def.name} has enqueued trials of its own waiting (trial {trial.number}); run "
                    "its search (`make search` / `make campaign`) before a sweep"
                )
            log(f"{name}: trial {trial.number}, the study's proxies")
            try:
                value = objective(trial)
            except DesignFailed as exc:
                runner.tell(trial, state=TrialState.FAIL)
                log(f"{name}: trial {trial.number} failed: {exc}")
                continue
            except BaseException:
                with interrupts.deferred():
                    runner.tell(trial, state=TrialState.FAIL)  # tried again on the next call
                raise
            runner.tell(trial, value)
            found[name] = trial.number
            log(f"{name}: trial {trial.number} proxy value {value:.4f}")
    return found
