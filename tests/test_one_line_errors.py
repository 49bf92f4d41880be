"""User errors end in one line on stderr and exit code 2, before any work and losing nothing (issue 32, item 3):
an `--out` that cannot be written (export, final-eval, promote, fidelity, the harness), a `--data-dir` that does
not exist (the harness: an error, no folder created), a read-only study storage, a full disk, a study file that
is not UTF-8."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import optuna
import pytest
from clharness import cli as harness_cli
from search_fakes import FAKE, FAKE_PROBE, trials_of, write_study

from cli.main import main as search_main
from search import storage
from search.optuna_adapter import StorageWriteRefused, write_refused
from search.studies import load_study_def
from search.workers import run_study

# A folder no one can create a file in, whoever runs the tests (root included): the kernel refuses.
UNWRITABLE = Path("/proc")
needs_proc = pytest.mark.skipif(not UNWRITABLE.is_dir(), reason="no /proc on this system")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err[0]
    return err[0]


@needs_proc
@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--preset", "ewc", "--out", "/proc/x.py"],
        ["final-eval", "--report-only", "--out", "/proc/fe"],
        ["promote", "--study", "si", "--out", "/proc/promoted"],
        ["fidelity", "--study", "si", "--out", "/proc/fidelity"],
    ],
    ids=["export", "final-eval", "promote", "fidelity"],
)
def test_an_out_that_cannot_be_written_is_one_line_before_any_work(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/proc passes permission bits for root, but no file can be created there: found by creating one."""
    import search.export
    from evaluation import final_eval

    def no_work(*args: object, **kw: object) -> None:
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(final_eval, "final_eval", no_work)
    monkeypatch.setattr(search.export, "best_source", no_work)
    assert search_main(argv) == 2
    line = one_error_line(capsys)
    assert f"--out {argv[-1]}: cannot write into /proc" in line


def test_final_eval_out_that_is_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "results"
    a_file.write_text("not a folder\n")
    assert search_main(["final-eval", "--report-only", "--out", str(a_file)]) == 2
    assert f"--out {a_file} exists and is not a folder" in one_error_line(capsys)
    assert a_file.read_text() == "not a folder\n"


@pytest.fixture
def harness_never_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's run stands in for work that must not start."""

    def ran(*args: object, **kw: object) -> dict:
        raise AssertionError("the run started")

    monkeypatch.setattr(harness_cli, "run", ran)
    monkeypatch.setattr(harness_cli, "run_joint", ran)


@needs_proc
@pytest.mark.usefixtures("harness_never_runs")
def test_the_harness_checks_its_out_before_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--experiment", "splitMNIST", "--hooks", "custom_regularization.py", "--out", "/proc/result.json"]
    assert harness_cli.main(argv) == 2
    assert "--out /proc/result.json: cannot write into /proc" in one_error_line(capsys)


@pytest.mark.usefixtures("harness_never_runs")
def test_a_harness_data_dir_that_does_not_exist_is_an_error_and_no_folder_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "typo"
    for joint in ([], ["--joint"]):
        assert harness_cli.main(["--experiment", "splitMNIST", *joint, "--data-dir", str(typo)]) == 2
        assert f"--data-dir {typo} does not exist" in one_error_line(capsys)
        assert not typo.exists()
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert harness_cli.main(["--experiment", "splitMNIST", "--data-dir", str(a_file)]) == 2
    assert "is not a folder" in one_error_line(capsys)


def _study_with_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    monkeypatch.setenv("FAKE_STEP_S", "0")
    path = write_study(tmp_path, n_trials=2)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert run_study(load_study_def(path), url, objective=FAKE, probe=FAKE_PROBE) == 0
    path.write_text(path.read_text().replace("n_trials = 2", "n_trials = 4"))
    return path, url


def test_a_read_only_storage_is_one_line_and_keeps_its_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SQLite file opened read-only (mode=ro, as a read-only mount or file does): `run` says so in one line
    before any trial, instead of Optuna's 110-line chain ending in "e.g. exceeding max length"."""
    path, url = _study_with_trials(tmp_path, monkeypatch)
    capsys.readouterr()
    db = tmp_path / "study.db"
    before = db.read_bytes()
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"
    argv = [
        "run",
        "--study",
        str(path),
        "--storage",
        read_only,
        "--objective",
        FAKE,
        "--data-probe",
        FAKE_PROBE,
    ]
    assert search_main(argv) == 2
    line = one_error_line(capsys)
    assert "is read-only" in line and "give another --storage" in line
    assert db.read_bytes() == before and len(trials_of("fake", url)) == 2
    assert not Path("file:").exists()  # the URI form names the file, not a folder to create


