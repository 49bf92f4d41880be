"""No code from a study's storage runs (issue 32, item 6): a trial's module is generated again from its design
and must be the module the trial stored; an edited study is refused in one line by export (and so `make
regenerate`), promote, final-eval's tuned baselines and the fidelity's top designs, and nothing of it runs."""

from __future__ import annotations

import json
import runpy
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from search_fakes import generated

import search.storage as storage
from cli.main import main as search_main
from evaluation.cache import sha256_text
from evaluation.errors import UserError
from search.export import ModuleMismatch, get_trial, study_modules, top_designs, trial_module, trial_source
from search.legacy_modules import legacy_modules
from search.promote import promote
from search.records import rank_trials
from search.studies import load_study_def, repo_root

ROOT = repo_root()
COMMITTED = ROOT / "studies" / "campaign" / "si.db"  # a small committed study, promoted
LEGACY = ROOT / "studies" / "ewc.db"  # written by an earlier generator


def copy_of(db: Path, tmp_path: Path) -> str:
    """A copy of a committed study file (never the file itself); its URL."""
    target = tmp_path / db.name
    shutil.copy(db, target)
    return f"sqlite:///{target}"


def planted(source: str, marker: Path) -> str:
    """`source` with a line that creates `marker` when the module is imported."""
    return source + f"\nopen({str(marker)!r}, 'w').close()\n"


def tamper(url: str, trial: FrozenTrial, key: str, value: object) -> None:
    """Set user attribute `key` of `trial` in the SQLite file behind `url`, as an editor of the file would."""
    db = storage.sqlite_path(url)
    assert db is not None
    with sqlite3.connect(db) as con:
        changed = con.execute(
            "UPDATE trial_user_attributes SET value_json = ? WHERE trial_id = ? AND key = ?",
            (json.dumps(value), trial._trial_id, key),
        ).rowcount
        if not changed:
            con.execute(
                "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
                (trial._trial_id, key, json.dumps(value)),
            )
    con.close()


def test_export_refuses_an_edited_module_of_a_committed_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The best trial (promoted: what `make regenerate` writes) and a proxy-only trial, each edited in a copy of
    a committed study: export says so in one line, exit 2, and writes nothing; untouched trials still export."""
    url = copy_of(COMMITTED, tmp_path)
    study = storage.open_study("si", url)
    best = get_trial(study)
    other = next(t for t in rank_trials(study.trials) if t.number != best.number)
    out = tmp_path / "custom_regularization.py"
    assert search_main(["export", "--study", "si", "--storage", url, "--out", str(out)]) == 0
    shipped = out.read_text()
    out.unlink()
    marker = tmp_path / "ran"
    for trial, extra in ((best, []), (other, ["--trial", str(other.number)])):
        tamper(url, trial, "module_source", planted(str(trial.user_attrs["module_source"]), marker))
        argv = ["export", "--study", "si", "--storage", url, *extra, "--out", str(out)]
        assert search_main(argv) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: trial {trial.number} of study 'si': refused, its stored module"), line
        assert "nothing of it is run or exported" in line
        assert not out.exists()
    assert not marker.exists()
    third = next(t for t in rank_trials(study.trials) if t.number not in (best.number, other.number))
    assert trial_module(third, "si") == third.user_attrs["module_source"]
    assert (
        search_main(
            ["export", "--study", "si", "--storage", url, "--trial", str(third.number), "--out", str(out)]
        )
        == 0
    )
    assert shipped.startswith('"""')  # the untouched copy exported a generated module


def test_promote_refuses_an_edited_trial_before_anything_runs(tmp_path: Path) -> None:
    """Without the check, the edited module would be run (here: imported by the fake run) and create a file."""
    url = copy_of(COMMITTED, tmp_path)
    study = storage.open_study("si", url)
    best = rank_trials(study.trials)[0]
    marker = tmp_path / "ran"
    tamper(url, best, "module_source", planted(str(best.user_attrs["module_source"]), marker))
    runs: list[str] = []

    def run(hooks_path: str, cfg: object, progress: bool = False, **kw: object) -> dict:
        runs.append(hooks_path)
        runpy.run_path(hooks_path)  # what the harness does with a module: import it
        return {"average_accuracy": 0.5, "data_source": "torchvision"}

    with pytest.raises(ModuleMismatch, match=f"trial {best.number} of study 'si': refused"):
        promote(
            storage.open_study("si", url),
            load_study_def(ROOT / "studies" / "si.toml"),
            storage=storage.make_storage(url),
            top=1,
            out_dir=tmp_path / "fidelity",
            run_fn=run,
            joint_fn=lambda cfg, progress=False: run("", cfg),
            log=lambda line: None,
        )
    assert runs == [] and not marker.exists()
    assert not (tmp_path / "fidelity" / "runs").exists()


