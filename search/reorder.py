"""Reordering a study: a copy in a new storage with its trials' reports in the study file's benchmark order.

A pruner compares a running trial with finished ones step by step, so a study whose file changed its benchmark
order refuses to resume (`search.prepare.check_scoring`): old and new reports would mix. `reorder_study` moves such
a study to the new order instead (`python -m search reorder`): each complete trial's reports are recomputed
exactly (`reorder_trial`), into a new storage; the source is only read. Failed trials keep their attributes but
not their partial reports (which cannot be reordered; pruners read complete trials only); waiting trials are
copied as they are. A study with pruned or running trials is refused.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from evaluation.errors import UserError
from search import optuna_adapter
from search.storage import check_writable, display_url, make_storage, open_study
from search.studies import StudyDef


def reorder_trial(trial: FrozenTrial, sizes: Sequence[int], order: Sequence[int]) -> FrozenTrial:
    """The trial as it would have reported with its benchmarks in another order.

    The objective reports the finished benchmarks' contribution plus the running one's, so a benchmark's own
    series is the value minus the value at the previous benchmark's last step; its final contribution is where
    that series ends. `sizes` are the benchmarks' steps in the trial's report order, `order` the new order (their
    indices). Everything else of the trial is kept.
    """
    values = trial.intermediate_values
    if sorted(values) != list(range(1, sum(sizes) + 1)):
        raise ValueError(f"trial {trial.number} did not report each of its {sum(sizes)} steps once")
    starts = [0, *itertools.accumulate(sizes)]
    own = []
    for i, size in enumerate(sizes):
        before = values[starts[i]] if starts[i] else 0.0
        own.append([values[starts[i] + k] - before for k in range(1, size + 1)])
    new: dict[int, float] = {}
    offset = 0.0
    for i in order:
        new.update({len(new) + 1 + k: offset + v for k, v in enumerate(own[i])})
        offset += own[i][-1]
    return with_reports(trial, new)


def with_reports(trial: FrozenTrial, reports: dict[int, float]) -> FrozenTrial:
    """A copy of `trial` with `reports` as its intermediate values (and the id the storage gives it)."""
    return FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=trial.value,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=trial.user_attrs,
        system_attrs=trial.system_attrs,
        intermediate_values=reports,
        trial_id=0,  # add_trial gives the copy the storage's own id
    )


def new_order(study_def: StudyDef, recorded: Any) -> tuple[list[int], list[int], list[str]]:
    """Steps of each benchmark in the recorded order, the new order (indices into the recorded one) and the
    recorded benchmarks' labels. UserError when the scorings differ in more than the order."""
    now = json.loads(json.dumps(study_def.scoring))  # as the storage holds it (tuples become lists)
    if not isinstance(recorded, dict) or "benchmarks" not in recorded:
        raise UserError(f"study {study_def.name!r} records no scoring: nothing to compare its order with")
    old = recorded["benchmarks"]
    same_rest = {k: v for k, v in recorded.items() if k != "benchmarks"} == {
        k: v for k, v in now.items() if k != "benchmarks"
    }
    key = [json.dumps(b, sort_keys=True) for b in now["benchmarks"]]
    old_key = [json.dumps(b, sort_keys=True) for b in old]
    if not same_rest or sorted(key) != sorted(old_key) or len(set(key)) != len(key):
        raise UserError(
            f"study {study_def.name!r} was scored differently from {study_def.path}, not only in the order of "
            "its benchmarks: reorder moves a study to a new report order and nothing else"
        )
    sizes = [study_def.benchmarks[key.index(k)].steps for k in old_key]
    labels = [study_def.labels[key.index(k)] for k in old_key]
    return sizes, [old_key.index(k) for k in key], labels


def reorder_study(study_def: StudyDef, source_url: str, target_url: str) -> str:
    """Copy study `study_def.name` from `source_url` into `target_url` with its trials' reports in the study file's
    benchmark order; returns the line that says what was moved. The source is only read."""
    check_writable(target_url)
    source_storage = make_storage(source_url)
    source = open_study(study_def.name, source_storage)
    sizes, order, labels = new_order(study_def, source.user_attrs.get("scoring"))
    trials = source.get_trials(deepcopy=False)
    for state, why in (
        (TrialState.RUNNING, "stop its workers first"),
        (TrialState.PRUNED, "a pruned trial reported only some of its steps, which cannot be reordered"),
    ):
        if numbers := [t.number for t in trials if t.state == state]:
            raise UserError(f"study {study_def.name!r} has {state.name.lower()} trials {numbers}: {why}")
    target_storage = make_storage(target_url)
    if study_def.name in {s.study_name for s in target_storage.get_all_studies()}:
        raise UserError(f"{display_url(target_url)} already holds a study {study_def.name!r}")
    moved = [
        reorder_trial(t, sizes, order)
        if t.state == TrialState.COMPLETE
        else with_reports(t, {} if t.state == TrialState.FAIL else t.intermediate_values)
        for t in trials
    ]
    target = optuna_adapter.copy_study(source_storage, study_def.name, target_storage, moved)
    target.set_user_attr("scoring", study_def.scoring)
    target.set_user_attr("study_file", study_def.path.read_text(encoding="utf-8"))
    target.set_user_attr("benchmarks", list(study_def.labels))
    target.set_user_attr(
        "reordered", {"from": display_url(source_url), "order": labels, "trials": len(trials)}
    )
    counts = {
        s: sum(t.state == s for t in trials)
        for s in (TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING)
    }
    return (
        f"study {study_def.name}: {counts[TrialState.COMPLETE]} complete trials reordered from "
        f"{', '.join(labels)} to {', '.join(study_def.labels)}; {counts[TrialState.FAIL]} failed (their partial "
        f"reports dropped), {counts[TrialState.WAITING]} waiting; written to {display_url(target_url)}"
    )
