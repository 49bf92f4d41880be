"""A strength sweep's points become trials of the study: scored by its proxies, unpruned, outside the budget,
taken by promote as warm starts; a point the study already has is that trial, and a second call adds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState
from test_search_e2e import tiny_study

import space
from cli.main import main as search_main
from evaluation.errors import UserError
from search.records import SWEEP_ATTR, counts_toward_budget
from search.status import format_status
from search.storage import open_study
from search.studies import load_study_def, point_of
from search.sweep import sweep
from search.workers import run_study


def test_named_points_are_the_preset_at_a_multiple_of_its_strength() -> None:
    assert space.named("mas@4") == space.PRESETS["mas"].replace(reg_strength_scale=4 * 2e-5)
    assert space.named("mas") == space.PRESETS["mas"]
    for bad in ("nope@2", "mas@0", "mas@-1", "mas@x", "mas@inf"):
        with pytest.raises(ValueError):
            space.named(bad)
    with pytest.raises(UserError, match="not a point of the study's space"):
        point_of("ewc@1000", {}, 1.0)  # outside the searched decades around the scale


def test_a_sweep_adds_its_points_as_unpruned_trials_outside_the_budget(
    tmp_path: Path, mnist_root: Path, capsys: pytest.CaptureFixture
) -> None:
    study_def = load_study_def(tiny_study(tmp_path, "tiny_sweep", 2, ["ewc"]))
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    assert run_study(study_def, url, data_dir=str(mnist_root), device="cpu") == 0
    lines: list[str] = []
    found = sweep(study_def, url, ["ewc", "ewc@4"], data_dir=str(mnist_root), device="cpu", log=lines.append)
    trials = {t.number: t for t in open_study("tiny_sweep", url).get_trials()}
    assert found["ewc"] == 0 and "ewc: trial 0 of study tiny_sweep already" in lines  # the warm start
    new = trials[found["ewc@4"]]
    assert new.state == TrialState.COMPLETE and new.value is not None
    assert new.user_attrs[SWEEP_ATTR] == "ewc@4" and new.user_attrs["warm_start"] == "ewc@4"
    assert new.user_attrs["design"] == space.named("ewc@4").to_dict()
    assert not counts_toward_budget(new)
    assert sum(map(counts_toward_budget, trials.values())) == 2  # the study's budget, untouched
    status = format_status(open_study("tiny_sweep", url), 2, study_def=study_def)
    assert "study tiny_sweep: 2/2 trials counted toward the budget" in status
    assert any(
        line.split()[:2] == ["strength", "sweep"] and line.split()[2] == "1" for line in status.splitlines()
    )
    # Again, through the command line: nothing new.
    argv = ["sweep", "--study", str(tmp_path / "tiny_sweep.toml"), "--storage", url, "--points", "ewc@4"]
    argv += ["--data-dir", str(mnist_root), "--device", "cpu"]
    assert search_main(argv) == 0
    assert f"ewc@4 trial {new.number}" in capsys.readouterr().out
    assert len(open_study("tiny_sweep", url).get_trials()) == len(trials)
