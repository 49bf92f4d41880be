"""The search machinery with a stand-in objective: study files, budget, workers, heartbeat retry, Ctrl-C,
status, export and the dashboard. The real objective (space + harness) is tested in test_search_e2e.py."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_fakes import (
    FAKE,
    FAKE_PROBE,
    fake_env,
    generated,
    sqlite_url,
    start_fake_run,
    trials_of,
    wait_for_running_trial,
    write_study,
)

import space
from evaluation.errors import UserError
from search.dashboard import free_port
from search.export import trial_source
from search.prepare import check_scoring
from search.records import CRASH, DESIGN, counts_toward_budget
from search.status import format_status, trial_origins
from search.storage import (
    default_storage_url,
    local_storage_url,
    make_storage,
    open_study,
    reference_storage_url,
)
from search.studies import load_study_def, repo_root
from search.workers import run_study

# ------------------------------------------------------------------------------------------------ study files


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write_study(tmp_path, extra="n_trails = 5")
    with pytest.raises(UserError, match=r"unknown key 'n_trails'") as info:
        load_study_def(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "none"', 'name = "none"\nwarmup = 3', r"unknown key 'pruner.warmup'"),
        ("contexts = 2", "contexts = 2\nepochs = 3", r"unknown key 'benchmark\[0\].epochs'"),
        ("contexts = 2", "contexts = 2\nseeds = [42]", r"benchmark\[0\].seeds must be .* >= 1000"),
        ("contexts = 2", "contexts = 11", r"contexts must be <= 5 for splitMNIST"),
        ('experiment = "splitMNIST"', 'experiment = "splitmnist"', r"experiment must be one of"),
        ('name = "random"', 'name = "cmaes"', r"sampler.name 'cmaes'"),
        ("grace_period = 3", "grace_period = 1", r"grace_period must exceed"),
        ("n_trials = 6", "n_trials = 0", r"n_trials must be an integer >= 1"),
        ("iters = 10", 'iters = "10"', r"benchmark\[0\].iters must be an integer"),
        ("contexts = 2", 'contexts = 2\nname = "a-b"', r"benchmark\[0\].name must be letters, digits and _"),
    ],
)
def test_bad_study_values_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = write_study(tmp_path)
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(UserError, match=message):
        load_study_def(path)


def test_tuned_baselines_have_the_campaign_studys_proxies_and_one_budget() -> None:
    # A tuned baseline is a row the campaign's winner must beat: it must be scored on the same proxies, with the
    # same weights, and tuned with the same budget as every other baseline (issue 10).
    from evaluation.cache import TUNED_BASELINES

    main = load_study_def("campaign")
    tuned = {name: load_study_def(name) for name in TUNED_BASELINES}
    assert {name: s.benchmarks for name, s in tuned.items()} == dict.fromkeys(
        TUNED_BASELINES, main.benchmarks
    )
    assert len({s.n_trials for s in tuned.values()}) == 1
    assert {name: s.pruner for name, s in tuned.items()} == dict.fromkeys(TUNED_BASELINES, main.pruner)


def test_two_proxies_of_one_experiment_need_a_name_and_keep_old_scorings(tmp_path: Path) -> None:
    path = write_study(tmp_path)
    one = load_study_def(path)
    table = "[[benchmark]]" + path.read_text().split("[[benchmark]]")[1]
    path.write_text(path.read_text() + table.replace("iters = 10", "iters = 20"))
    with pytest.raises(UserError, match=r"appears twice .* its own `name`"):
        load_study_def(path)
    path.write_text(path.read_text().rstrip() + '\nname = "split_long"\n')
    two = load_study_def(path)
    assert two.labels == ("splitMNIST", "split_long") and two.experiments == ("splitMNIST",)
    assert two.n_steps == 2 * one.n_steps
    # a proxy named after its experiment records no name: studies made before names keep their scoring
    assert one.scoring["benchmarks"] == [
        {k: v for k, v in b.items() if k != "name"} for b in two.scoring["benchmarks"][:1]
    ]
    assert "name" not in one.scoring["benchmarks"][0] and two.scoring["benchmarks"][1]["name"] == "split_long"


def test_unknown_study_lists_the_shipped_ones() -> None:
    with pytest.raises(UserError, match=r"unknown study 'nope'.*mnist"):
        load_study_def("nope")


def test_storages_are_the_studys_files_in_the_repo() -> None:
    assert reference_storage_url("mnist") == f"sqlite:///{repo_root() / 'studies' / 'mnist.db'}"
    assert local_storage_url("mnist") == f"sqlite:///{repo_root() / 'studies' / 'local' / 'mnist.db'}"
    assert default_storage_url("mnist") in (reference_storage_url("mnist"), local_storage_url("mnist"))


# ------------------------------------------------------------------------------------------- budget, workers


def test_two_workers_finish_the_budget_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    (tmp_path / "barrier").mkdir()
    monkeypatch.setenv("FAKE_BARRIER", str(tmp_path / "barrier"))  # each worker's first trial waits for both
    study = load_study_def(write_study(tmp_path, n_trials=7))
    url = sqlite_url(tmp_path)
    # Enqueued trials (as warm-start presets are) must each be taken by one worker only.
    enqueued = [0.11, 0.22, 0.33, 0.44]
    created = optuna.create_study(study_name="fake", storage=make_storage(url), direction="maximize")
    for x in enqueued:
        created.enqueue_trial({"x": x})
    assert run_study(study, url, n_workers=2, objective=FAKE, probe=FAKE_PROBE) == 0
    trials = trials_of("fake", url)
    counted = [t for t in trials if counts_toward_budget(t)]
    assert len(counted) == 7
    assert all(t.state == TrialState.COMPLETE for t in counted)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    xs = [t.params["x"] for t in counted]
    assert len(set(xs)) == 7  # no design run twice
    assert sorted(x for x in xs if x in enqueued) == enqueued
    # two spawned processes shared the study (the barrier fails the run unless both started a trial)
    pids = {t.user_attrs["worker_pid"] for t in counted}
    assert len(pids) == 2 and os.getpid() not in pids
    # A rerun of a complete study runs nothing more.
    assert run_study(study, url, n_workers=2, objective=FAKE, probe=FAKE_PROBE) == 0
    assert len(trials_of("fake", url)) == len(trials)


def test_resume_continues_until_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0")
    study = load_study_def(write_study(tmp_path, n_trials=5))
    url = sqlite_url(tmp_path)
    assert run_study(study, url, n_trials=2, objective=FAKE, probe=FAKE_PROBE) == 0
    assert sum(map(counts_toward_budget, trials_of("fake", url))) == 2
    assert run_study(study, url, objective=FAKE, probe=FAKE_PROBE) == 0
    assert sum(map(counts_toward_budget, trials_of("fake", url))) == 5


def test_killed_worker_trial_is_retried_and_study_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study_path = write_study(tmp_path, n_trials=3)
    url = sqlite_url(tmp_path)
    proc = start_fake_run(study_path, url, 1, fake_env(step_s=2.0, steps=5))
    try:
        killed = wait_for_running_trial("fake", url, proc)[0]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [t.state for t in trials_of("fake", url) if t.number == killed.number] == [TrialState.RUNNING]
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    t0 = time.time()
    assert run_study(load_study_def(study_path), url, objective=FAKE, probe=FAKE_PROBE) == 0
    assert time.time() - t0 < 30
    trials = trials_of("fake", url)
    by_number = {t.number: t for t in trials}
    assert by_number[killed.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].params == by_number[killed.number].params  # the same design ran again
    assert sum(map(counts_toward_budget, trials)) == 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_ctrl_c_leaves_storage_consistent(tmp_path: Path) -> None:
    study_path = write_study(tmp_path, n_trials=6)
    url = sqlite_url(tmp_path)
    proc = start_fake_run(study_path, url, 2, fake_env(step_s=1.0, steps=20))
    try:
        wait_for_running_trial("fake", url, proc)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the job
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    trials = trials_of("fake", url)
    assert not [t for t in trials if t.state == TrialState.RUNNING], out
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted, out
    for t in interrupted:
        assert t.user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
        retry = [r for r in trials if r.system_attrs.get("failed_trial") == t.number]
        assert [r.state for r in retry] == [TrialState.WAITING]
        assert retry[0].params == t.params
    assert "marked failed; re-queued as trial" in out


def test_failed_designs_count_and_a_run_of_failures_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0")
    monkeypatch.setenv("FAKE_FAIL", "1")
    study = load_study_def(write_study(tmp_path, n_trials=10))
    url = sqlite_url(tmp_path)
    with pytest.raises(RuntimeError, match="5 trials in a row failed"):
        run_study(study, url, objective=FAKE, probe=FAKE_PROBE)
    trials = trials_of("fake", url)
    assert [t.state for t in trials] == [TrialState.FAIL] * 5
    assert all(t.user_attrs["fail_reason"] == "broken on purpose" for t in trials)
    assert sum(map(counts_toward_budget, trials)) == 5  # failed designs used their budget slots
    assert not [t for t in trials if t.system_attrs.get("failed_trial") is not None]  # and are not retried


def test_a_learning_rate_matched_proxy_is_read_and_keeps_its_own_anchors(tmp_path: Path) -> None:
    from search.objective import anchor_key

    path = write_study(tmp_path)
    plain = load_study_def(path).benchmarks[0]
    assert plain.lr is None and anchor_key(plain) == "anchors:splitMNIST:10-2-None-0.1-1000"  # as before lr
    path.write_text(path.read_text().replace("iters = 10", "iters = 10\nlr = 0.01"))
    fast = load_study_def(path).benchmarks[0]
    assert fast.lr == 0.01 and anchor_key(fast) == "anchors:splitMNIST:10-2-None-0.1-1000-lr0.01"
    path.write_text(path.read_text().replace("lr = 0.01", "lr = 0"))
    with pytest.raises(UserError, match=r"lr must be a number in \(0, 1\], got 0"):
        load_study_def(path)


def test_a_study_refuses_a_file_whose_scoring_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxy settings or weights changed under a study would mix incomparable values; the budget, sampler and
    pruner may change."""
    monkeypatch.setenv("FAKE_STEP_S", "0")
    path = write_study(tmp_path, n_trials=2)
    url = sqlite_url(tmp_path)
    assert run_study(load_study_def(path), url, objective=FAKE, probe=FAKE_PROBE) == 0
    path.write_text(
        path.read_text().replace('name = "none"', 'name = "median"').replace("n_trials = 2", "n_trials = 3")
    )
    assert (
        run_study(load_study_def(path), url, objective=FAKE, probe=FAKE_PROBE) == 0
    )  # pruner and budget: fine
    assert sum(map(counts_toward_budget, trials_of("fake", url))) == 3
    path.write_text(
        path.read_text().replace("iters = 10", "iters = 20").replace("n_trials = 3", "n_trials = 4")
    )
    with pytest.raises(
        UserError, match=r"was scored with benchmarks = .*\"iters\": 10.*now says .*\"iters\": 20.*new name"
    ):
        run_study(load_study_def(path), url, objective=FAKE, probe=FAKE_PROBE)
    assert sum(map(counts_toward_budget, trials_of("fake", url))) == 3  # nothing ran


