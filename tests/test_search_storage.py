"""Where studies live and how storage errors read (issue 11, items 3 and 7): runs write your own study under
studies/local/ and never a committed reference; reading commands fall back to the reference; bad SQLite URLs,
a closed pipe, a failed or pruned trial's export and final-eval's `--data-dir` end in one line."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from search_fakes import (
    FAKE,
    FAKE_PROBE,
    fake_env,
    generated,
    run_argv,
    sqlite_url,
    trials_of,
    write_study,
)

import search.storage as storage
from cli.main import main as search_main
from evaluation.errors import UserError
from search.export import trial_source
from search.studies import load_study_def, repo_root
from search.workers import run_study

ROOT = repo_root()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private `studies/` folder standing in for the repository's."""
    folder = tmp_path / "studies"
    folder.mkdir()
    monkeypatch.setattr(storage, "studies_dir", lambda: folder)
    monkeypatch.setenv("FAKE_STEP_S", "0")
    return folder


def test_runs_write_your_study_and_never_the_reference(
    studies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_study(tmp_path, n_trials=3)
    reference = studies / "fake.db"
    ref_study = optuna.create_study(
        study_name="fake", storage=storage.make_storage(f"sqlite:///{reference}"), direction="maximize"
    )
    ref_study.add_trial(
        optuna.create_trial(
            value=0.5,
            params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
            user_attrs=generated("fake", 0, 0.5),
        )
    )
    ref_source = generated("fake", 0, 0.5)["module_source"]
    before = sha256(reference)
    # With no study of your own, reading commands read the committed reference.
    assert storage.default_storage_url("fake") == f"sqlite:///{reference}"
    assert trial_source("fake") == ref_source

    # `run` writes studies/local/fake.db (a fresh study of its own) and leaves the reference as it was.
    argv = ["run", "--study", str(path), "--objective", FAKE, "--data-probe", FAKE_PROBE]
    assert search_main(argv) == 0
    local = studies / "local" / "fake.db"
    assert local.is_file() and sha256(reference) == before
    assert len(trials_of("fake", f"sqlite:///{local}")) == 3
    assert f"storage sqlite:///{local}" in capsys.readouterr().out

    # Now reading commands read yours; --reference reads the committed one.
    assert storage.default_storage_url("fake") == f"sqlite:///{local}"
    assert trial_source("fake") != ref_source
    out = tmp_path / "module.py"
    assert search_main(["export", "--study", "fake", "--reference", "--out", str(out)]) == 0
    assert out.read_text() == ref_source
    assert "the committed reference study" in capsys.readouterr().out
    assert search_main(["status", "--study", "fake"]) == 0
    assert (
        "(your local study, which shadows the committed studies/fake.db: REFERENCE=1 (make) or --reference reads "
        "the committed one)" in capsys.readouterr().out
    )

    # A reference is never a run's storage, even when named explicitly.
    with pytest.raises(UserError, match=r"is a committed reference study and read-only; runs write"):
        run_study(load_study_def(path), f"sqlite:///{reference}", objective=FAKE, probe=FAKE_PROBE)
    assert sha256(reference) == before


def test_reading_commands_take_yours_then_the_campaigns_then_the_reference(
    studies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def study_at(path: Path, x: float) -> str:
        """A study at `path` with one trial (strength scale 1 + x); returns its module."""
        path.parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name="fake", storage=f"sqlite:///{path}", direction="maximize")
        attrs = generated("fake", 0, x)
        study.add_trial(
            optuna.create_trial(
                value=0.5, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs
            )
        )
        return str(attrs["module_source"])

    reference = study_at(studies / "fake.db", 0.1)
    assert trial_source("fake") == reference
    campaign = study_at(studies / "campaign" / "fake.db", 0.2)
    assert storage.default_storage_url("fake") == f"sqlite:///{studies / 'campaign' / 'fake.db'}"
    assert trial_source("fake") == campaign
    assert search_main(["status", "--study", "fake"]) == 0
    assert "(the team's campaign study)" in capsys.readouterr().out
    local = study_at(studies / "local" / "fake.db", 0.3)
    assert trial_source("fake") == local
    # --reference reads the committed study, which is the campaign's when the team ran one.
    assert search_main(["status", "--study", "fake"]) == 0
    assert (
        "(your local study, which shadows the committed studies/campaign/fake.db: REFERENCE=1 (make) or "
        "--reference reads the committed one)" in capsys.readouterr().out
    )
    out = studies / "module.py"
    assert search_main(["export", "--study", "fake", "--reference", "--out", str(out)]) == 0
    assert out.read_text() == campaign


def test_make_regenerate_from_the_committed_study_is_the_shipped_module(tmp_path: Path) -> None:
    """`make regenerate STUDY=<the shipped file's study> REFERENCE=1` writes the shipped file byte for byte, and
    reading the committed study does not change it."""
    shipped = repo_root() / "custom_regularization.py"
    name = shipped_study(shipped.read_text())
    committed = storage.sqlite_path(storage.committed_storage_url(name))
    assert committed is not None and committed.is_file(), f"the shipped file's study {name} is not committed"
    before = sha256(committed)
    out = tmp_path / "custom_regularization.py"
    assert search_main(["export", "--study", name, "--reference", "--out", str(out)]) == 0
    assert out.read_bytes() == shipped.read_bytes(), f"regenerate: make regenerate STUDY={name}"
    assert sha256(committed) == before


def shipped_study(source: str) -> str:
    """The study named in a generated module's `Provenance:` line."""
    match = re.search(r"^Provenance: (?:\S+, )*study=([\w.-]+)", source, re.MULTILINE)
    assert match, "the shipped module names no study in its Provenance line"
    return match.group(1)


def test_the_study_is_read_from_every_form_of_the_provenance_line() -> None:
    assert shipped_study('"""x\n\nProvenance: study=mnist, trial=0\n"""') == "mnist"
    assert shipped_study("Provenance: fidelity=full, study=campaign, trial=105\n") == "campaign"
    assert (
        shipped_study("Provenance: fidelity=iters80-contexts3, study=my.study-2, trial=7\n") == "my.study-2"
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("sqlite:////proc/x/y.db", "cannot create the folder /proc/x"),
        ("sqlite:////etc/passwd/x.db", "cannot create the folder /etc/passwd (a file is in the way)"),
    ],
)
def test_a_storage_that_cannot_be_made_is_one_line(tmp_path: Path, url: str, why: str) -> None:
    proc = subprocess.run(
        run_argv(write_study(tmp_path), url), env=fake_env(0), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"error: cannot open storage {url}: {why}"), line


