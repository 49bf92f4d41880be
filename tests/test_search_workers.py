"""Workers (issue 11 items 2 and 7, issue 12): no design proposed twice by resumes or parallel processes, SIGTERM
handled like Ctrl-C, progress with the best so far, an ETA and a live line, a dead worker named while the others
finish, and a fail reason on every failed trial."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from optuna.trial import TrialState
from search_fakes import (
    FAKE,
    FAKE_PROBE,
    fake_env,
    run_argv,
    sqlite_url,
    start_fake_run,
    trials_of,
    wait_for_running_trial,
    write_study,
)

import search.loop as loop
import search.progress as progress
from search.records import counts_toward_budget
from search.sampling import trial_seed
from search.studies import load_study_def
from search.workers import run_study


def xs(url: str) -> list[float]:
    return [t.params["x"] for t in sorted(trials_of("fake", url), key=lambda t: t.number)]


def test_resumes_and_parallel_processes_do_not_repeat_proposals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0")
    study = load_study_def(write_study(tmp_path, n_trials=6))  # random sampler, seed 0
    url = sqlite_url(tmp_path)
    assert run_study(study, url, n_trials=3, objective=FAKE, probe=FAKE_PROBE) == 0
    assert run_study(study, url, objective=FAKE, probe=FAKE_PROBE) == 0  # a resume
    resumed = xs(url)
    assert len(resumed) == 6 and len(set(resumed)) == 6

    # Reproducible where a seed asks for it: the same study from scratch proposes the same designs.
    again = f"sqlite:///{tmp_path / 'again.db'}"
    assert run_study(study, again, objective=FAKE, probe=FAKE_PROBE) == 0
    assert xs(again) == resumed
    assert trial_seed(0, 3) == trial_seed(0, 3) != trial_seed(0, 4) and trial_seed(None, 3) is None

    # Two processes joining one study at the same time, with the same seed.
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    path = write_study(tmp_path, n_trials=8)
    barrier = tmp_path / "barrier"  # each process's first trial waits until both have started one
    barrier.mkdir()
    env = fake_env(0.2, steps=2, FAKE_BARRIER=str(barrier), FAKE_WORKERS="2")
    procs = [start_fake_run(path, shared, 1, env) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = trials_of("fake", shared)
    counted = [t for t in trials if counts_toward_budget(t)]
    assert len(counted) == 8
    assert len({t.params["x"] for t in counted}) == 8
    # both processes ran trials (the barrier fails the run unless both started one)
    assert len({t.user_attrs["worker_pid"] for t in counted}) == 2, outs


def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    path = write_study(tmp_path, n_trials=6)
    url = sqlite_url(tmp_path)
    proc = start_fake_run(path, url, 2, fake_env(step_s=1.0, steps=20))
    try:
        wait_for_running_trial("fake", url, proc)
        os.kill(proc.pid, signal.SIGTERM)  # a scheduler's stop: to the command only, not its workers
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, out
    assert "stopped by SIGTERM; everything already computed is kept" in out
    assert "Traceback" not in out
    trials = trials_of("fake", url)
    assert not [t for t in trials if t.state == TrialState.RUNNING], out
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped, out
    for t in stopped:
        assert t.user_attrs["fail_reason"] == "interrupted (SIGTERM)"
        retry = [r for r in trials if r.system_attrs.get("failed_trial") == t.number]
        assert [r.state for r in retry] == [TrialState.WAITING] and retry[0].params == t.params


def test_progress_lines_and_the_live_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    monkeypatch.setenv("FAKE_STEPS", "2")
    monkeypatch.setattr(progress, "live_progress_enabled", lambda: True)
    study = load_study_def(write_study(tmp_path, n_trials=4))
    url = sqlite_url(tmp_path)
    assert run_study(study, url, n_trials=2, objective=FAKE, probe=FAKE_PROBE) == 0
    out = capsys.readouterr().out
    # the live line: benchmark, seed and context reached, redrawn in place
    assert "\rtrial 0: splitMNIST seed 1000, context 1/2 (step 1/2)" in out
    assert "\rtrial 0: splitMNIST seed 1000, context 2/2 (step 2/2)" in out
    done = [line.split("\r\x1b[K")[-1] for line in out.split("\n") if " | " in line]
    assert done[0].startswith("trial 0 complete ") and "1/2 done, best " in done[0]
    assert "(#0: splitMNIST " in done[0] and " trials/h, ETA " in done[0]  # best with its scores; ETA
    assert "2/2 done" in done[1] and "ETA" not in done[1]  # nothing left

    # A resumed run starts with the best so far and the time per trial and ETA from the history.
    assert run_study(study, url, objective=FAKE, probe=FAKE_PROBE) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("study fake: 2/4 trials done, best ")
    assert "(#" in first and "splitMNIST" in first and "per trial: ETA " in first


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("raise", r"worker [01] died: RuntimeError: fake worker died"),
        ("kill", r"worker [01] was killed by SIGKILL"),
    ],
)
def test_a_dead_worker_is_named_and_the_others_finish(tmp_path: Path, how: str, says: str) -> None:
    path = write_study(tmp_path, n_trials=4)
    url = sqlite_url(tmp_path)
    env = fake_env(0.1, steps=3, FAKE_DIE=how, FAKE_DIE_MARK=str(tmp_path / "died"))
    proc = subprocess.run(run_argv(path, url, 2), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(says, proc.stderr), proc.stderr
    assert "the other 1 worker(s) went on to the end" in proc.stderr
    trials = trials_of("fake", url)
    counted = [t for t in trials if counts_toward_budget(t)]
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)  # survivors finished
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    dead_pid = int((tmp_path / "died").read_text())
    [died] = [t for t in trials if t.user_attrs.get("worker_pid") == dead_pid]
    assert died.state == TrialState.FAIL and died.user_attrs["fail_kind"] == "crash"
    reason = died.user_attrs["fail_reason"]
    if how == "raise":
        assert reason == "RuntimeError: fake worker died"
    else:  # failed as stale by the survivor once its heartbeat was older than the grace period
        assert reason.startswith("its worker stopped beating for over 3 s")
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == died.number]
    assert retry.state == TrialState.COMPLETE and retry.params == died.params
    assert proc.stdout.strip().splitlines()[-1].startswith("study fake: 4/4 trials; best trial")


def test_every_failed_trial_has_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A design failure raised without a reason of its own still gets one."""
    from search.objective import DesignFailed

    def factory(study_def: object, **_: object) -> object:
        def objective(trial: object) -> float:
            trial.suggest_float("x", 0, 1)  # type: ignore[attr-defined]
            raise DesignFailed("the generator refused it")

        return objective

    monkeypatch.setattr(loop, "load_objective_factory", lambda ref: factory)
    study = load_study_def(write_study(tmp_path, n_trials=1))
    url = sqlite_url(tmp_path)
    assert run_study(study, url, objective=FAKE, probe=FAKE_PROBE) == 0
    [t] = trials_of("fake", url)
    assert t.state == TrialState.FAIL
    assert t.user_attrs["fail_reason"] == "DesignFailed: the generator refused it"
    assert t.user_attrs["fail_kind"] == "design"