def test_a_study_refuses_to_resume_under_another_version_of_the_space(tmp_path: Path) -> None:
    """A study recorded before the space had versions (version 2 or earlier), or under another version, would
    mix trials drawn from different distributions: refused, naming both versions."""
    study = load_study_def(write_study(tmp_path, n_trials=2))
    before = {k: v for k, v in json.loads(json.dumps(study.scoring)).items() if k != "space"}
    with pytest.raises(
        UserError, match=r"sampled version 2 or earlier of the design space.*now has version 3"
    ):
        check_scoring(study, before, "here")
    with pytest.raises(UserError, match=r"sampled version 4 of the design space.*new name"):
        check_scoring(study, {**before, "space": 4}, "here")
    check_scoring(study, {**before, "space": space.SPACE_VERSION}, "here")  # the same version: fine


# ---------------------------------------------------------------------------------------- status and export


def test_status_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0")
    study = load_study_def(write_study(tmp_path, n_trials=4))
    url = sqlite_url(tmp_path)
    run_study(study, url, objective=FAKE, probe=FAKE_PROBE)
    opened = open_study("fake", url)
    best = max(opened.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    text = format_status(opened, 4)
    assert "study fake: 4/4 trials counted" in text
    assert "complete 4, pruned 0, fail 0, running 0, waiting 0" in text
    best_line = text.splitlines()[
        text.splitlines().index(next(line for line in text.splitlines() if "splitMNIST" in line)) + 1
    ]
    assert best_line.split()[:3] == [str(best.number), f"{best.value:.4f}", f"{best.value:.4f}"]
    assert trial_source("fake", url) == generated("fake", best.number, best.params["x"])["module_source"]
    first = opened.trials[0]
    assert trial_source("fake", url, trial=0) == generated("fake", 0, first.params["x"])["module_source"]
    with pytest.raises(UserError, match="has no trial 99"):
        trial_source("fake", url, trial=99)
    with pytest.raises(UserError, match="no study 'other'"):
        trial_source("other", url)


def test_status_compares_warm_starts_the_random_start_and_tpe(tmp_path: Path) -> None:
    """Origins follow the sampler: two enqueued presets, then n_startup_trials - 2 random designs, then TPE. A
    crashed trial is left out (its retry stands for it), while a design that failed by itself is counted."""
    fake = load_study_def(write_study(tmp_path, n_trials=20))
    tpe = dataclasses.replace(fake.sampler, name="tpe", n_startup_trials=5)
    study_def = dataclasses.replace(fake, warm_start=("ewc", "mas"), sampler=tpe)
    study = optuna.create_study(direction="maximize")
    x = optuna.distributions.FloatDistribution(0, 1)

    def add(value: float | None, state: TrialState = TrialState.COMPLETE, **attrs: str) -> None:
        study.add_trial(
            optuna.trial.create_trial(
                state=state, value=value, params={"x": 0.5}, distributions={"x": x}, user_attrs=attrs
            )
        )

    add(0.60, warm_start="ewc")  # 0
    add(0.70, warm_start="mas")  # 1
    add(None, TrialState.FAIL, fail_kind=CRASH)  # 2: re-queued as a later trial
    add(0.10)  # 3: random
    add(None, TrialState.FAIL, fail_kind=DESIGN)  # 4: random, diverged
    add(0.30)  # 5: random
    for value in (0.50, 0.80, 0.65):  # 6-8: TPE
        add(value)
    origins = trial_origins(study.get_trials(), study_def)
    assert origins == {
        0: "warm start",
        1: "warm start",
        3: "random start",
        4: "random start",
        5: "random start",
        6: "TPE",
        7: "TPE",
        8: "TPE",
    }
    lines = format_status(study, 20, top=2, study_def=study_def).splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("by origin"))) :]
    assert [line.split() for line in table[1:4]] == [
        ["warm", "start", "2", "0.6500", "0.6500", "0.7000"],
        ["random", "start", "2", "0.2000", "0.2000", "0.3000"],
        ["TPE", "3", "0.6500", "0.7250", "0.8000"],
    ]
    random_sampler = dataclasses.replace(study_def, sampler=dataclasses.replace(tpe, name="random"))
    assert trial_origins(study.get_trials(), random_sampler)[8] == "random start"


