"""The dashboard page stays readable (issue 32, item 7): a trial's module is its artifact and nothing else, and
its user attributes are short, the module's sha256 instead of its text; studies written before, whose trials
keep `module_source`, are served with its sha256 in its place and still export as they did."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
import pytest
from optuna.distributions import FloatDistribution
from search_fakes import generated

from cli.main import main as search_main
from evaluation.cache import sha256_text
from search import annotate
from search.dashboard import ReadableStorage
from search.export import trial_module, trial_source
from search.objective import anchor_key, make_objective
from search.storage import make_storage
from search.studies import load_study_def


def study_detail(app: Any, name: str) -> dict[str, Any]:
    """What the dashboard's page of study `name` reads: its API's study detail, through the WSGI app."""

    def get(path: str) -> Any:
        environ: dict[str, Any] = {}
        setup_testing_defaults(environ)
        environ["PATH_INFO"], environ["wsgi.input"] = path, io.BytesIO()
        return json.loads(b"".join(app(environ, lambda status, headers, exc_info=None: None)))

    [entry] = [s for s in get("/api/studies")["study_summaries"] if s["study_name"] == name]
    return dict(get(f"/api/studies/{entry['study_id']}"))


STUDY = """\
n_trials = 1
[fixed]
data_examples = 200
[[benchmark]]
experiment = "splitMNIST"
iters = 5
contexts = 2
train_subset = 128
seeds = [1000]
"""


def test_a_trial_keeps_its_modules_sha256_and_the_module_as_its_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One trial of the real objective (the ewc preset, on the offline subset; anchors given): its attributes
    are short, none holds the module's text, and its sha256 is the artifact's and the regenerated module's."""
    import clharness.data as cldata

    import space

    def no_download(root: Path, download: bool) -> object:
        raise OSError("no network in this test")

    monkeypatch.setattr(cldata, "_torchvision_mnist", no_download)
    (tmp_path / "one.toml").write_text(STUDY)
    study_def = load_study_def(tmp_path / "one.toml")
    url = f"sqlite:///{tmp_path / 'one.db'}"
    study = optuna.create_study(study_name="one", storage=make_storage(url), direction="maximize")
    annotate.annotate_study(study, "", url)
    study.set_user_attr(anchor_key(study_def.benchmarks[0]), {"none": 0.5, "joint": 1.0})
    study.enqueue_trial(space.trial_params(space.PRESETS["ewc"], study_def.fixed))
    data = tmp_path / "data"
    data.mkdir()
    study.optimize(make_objective(study_def, data_dir=str(data), device="cpu"), n_trials=1)

    [trial] = study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert "module_source" not in trial.user_attrs
    assert max(len(json.dumps(v)) for v in trial.user_attrs.values()) < 1000
    module = trial_module(trial, "one")
    assert trial.user_attrs["module_sha256"] == sha256_text(module)
    [artifact] = [p for p in (tmp_path / "one.artifacts").rglob("*") if p.is_file()]
    assert artifact.read_text() == module
    notes = study._storage.get_study_system_attrs(study._study_id)  # optuna-dashboard's notes, in chunks
    note = "".join(
        str(notes[k]) for k in sorted(notes) if k.startswith(f"dashboard:{trial._trial_id}:note_str")
    )
    assert "module_sha256" in note and "module_source" not in note


def test_older_studies_are_served_with_the_modules_sha256_in_place_of_its_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.create_study(study_name="old", storage=url, direction="maximize")
    attrs = generated("old", 0, 0.25)  # a trial as the objective stored it before: design and module_source
    study.add_trial(
        optuna.create_trial(
            value=0.5, params={"x": 0.25}, distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs
        )
    )
    source = str(attrs["module_source"])

    served = ReadableStorage(make_storage(url))
    detail = study_detail(optuna_dashboard.wsgi(served), "old")
    [trial] = detail["trials"]
    shown = {a["key"]: a["value"] for a in trial["user_attrs"]}
    assert "module_source" not in shown and shown["module_sha256"] == sha256_text(source)
    assert max(len(v) for v in shown.values()) < 1000
    assert "module_source" not in {a["key"] for a in detail["union_user_attrs"]}

    # What the dashboard writes still reaches the study (a note), and the stored text is still read by export.
    optuna_dashboard.save_note(optuna.load_study(study_name="old", storage=served), "a note")
    assert optuna_dashboard.get_note(optuna.load_study(study_name="old", storage=url)) == "a note"
    assert "module_source" in optuna.load_study(study_name="old", storage=url).trials[0].user_attrs
    assert trial_source("old", url, trial=0) == source

    # `python -m search dashboard` serves through it.
    got: list[optuna.storages.BaseStorage] = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: got.append(storage))
    assert search_main(["dashboard", "--study", "old", "--storage", url]) == 0
    [frozen] = got[0].get_all_trials(got[0].get_study_id_from_name("old"))
    assert "module_source" not in frozen.user_attrs
    assert frozen.user_attrs["module_sha256"] == sha256_text(source)