def test_a_write_the_database_refuses_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the check (a storage that becomes read-only while open): each write says so in one line."""
    _study_with_trials(tmp_path, monkeypatch)
    study = storage.open_study("fake", f"sqlite:///file:{tmp_path / 'study.db'}?mode=ro&uri=true")
    assert len(study.trials) == 2  # reading works
    with pytest.raises(StorageWriteRefused) as caught:
        study.set_user_attr("note", "x")
    message = str(caught.value)
    assert "\n" not in message and "is read-only (attempt to write a readonly database)" in message
    assert isinstance(caught.value, optuna.exceptions.StorageInternalError)  # Optuna's handlers still apply


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes files whatever their permissions")
def test_a_study_file_without_write_permission_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, url = _study_with_trials(tmp_path, monkeypatch)
    capsys.readouterr()
    db = tmp_path / "study.db"
    db.chmod(0o444)
    try:
        argv = [
            "run",
            "--study",
            str(path),
            "--storage",
            url,
            "--objective",
            FAKE,
            "--data-probe",
            FAKE_PROBE,
        ]
        assert search_main(argv) == 2
        assert f"is read-only (no write permission on {db})" in one_error_line(capsys)
    finally:
        db.chmod(0o644)


def test_a_full_disk_is_one_line(tmp_path: Path) -> None:
    """SQLite's own "database or disk is full" (a file capped at its pages, as a full disk leaves it)."""
    con = sqlite3.connect(tmp_path / "full.db")
    con.execute("CREATE TABLE t (x BLOB)")
    con.commit()
    con.execute("PRAGMA max_page_count = 3")
    with pytest.raises(sqlite3.OperationalError) as caught:
        for _ in range(10):
            con.execute("INSERT INTO t VALUES (?)", (b"x" * 4096,))
    con.close()
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = caught.value
    refused = write_refused(f"sqlite:///{tmp_path / 'full.db'}", wrapped)
    assert refused is not None
    assert "is on a full disk (database or disk is full): free some space" in str(refused)
    assert write_refused("sqlite:///x.db", RuntimeError("permission denied")) is None  # not the database's


def test_a_study_file_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tmp_path / "latin1.toml"
    study.write_bytes('n_trials = 3\ndescription = "café"\n'.encode("latin-1"))
    assert search_main(["run", "--study", str(study), "--storage", f"sqlite:///{tmp_path / 's.db'}"]) == 2
    line = one_error_line(capsys)
    assert f"{study}:2: not UTF-8 text (byte 0xe9" in line and "save the study file as UTF-8" in line
    assert not (tmp_path / "s.db").exists()


def test_a_mistyped_study_name_is_unknown_with_the_known_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 32, item 2: `make status STUDY=campagin` is "unknown study" with the names it could be, not "has no
    storage yet ... run it first"; a study with a file and no storage still says that."""
    folder = tmp_path / "studies"
    (folder / "campaign").mkdir(parents=True)
    monkeypatch.setattr(storage, "studies_dir", lambda: folder)
    (folder / "campaign.toml").write_text("n_trials = 1\n")
    (folder / "mine.toml").write_text("n_trials = 1\n")
    optuna.create_study(study_name="campaign", storage=f"sqlite:///{folder / 'campaign' / 'campaign.db'}")
    for command in ("status", "dashboard"):
        assert search_main([command, "--study", "campagin"]) == 2
        line = one_error_line(capsys)
        assert line.startswith("error: unknown study 'campagin'"), line
        assert "(known studies: campaign, mine)" in line
    assert search_main(["export", "--study", "campagin", "--out", str(tmp_path / "m.py")]) == 2
    assert "unknown study 'campagin'" in one_error_line(capsys)
    assert search_main(["status", "--study", "mine"]) == 2
    assert "study 'mine' has no storage yet" in one_error_line(capsys)