def add_finished_trials(url: str) -> None:
    """Trials 0 complete, 1 pruned, 2 failed, each with a stored module."""
    study = optuna.create_study(study_name="fake", storage=storage.make_storage(url), direction="maximize")
    dist = {"x": FloatDistribution(0, 1)}
    for number, (x, state, attrs) in enumerate(
        [
            (0.1, TrialState.COMPLETE, {}),
            (0.2, TrialState.PRUNED, {"fail_reason": "pruned after context 2"}),
            (0.3, TrialState.FAIL, {"fail_reason": "HookError: bad importance", "fail_kind": "design"}),
        ]
    ):
        study.add_trial(
            optuna.create_trial(
                state=state,
                value=x if state != TrialState.FAIL else None,
                params={"x": x},
                distributions=dist,
                user_attrs={**generated("fake", number, x), **attrs},
            )
        )


def test_export_of_a_pruned_or_failed_trial_is_refused(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    add_finished_trials(url)
    out = tmp_path / "m.py"
    base = [sys.executable, "-m", "search", "export", "--study", "fake", "--storage", url, "--out", str(out)]
    for number, says in [
        (1, "trial 1 of study 'fake' pruned (pruned after context 2); only complete trials are exported"),
        (2, "trial 2 of study 'fake' failed (HookError: bad importance); only complete trials are exported"),
    ]:
        proc = subprocess.run([*base, "--trial", str(number)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2
        [line] = proc.stderr.splitlines()
        assert line.startswith(f"error: {says}"), line
        assert not out.exists()
    assert trial_source("fake", url, trial=0) == generated("fake", 0, 0.1)["module_source"]


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    add_finished_trials(url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "status", "--study", "fake", "--storage", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written, as `status | head -0`
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141
    assert err == ""


def test_final_eval_takes_a_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from evaluation import final_eval as fe

    monkeypatch.setenv("CL_DATA_DIR", "/elsewhere")  # restored after the test
    missing = tmp_path / "nope"
    assert search_main(["final-eval", "--data-dir", str(missing), "--report-only"]) == 2
    assert f"error: --data-dir {missing} does not exist" in capsys.readouterr().err

    seen = {}

    def fake_final_eval(**kwargs: object) -> tuple[object, None]:
        import os

        seen["data_dir"] = os.environ["CL_DATA_DIR"]
        seen["command"] = kwargs["command"]

        class Done:
            complete = True

        return Done(), None

    monkeypatch.setattr(fe, "final_eval", fake_final_eval)
    data = tmp_path / "data"
    data.mkdir()
    argv = ["final-eval", "--data-dir", str(data), "--methods", "none", "--benchmarks", "splitMNIST"]
    assert search_main(argv) == 0
    assert seen["data_dir"] == str(data.resolve())
    assert f"--data-dir {data}" in str(seen["command"])
