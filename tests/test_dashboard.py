"""What optuna-dashboard shows of a study: read back through the dashboard's own API and its WSGI app.

A tiny real study (space, generator, harness on real MNIST) is run; the dashboard must then show the
objective's name, the study's description in its note, each trial's per-benchmark scores as sortable user
attributes, its design's description as its note and its module as an artifact that opens with the exact
source the trial scored. The study note carries the promoted trials' scores; a committed reference study is
served as an in-memory copy with every note on its own trial.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
import pytest
from optuna.trial import TrialState

from evaluation.cache import sha256_text
from search import annotate
from search.dashboard import free_port, in_memory_copy
from search.export import trial_module
from search.records import LEGACY_METRIC, METRIC
from search.storage import open_study
from search.studies import load_study_def
from search.workers import run_study

STUDY = """\
description = "dashboard test: Split-MNIST, 2 contexts"
n_trials = 2
warm_start = ["ewc"]
[fixed]
data_examples = 200
[sampler]
name = "random"
seed = 0
[pruner]
name = "none"
[[benchmark]]
experiment = "splitMNIST"
iters = 10
contexts = 2
train_subset = 256
val_fraction = 0.1
seeds = [1000]
"""


def wsgi_get(app: Any, path: str) -> tuple[str, dict[str, str], bytes]:
    """GET `path` from a WSGI app in-process: status, headers and body."""
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"], _, environ["QUERY_STRING"] = path.partition("?")
    environ["wsgi.input"] = io.BytesIO()
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got["status"], got["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return got["status"], got["headers"], body


def study_detail(app: Any, name: str) -> dict:
    _, _, body = wsgi_get(app, "/api/studies")
    [entry] = [s for s in json.loads(body)["study_summaries"] if s["study_name"] == name]
    _, _, body = wsgi_get(app, f"/api/studies/{entry['study_id']}")
    return {"study_id": entry["study_id"], **json.loads(body)}


def test_dashboard_shows_scores_note_and_module(tmp_path: Path, mnist_root: Path) -> None:
    (tmp_path / "dash.toml").write_text(STUDY)
    study_def = load_study_def(tmp_path / "dash.toml")
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    assert run_study(study_def, url, data_dir=str(mnist_root), device="cpu") == 0
    study = open_study("dash", url)
    trials = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(trials) == 2

    # The dashboard's Python API: the objective's name and the study's note.
    assert study.metric_names == [METRIC]
    note = optuna_dashboard.get_note(study)
    assert "**dashboard test: Split-MNIST, 2 contexts**" in note and METRIC in note
    assert note.rstrip().endswith(annotate.NOTE_END)

    # The dashboard's server, as the browser reads it, with the artifact store `dashboard` serves.
    folder = tmp_path / "dash.artifacts"
    assert study.user_attrs[annotate.ARTIFACT_DIR_ATTR] == str(folder) and folder.is_dir()
    app = optuna_dashboard.wsgi(url, artifact_store=annotate.artifact_store(folder))
    detail = study_detail(app, "dash")
    assert detail["objective_names"] == [METRIC]
    assert "dashboard test: Split-MNIST" in detail["note"]["body"]
    sortable = {a["key"]: a["sortable"] for a in detail["union_user_attrs"]}
    assert sortable["proxy_splitMNIST"] and sortable["gap_splitMNIST"]
    for served in detail["trials"]:
        stored = next(t for t in trials if t.number == served["number"])
        attrs = {a["key"]: a["value"] for a in served["user_attrs"]}
        assert float(attrs["proxy_splitMNIST"]) == pytest.approx(stored.user_attrs["proxy_splitMNIST"])
        assert float(attrs["gap_splitMNIST"]) == pytest.approx(stored.user_attrs["gap_splitMNIST"])
        clauses = stored.user_attrs["description"].split("; ")
        assert served["note"]["body"].startswith("**Design:**\n\n" + "".join(f"- {c}\n" for c in clauses))
        acc, gap = stored.user_attrs["proxy_splitMNIST"], stored.user_attrs["gap_splitMNIST"]
        assert f"| splitMNIST | {acc:.4f} | {gap:.4f} |" in served["note"]["body"]
        [artifact] = served["artifacts"]
        assert artifact["filename"] == "custom_regularization.py"
        assert artifact["mimetype"].startswith("text/plain")
        status, headers, body = wsgi_get(
            app, f"/artifacts/{detail['study_id']}/{served['trial_id']}/{artifact['artifact_id']}"
        )
        assert status.startswith("200") and headers["Content-Type"].startswith("text/plain")
        assert body.decode() == trial_module(stored, "dash")
        assert "module_source" not in attrs and attrs["module_sha256"] == sha256_text(body.decode())

    # `python -m search dashboard` serves the same study with its artifact store: the module opens over HTTP,
    # written again from the storage on launch when the folder lacks it (the repository keeps no artifact files).
    removed = [p for p in folder.rglob("*") if p.is_file()]
    assert len(removed) == 2
    for p in removed:
        p.unlink()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "search",
            "dashboard",
            "--study",
            "dash",
            "--storage",
            url,
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        served_trial = detail["trials"][0]
        artifact = served_trial["artifacts"][0]
        link = f"http://127.0.0.1:{port}/artifacts/{detail['study_id']}/{served_trial['trial_id']}/{artifact['artifact_id']}"
        body, deadline = None, time.time() + 60
        while body is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(link, timeout=5) as r:
                    body = r.read().decode()
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.3)
        stored = next(t for t in trials if t.number == served_trial["number"])
        assert body == trial_module(stored, "dash")
        assert all(p.is_file() for p in removed)  # every trial's, under its artifact id
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "modules from " in out and "notes written in the dashboard are saved" in out


def _study_with_trials(url: str, name: str, values: list[float]) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    for v in values:
        trial = study.ask()
        optuna_dashboard.save_note(trial, f"note of trial {trial.number} of {name}")
        study.tell(trial, v)
    return study


def test_promoted_scores_in_the_study_note_and_user_text_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = _study_with_trials(url, "s", [0.5, 0.7, 0.6])
    study.set_user_attr("benchmarks", ["splitMNIST"])
    annotate.annotate_study(study, "a study", url)
    assert "No trial has been promoted yet" in optuna_dashboard.get_note(study)

    # A user's text below the line survives a rewrite; an unchanged note is not written again.
    optuna_dashboard.save_note(study, optuna_dashboard.get_note(study) + "\n\nmy own remark")
    for trial, value, full in [(1, 0.7, 0.80), (2, 0.6, 0.85)]:  # as search/promote.py stores them
        study.set_user_attr(
            f"promoted:full:{trial}",
            {
                "trial": trial,
                "fidelity": "full",
                "iterations": 10000,
                "value": full,
                "proxy_value": value,
                "scores": {"splitMNIST": 0.9 + full / 10},
                "gaps": {"splitMNIST": full},
            },
        )
    study.set_user_attr(
        "promoted:iters80:1",
        {"trial": 1, "fidelity": "iters80", "iterations": 400, "value": 0.99, "proxy_value": 0.7,
         "scores": {"splitMNIST": 0.99}, "gaps": {"splitMNIST": 0.99}},
    )  # fmt: skip
    annotate.annotate_study(study, "a study", url)
    note = optuna_dashboard.get_note(study)
    assert note.endswith("my own remark") and note.count(annotate.NOTE_END) == 1
    rows = [line for line in note.splitlines() if line.startswith("| full") or line.startswith("| iters80")]
    assert rows == [
        "| full | 2 | 0.8500 | 0.6000 | 0.9850 | 0.8500 |",  # highest fidelity first, best value first
        "| full | 1 | 0.8000 | 0.7000 | 0.9800 | 0.8000 |",
        "| iters80 | 1 | 0.9900 | 0.7000 | 0.9900 | 0.9900 |",
    ]
    assert "exports the best at the highest fidelity: trial 2." in note
    version = study_detail(optuna_dashboard.wsgi(url), "s")["note"]["version"]
    assert not annotate.refresh_study_note(study, "a study")
    assert study_detail(optuna_dashboard.wsgi(url), "s")["note"]["version"] == version


def test_reference_copy_keeps_each_note_on_its_trial(tmp_path: Path) -> None:
    db = tmp_path / "ref.db"
    url = f"sqlite:///{db}"
    _study_with_trials(url, "other", [0.1, 0.2])  # trial ids of the second study start at 3 in the file
    _study_with_trials(url, "ref", [0.3, 0.4, 0.5])
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    storage, copy = in_memory_copy("ref", url)
    annotate.annotate_study(copy, "the reference", url)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest  # the file is not written
    detail = study_detail(optuna_dashboard.wsgi(storage), "ref")
    assert [(t["number"], t["note"]["body"]) for t in detail["trials"]] == [
        (n, f"note of trial {n} of ref") for n in range(3)
    ]
    assert [t["values"] for t in detail["trials"]] == [[0.3], [0.4], [0.5]]
    # trials scored and no anchors recorded: the study predates the gap-share objective
    assert detail["objective_names"] == [LEGACY_METRIC]
    assert "**the reference**" in detail["note"]["body"]