def test_final_eval_and_fidelity_refuse_an_edited_study_and_never_skip_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """final-eval's tuned baseline: an edited study is an error, not a study that is simply not there."""
    url = copy_of(COMMITTED, tmp_path)
    monkeypatch.setattr(storage, "default_storage_url", lambda name: url)
    _, tuned = study_modules(["tuned_si"], None)
    assert set(tuned) == {"si"}
    study = storage.open_study("si", url)
    best = get_trial(study)
    tamper(url, best, "module_source", str(best.user_attrs["module_source"]).replace("0.", "1.", 1))
    with pytest.raises(ModuleMismatch, match="refused"):
        study_modules(["tuned_si"], None)
    with pytest.raises(ModuleMismatch, match="refused"):
        top_designs(storage.open_study("si", url), 30)


def test_only_the_sha256_or_a_design_that_differs_is_refused(tmp_path: Path) -> None:
    """A trial may keep only its module's sha256: the module is generated from the design and checked. A design
    edited to another one, a sha256 that is not the module's, a trial without a design: refused."""
    url = f"sqlite:///{tmp_path / 'fake.db'}"
    study = storage.open_study("fake", url, create=True)
    good = generated("fake", 0, 0.5)
    sha = sha256_text(str(good["module_source"]))
    study.add_trial(
        optuna.create_trial(value=0.5, user_attrs={"design": good["design"], "module_sha256": sha})
    )
    other_design = {**generated("fake", 1, 0.7), "design": generated("fake", 1, 0.9)["design"]}
    study.add_trial(optuna.create_trial(value=0.4, user_attrs=other_design))
    study.add_trial(optuna.create_trial(value=0.3, user_attrs={**generated("fake", 2), "module_sha256": sha}))
    study.add_trial(optuna.create_trial(value=0.2, user_attrs={"module_source": "X = 1\n"}))
    trials = storage.open_study("fake", url).trials
    assert trial_module(trials[0], "fake") == good["module_source"]
    assert trial_source("fake", url, trial=0) == good["module_source"]
    with pytest.raises(ModuleMismatch, match="its design generates another module"):
        trial_module(trials[1], "fake")
    with pytest.raises(ModuleMismatch, match="does not have its stored sha256"):
        trial_module(trials[2], "fake")
    with pytest.raises(
        ModuleMismatch, match="its design cannot be generated again: a design must be a mapping"
    ):
        trial_module(trials[3], "fake")
    with pytest.raises(ModuleMismatch):  # the same trial under another study's name: another provenance
        trial_module(trials[0], "other")


def test_a_legacy_study_exports_its_recorded_modules_and_refuses_an_edited_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """studies/ewc.db's modules come from an earlier generator: each is exported byte for byte when its sha256 is
    the one the repository records, an edited one is refused."""
    url = copy_of(LEGACY, tmp_path)
    study = storage.open_study("ewc", url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert {t.number for t in complete} <= set(legacy_modules()["ewc"])
    for trial in complete:
        assert trial_module(trial, "ewc") == trial.user_attrs["module_source"]
    out = tmp_path / "m.py"
    first = complete[0]
    tamper(url, first, "module_source", str(first.user_attrs["module_source"]) + "\n# edited\n")
    argv = ["export", "--study", "ewc", "--storage", url, "--trial", str(first.number), "--out", str(out)]
    assert search_main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "refused" in line and not out.exists()


def test_every_complete_trial_of_the_committed_studies_is_accepted(tmp_path: Path) -> None:
    """The check refuses no trial the repository ships: `make regenerate`, promote and final-eval work on them."""
    dbs = sorted((ROOT / "studies").glob("*.db")) + sorted((ROOT / "studies" / "campaign").glob("*.db"))
    checked = 0
    for i, db in enumerate(dbs):
        folder = tmp_path / str(i)
        folder.mkdir()
        url = copy_of(db, folder)
        for summary in optuna.get_all_study_summaries(url):
            if summary.study_name.endswith(":promoted"):  # results of promote, whose modules are the study's
                continue
            study = storage.open_study(summary.study_name, url)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                if "module_source" in trial.user_attrs or "module_sha256" in trial.user_attrs:
                    trial_module(trial, study.study_name)
                    checked += 1
    assert checked > 400


def test_a_trial_without_a_module_is_not_exported(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fake.db'}"
    study = storage.open_study("fake", url, create=True)
    study.add_trial(optuna.create_trial(value=0.5, user_attrs={"design": generated("fake", 0)["design"]}))
    with pytest.raises(UserError, match="stored no module"):
        trial_source("fake", url)
