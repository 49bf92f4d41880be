"""Warm starts are enqueued once, whatever the number of processes starting together on one new storage (issue
32, item 5): the check for existing warm starts and their inserts are one step under a guard held in the
storage itself (`search.prepare.storage_guard`), on SQLite and PostgreSQL alike.

Two processes prepare the same new study at the same instant, several times over. Each widens the windows a
busy machine opens (a slow read of the study's attributes, a slow duplicate check before an insert), so that
without the guard both would find no warm start and both enqueue them (seen in 2 of 9 pairs of real runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_fakes import TESTS, write_study

from search.prepare import guard_name, storage_guard
from search.storage import make_storage

PREPARE = textwrap.dedent(
    """\
    import os, sys, time
    from pathlib import Path

    import optuna

    DELAY = 0.15
    read_attrs = optuna.Study.user_attrs.fget
    check_skip = optuna.Study._should_skip_enqueue

    def slow_attrs(self):
        value = read_attrs(self)
        time.sleep(DELAY)
        return value

    def slow_skip(self, params):
        value = check_skip(self, params)
        time.sleep(DELAY)
        return value

    optuna.Study.user_attrs = property(slow_attrs)
    optuna.Study._should_skip_enqueue = slow_skip

    import search.annotate, space  # imported before the start: the processes meet at the storage
    from search.studies import load_study_def
    from search.prepare import prepare_study

    barrier = Path(sys.argv[1])
    for attempt, job in enumerate(sys.argv[2:]):  # one new study after the other, both starting each together
        study_file, url = job.split("|", 1)
        mine = barrier / str(attempt)
        mine.mkdir(exist_ok=True)
        (mine / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(mine.iterdir())) < 2:
            assert time.monotonic() < deadline, "the other process never came"
            time.sleep(0.01)
        prepare_study(load_study_def(study_file), url)
    """
)
WARM = ["ewc", "si_calibrated"]


def prepare_twice(jobs: list[tuple[Path, str]], barrier: Path) -> None:
    """`prepare_study` of each (study file, storage URL) of `jobs` in turn, in two processes that start each at
    the same instant."""
    barrier.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, "-c", PREPARE, str(barrier), *(f"{path}|{url}" for path, url in jobs)]
    procs = [subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err


def warm_starts(url: str) -> Counter[str]:
    study = optuna.load_study(study_name="fake", storage=make_storage(url))
    assert not [
        s.study_name for s in optuna.get_all_study_summaries(make_storage(url)) if "guard" in s.study_name
    ]
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return Counter(str(t.user_attrs.get("warm_start")) for t in waiting)


def test_two_processes_on_one_new_sqlite_storage_enqueue_each_warm_start_once(tmp_path: Path) -> None:
    study_file = write_study(tmp_path, extra=f"warm_start = {WARM!r}".replace("'", '"'))
    urls = [f"sqlite:///{tmp_path / f'new{attempt}.db'}" for attempt in range(3)]
    prepare_twice([(study_file, url) for url in urls], tmp_path / "barrier")
    for attempt, url in enumerate(urls):
        assert warm_starts(url) == Counter(WARM), f"attempt {attempt}"


@pytest.mark.postgres
def test_two_processes_on_one_new_postgres_study_enqueue_each_warm_start_once(tmp_path: Path) -> None:
    base = os.environ.get("CL_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("CL_TEST_POSTGRES_URL is not set (.ci/run starts a server)")
    import uuid

    names = [f"warm_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    warm = f"warm_start = {WARM!r}".replace("'", '"')
    prepare_twice(
        [(write_study(tmp_path, name=name, extra=warm), base) for name in names], tmp_path / "barrier"
    )
    for name in names:
        study = optuna.load_study(study_name=name, storage=make_storage(base))
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        assert Counter(str(t.user_attrs.get("warm_start")) for t in waiting) == Counter(WARM), name
        optuna.delete_study(study_name=name, storage=make_storage(base))


def test_a_guard_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 'g.db'}")
    name = guard_name("fake", "warm-start")
    storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)  # its holder died
    with storage_guard(storage, name, stale_s=0.3, poll_s=0.05):
        assert [s.study_name for s in storage.get_all_studies()] == [name]
    assert storage.get_all_studies() == []
