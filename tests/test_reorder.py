"""`python -m search reorder`: a study moved to another report order keeps every trial, its value, attributes and
dashboard note, with its reports recomputed exactly as the new order would have made them; anything more than
an order change is refused, and the source is never written."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from test_dashboard import study_detail

from cli.main import main
from evaluation.errors import UserError
from search.prepare import prepare_study
from search.reorder import reorder_trial
from search.storage import open_study
from search.studies import load_study_def

SPLIT = """\
[[benchmark]]
name = "s"
experiment = "splitMNIST"
iters = 10
contexts = 2
weight = {weight}
"""
PERM = """\
[[benchmark]]
name = "p"
experiment = "permMNIST"
iters = 10
contexts = 3
"""


def study_file(path: Path, *benchmarks: str) -> Path:
    head = textwrap.dedent(
        """\
        n_trials = 10
        [sampler]
        name = "random"
        [pruner]
        name = "none"
        """
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n".join(benchmarks))
    return path


# Each trial's own series per benchmark (its contribution after each of its contexts).
OWN = {0: ([0.10, 0.20], [0.05, 0.10, 0.30]), 1: ([0.15, 0.25], [0.02, 0.20, 0.40])}


def old_study(tmp_path: Path) -> str:
    """Reports in the order s, p: two complete trials, one failed midway, one waiting; each with a note."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    study = prepare_study(load_study_def(study_file(tmp_path / "sp.toml", SPLIT.format(weight=1), PERM)), url)
    for n, (s, p) in OWN.items():
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("scores", {"s": n})
        optuna_dashboard.save_note(trial, f"note of trial {n}")
        for step, value in enumerate([*s, *(s[-1] + v for v in p)], start=1):
            trial.report(value, step)
        study.tell(trial, s[-1] + p[-1])
    failed = study.ask()
    failed.report(0.1, 1)
    study.tell(failed, state=TrialState.FAIL)
    study.enqueue_trial({"x": 0.5})
    return url


def test_reorder_recomputes_the_reports_and_keeps_everything_else(tmp_path: Path, capsys) -> None:
    old = old_study(tmp_path)
    digest = hashlib.sha256((tmp_path / "old.db").read_bytes()).hexdigest()
    ps = study_file(tmp_path / "ps" / "sp.toml", PERM, SPLIT.format(weight=1))  # the same study, p first
    new = f"sqlite:///{tmp_path / 'new.db'}"
    # the old storage refuses the new order, and says how to move the study
    with pytest.raises(UserError, match=r"another order.*python -m search reorder --study sp"):
        prepare_study(load_study_def(ps), old)

    assert main(["reorder", "--study", str(ps), "--from", old, "--to", new]) == 0
    assert "2 complete trials reordered from s, p to p, s; 1 failed" in capsys.readouterr().out
    assert hashlib.sha256((tmp_path / "old.db").read_bytes()).hexdigest() == digest  # source not written
    before, after = open_study("sp", old).trials, open_study("sp", new).trials
    assert [(t.number, t.state, t.value, t.params, t.user_attrs) for t in after] == [
        (t.number, t.state, t.value, t.params, t.user_attrs) for t in before
    ]
    for n, (s, p) in OWN.items():
        expected = [*p, *(p[-1] + v for v in s)]
        assert list(after[n].intermediate_values) == [1, 2, 3, 4, 5]
        assert list(after[n].intermediate_values.values()) == pytest.approx(expected, abs=1e-12)
        assert after[n].intermediate_values[5] == pytest.approx(after[n].value)
        assert after[n].datetime_start == before[n].datetime_start
    assert after[2].intermediate_values == {}  # a failed trial's partial reports cannot be reordered
    assert after[3].state == TrialState.WAITING and after[3].system_attrs == before[3].system_attrs
    detail = study_detail(optuna_dashboard.wsgi(new), "sp")
    assert [t["note"]["body"] for t in detail["trials"][:2]] == ["note of trial 0", "note of trial 1"]
    moved = open_study("sp", new)
    assert {k: moved.user_attrs["reordered"][k] for k in ("order", "trials")} == {
        "order": ["s", "p"],
        "trials": 4,
    }
    assert moved.user_attrs["benchmarks"] == ["p", "s"]
    prepare_study(load_study_def(ps), new)  # the new order resumes there


def test_reorder_refuses_what_it_cannot_do(tmp_path: Path, capsys) -> None:
    old = old_study(tmp_path)
    new = f"sqlite:///{tmp_path / 'new.db'}"
    reweighted = study_file(tmp_path / "w" / "sp.toml", PERM, SPLIT.format(weight=0.5))
    assert main(["reorder", "--study", str(reweighted), "--from", old, "--to", new]) == 2
    assert "not only in the order of its benchmarks" in capsys.readouterr().err
    ps = study_file(tmp_path / "ps" / "sp.toml", PERM, SPLIT.format(weight=1))
    assert main(["reorder", "--study", str(ps), "--from", old, "--to", new]) == 0
    assert main(["reorder", "--study", str(ps), "--from", old, "--to", new]) == 2
    assert "already holds a study 'sp'" in capsys.readouterr().err
    study = optuna.load_study(study_name="sp", storage=old)
    trial = study.ask()
    trial.report(0.1, 1)
    study.tell(trial, state=TrialState.PRUNED)
    assert (
        main(["reorder", "--study", str(ps), "--from", old, "--to", f"sqlite:///{tmp_path / 'n2.db'}"]) == 2
    )
    assert "has pruned trials [3]" in capsys.readouterr().err  # the waiting trial, asked and pruned


def test_reorder_gives_the_values_the_other_benchmark_order_would_have_reported() -> None:
    """Benchmark A (2 steps) then B (2 steps), each reporting finished contributions plus its running one:
    A's own series 0.1, 0.3 and B's 0.2, 0.5. Reported B first, the trial would have shown 0.2, 0.5, 0.6, 0.8."""
    trial = create_trial(
        params={"x": 1.0},
        distributions={"x": FloatDistribution(0.0, 10.0)},
        value=0.8,
        intermediate_values={1: 0.1, 2: 0.3, 3: 0.5, 4: 0.8},
        state=TrialState.COMPLETE,
    )
    trial.number = 7
    moved = reorder_trial(trial, [2, 2], [1, 0])
    assert moved.number == 7 and moved.value == 0.8
    assert moved.intermediate_values == pytest.approx({1: 0.2, 2: 0.5, 3: 0.6, 4: 0.8})
    assert reorder_trial(trial, [2, 2], [0, 1]).intermediate_values == pytest.approx(
        trial.intermediate_values
    )