# ------------------------------------------------------------------------------------------------- dashboard


def test_dashboard_serves_the_study_and_trial_attributes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0")
    study = load_study_def(write_study(tmp_path, n_trials=2))
    url = sqlite_url(tmp_path)
    run_study(study, url, objective=FAKE, probe=FAKE_PROBE)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "search",
            "dashboard",
            "--study",
            "fake",
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
        deadline = time.time() + 60
        studies = None
        while time.time() < deadline and studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.3)
        assert studies is not None
        [entry] = [s for s in studies if s["study_name"] == "fake"]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{entry['study_id']}", timeout=10
        ) as r:
            detail = json.load(r)
        assert len(detail["trials"]) == 2
        stored = trials_of("fake", url)
        for served, trial in zip(sorted(detail["trials"], key=lambda t: t["number"]), stored, strict=True):
            attrs = {a["key"]: a["value"] for a in served["user_attrs"]}
            assert json.loads(attrs["scores"]) == trial.user_attrs["scores"]
            assert "module_source" not in attrs  # the module's sha256, never its text (issue 32, item 7)
            assert attrs["module_sha256"] == trial.user_attrs["module_sha256"]
            assert {"per_context", "wall_time_s"} <= set(attrs)
        assert {a["key"] for a in entry["user_attrs"]} >= {"study_file", "benchmarks"}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/dashboard/studies/" in out


