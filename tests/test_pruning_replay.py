"""The pruning replay (bench/pruning_replay.py): decisions in trial order as a live study would make them, and the
compute they save."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import search.pruning_replay as replay_mod
from evaluation.errors import UserError


def _trial(number: int, slope: float) -> optuna.trial.FrozenTrial:
    values = {step: slope * step for step in range(1, 5)}  # rises through the trial, like the objective
    trial = create_trial(
        params={"x": slope},
        distributions={"x": FloatDistribution(0.0, 10.0)},
        value=values[4],
        intermediate_values=values,
        state=TrialState.COMPLETE,
    )
    trial.number = number
    return trial


def test_replay_prunes_the_weak_late_trials_and_counts_the_iterations_saved() -> None:
    slopes = [1.0, 2.0, 3.0, 0.5, 4.0, 0.1]
    trials = [_trial(i, s) for i, s in enumerate(slopes)]
    costs = replay_mod.step_costs([(2, 100, 1), (2, 10, 1)])  # two benchmarks: 100 and 10 iterations a step
    assert costs == [100, 100, 10, 10]
    setting = replay_mod.Setting("median", 50.0, n_startup_trials=3, n_warmup_steps=1)
    res = replay_mod.replay(trials, setting, costs)
    # The first three trials are the startup; from step 1 on (Optuna prunes at steps >= n_warmup_steps) trial 3
    # (slope 0.5) is below the median and so is trial 5 (0.1); trial 4 (the best) runs to the end.
    assert res["pruned"] == {3: 1, 5: 1}
    assert res["total"] == 6 * 220 and res["spent"] == 6 * 220 - 2 * 120
    assert abs(res["saved"] - 240 / 1320) < 1e-12
    # No warm-up beyond the last step: nothing can be pruned.
    none = replay_mod.replay(trials, replay_mod.Setting("median", 50.0, 3, 4), costs)
    assert none["pruned"] == {} and none["saved"] == 0.0


def test_a_pruner_that_checks_only_where_a_benchmark_ends() -> None:
    """warmup 2 with interval 2 on two 2-context benchmarks: the one check is at step 2, where the first
    benchmark's score is whole (step 4 is the last one and always paid for)."""
    slopes = [1.0, 2.0, 3.0, 0.5, 4.0, 0.1]
    trials = [_trial(i, s) for i, s in enumerate(slopes)]
    costs = replay_mod.step_costs([(2, 100, 1), (2, 10, 1)])
    res = replay_mod.replay(trials, replay_mod.Setting("median", 50.0, 3, 2, interval_steps=2), costs)
    assert res["pruned"] == {3: 2, 5: 2}
    assert res["spent"] == 6 * 220 - 2 * 20  # each pruned trial skipped the second benchmark
    assert "every 2" in replay_mod.Setting("median", 50.0, 3, 2, interval_steps=2).label()


def test_the_studys_pruner_takes_the_interval() -> None:
    from search.sampling import make_pruner
    from search.studies import PrunerDef

    pruner = make_pruner(PrunerDef(name="percentile", n_warmup_steps=10, interval_steps=10), 25)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):  # the startup trials, reporting at every step
        trial = study.ask()
        for step in range(1, 26):
            trial.report(value * step, step)
        study.tell(trial, value * 25)
    weak = study.ask()
    checks = []
    for step in range(1, 21):
        weak.report(0.0, step)
        if weak.should_prune():
            checks.append(step)
    assert checks == [10, 20]  # only where a benchmark ends


def test_the_replay_stops_at_the_first_pruned_trial(tmp_path: Path) -> None:
    """Once a pruner ran, the complete trials are its survivors: only those before the first pruned trial are
    replayed, and asking for more is refused."""
    study_file = tmp_path / "r.toml"
    study_file.write_text(
        'n_trials = 5\n[sampler]\nname = "random"\n[pruner]\nname = "none"\n'
        '[[benchmark]]\nexperiment = "splitMNIST"\niters = 10\ncontexts = 4\n'
    )
    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = optuna.create_study(study_name="r", storage=url, direction="maximize")
    for number, slope in enumerate([1.0, 2.0, 3.0, 0.1, 4.0]):
        trial = _trial(number, slope)
        if number == 3:  # pruned after two steps
            trial = create_trial(
                params=trial.params,
                distributions=trial.distributions,
                intermediate_values={1: 0.1, 2: 0.2},
                state=TrialState.PRUNED,
            )
        study.add_trial(trial)
    lines: list[str] = []
    summary = replay_mod.replay_study(str(study_file), url, top=1, log=lines.append)
    assert "first 3 complete trials of r: top 1 [2]," in "\n".join(
        lines
    )  # trial 4, after the pruned one, is out
    assert list(summary["counts"]) == [3] and summary["counts"][3]["top"] == [2]
    with pytest.raises(
        UserError, match="3 unpruned complete trials before trial 3, the first pruned one; --first"
    ):
        replay_mod.replay_study(str(study_file), url, first=[4], log=lines.append)
