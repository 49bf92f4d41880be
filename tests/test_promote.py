"""Promotion end to end on a tiny study with real MNIST: the K best trials re-run at a higher fidelity, the scores
stored on the study, and export / make regenerate then pick the best at the highest fidelity, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_search_e2e import tiny_study

import space
from search.cli import main as search_main
from search.export import rank_trials, trial_source
from search.promote import PREFIX, best_promoted, promoted
from search.storage import open_study
from search.studies import load_study_def
from search.workers import run_study


def test_promote_the_tiny_study_and_export_the_best_at_the_higher_fidelity(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("CL_DATA_DIR", str(mnist_root))
    path = tiny_study(tmp_path, "tiny_promote", 4, ["ewc", "sqrt_fisher"])
    study_def = load_study_def(path)
    url = f"sqlite:///{tmp_path / 'promote.db'}"
    assert run_study(study_def, url, data_dir=str(mnist_root), device="cpu") == 0
    study = open_study("tiny_promote", url)
    ranked = rank_trials(study.get_trials())
    assert best_promoted(study) is None
    before = trial_source("tiny_promote", url)
    assert before == ranked[0].user_attrs["module_source"]  # only the proxy ran: the exact bytes scored

    out = tmp_path / "fidelity"
    args = [
        "promote",
        "--study",
        str(path),
        "--storage",
        url,
        "--top",
        "2",
        "--iters",
        "30",
        "--out",
        str(out),
    ]
    assert search_main(args) == 0
    assert "promoted 2 trials at fidelity iters30" in capsys.readouterr().out
    study = open_study("tiny_promote", url)
    entries = promoted(study)
    assert sorted(e["trial"] for e in entries) == sorted(t.number for t in ranked[:2])
    for e in entries:
        assert f"{PREFIX}iters30:{e['trial']}" in study.user_attrs
        anchor = e["anchors"]["splitMNIST"]
        assert 0.5 < anchor["none"] < anchor["joint"] <= 1.0
        gap = (e["scores"]["splitMNIST"] - anchor["none"]) / (anchor["joint"] - anchor["none"])
        assert e["value"] == pytest.approx(gap) and e["iterations"] == 30 * 5  # all 5 contexts
    # Cached: none, joint and the two trials at 30 iterations, filed under the fidelity folder.
    assert len(list((out / "runs" / "splitMNIST").glob("*.json"))) == 4
    assert search_main(args) == 0  # again: everything comes from the cache, the results are the same
    assert promoted(open_study("tiny_promote", url)) == entries

    best = max(entries, key=lambda e: e["value"])
    exported = tmp_path / "custom_regularization.py"
    assert search_main(["export", "--study", "tiny_promote", "--storage", url, "--out", str(exported)]) == 0
    text = exported.read_text()
    assert f"trial {best['trial']} (chosen at fidelity iters30)" in text
    design = space.Design.from_dict(study.trials[best["trial"]].user_attrs["design"])
    assert text == space.generate_source(
        design, {"study": "tiny_promote", "trial": best["trial"], "fidelity": "iters30"}
    )
    # make regenerate reproduces it byte for byte, and so does the command in its header.
    assert trial_source("tiny_promote", url) == text
    assert trial_source("tiny_promote", url, trial=best["trial"]) == text


def test_promote_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny_study(tmp_path, "tiny_args", 2, [])
    assert search_main(["promote", "--study", str(path), "--top", "0"]) == 2
    assert search_main(["promote", "--study", str(path), "--iters", "0"]) == 2
    err = capsys.readouterr().err
    assert "--top must be at least 1" in err and "--iters must be at least 1" in err