# ------------------------------------------------------------------------------------------------ PostgreSQL


@pytest.mark.postgres
def test_two_workers_on_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = os.environ.get("CL_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("CL_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)")
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    (tmp_path / "barrier").mkdir()
    monkeypatch.setenv("FAKE_BARRIER", str(tmp_path / "barrier"))
    name = f"pg_{uuid.uuid4().hex[:12]}"  # the server outlives the test: a fresh study every time
    study = load_study_def(write_study(tmp_path, name=name, n_trials=6))
    assert run_study(study, url, n_workers=2, objective=FAKE, probe=FAKE_PROBE) == 0
    trials = trials_of(name, url)
    counted = [t for t in trials if counts_toward_budget(t)]
    assert len(counted) == 6 and all(t.state == TrialState.COMPLETE for t in counted)
    assert len({t.params["x"] for t in counted}) == 6
    assert len({t.user_attrs["worker_pid"] for t in counted}) == 2
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]


# ------------------------------------------------------------------------------------------------ fallback


def test_auto_fallback_runs_the_campaign_study_when_cifar100_is_absent(tmp_path: Path) -> None:
    from cli.run import fallback

    default = load_study_def("default")
    study, line = fallback(default, str(tmp_path))
    assert study.name == "campaign" and study.experiments == ("permMNIST", "splitMNIST")
    assert line is not None and line.startswith(
        f"CIFAR-100 is not in {tmp_path}: running the 'campaign' study"
    )
    assert "CIFAR100" in line and "make pretrain-trunk" in line
    (tmp_path / "cifar-100-python").mkdir()
    assert fallback(default, str(tmp_path)) == (default, None)
    assert fallback(load_study_def("campaign"), str(tmp_path / "elsewhere"))[1] is None  # no CIFAR needed


def test_a_signal_during_a_database_call_is_raised_when_the_call_returns(tmp_path: Path) -> None:
    """Ctrl-C must never cut a storage call in half (a half-done call can keep SQLite's write lock held)."""
    import sqlalchemy

    from search import interrupts

    storage = make_storage(sqlite_url(tmp_path))
    study = optuna.create_study(study_name="s", storage=storage)
    trial_id = storage.create_new_trial(storage.get_study_id_from_name("s"))
    statements: list[str] = []

    def interrupt_mid_write(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.split()[0])
        if statement.startswith("INSERT INTO trial_user_attributes") and "sent" not in statements:
            statements.append("sent")
            os.kill(os.getpid(), signal.SIGINT)  # arrives between the call's SQL statements

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", interrupt_mid_write)
    with interrupts.interrupt_signals():
        with pytest.raises(interrupts.Interrupted, match="SIGINT"):
            storage.set_trial_user_attr(trial_id, "k", 1)
        assert "sent" in statements
        # the write completed, and the storage is usable at once (no lock left behind)
        assert storage.get_trial_user_attrs(trial_id) == {"k": 1}
        storage.set_trial_user_attr(trial_id, "after", 2)
    assert study.trials[0].user_attrs == {"k": 1, "after": 2}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_swallowed_where_python_ignores_exceptions_still_stops_the_work() -> None:
    """Seen in the campaign: SIGINT landed in SQLAlchemy's weakref callback, whose exceptions Python prints and
    drops; the worker went on, and ignored every later signal. The worker loop and each context's report raise it
    again (`raise_if_interrupted`)."""
    import gc
    import weakref

    from search import interrupts

    class Anything:
        pass

    with interrupts.interrupt_signals():
        interrupts.raise_if_interrupted()  # nothing received: nothing raised
        thing = Anything()
        ref = weakref.ref(thing, lambda r: os.kill(os.getpid(), signal.SIGINT))
        del thing
        gc.collect()
        assert ref() is None  # the callback ran, and its Interrupted was dropped: we are still here
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # and later signals are ignored
        with pytest.raises(interrupts.Interrupted, match="SIGINT"):
            interrupts.raise_if_interrupted()
    with interrupts.interrupt_signals():  # a later run in the same process starts clean
        interrupts.raise_if_interrupted()
