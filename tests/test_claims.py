"""Claims on the run cache: processes that run the same evaluation side by side run each job once, wait for
each other's runs, and take over the runs of a process that died."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from evaluation import cache, claims
from evaluation import final_eval as fe

REPO = Path(__file__).resolve().parents[1]
HOOKS = REPO / "tests" / "hooks"
TINY = {"iters": 20, "contexts": 2}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _write_claim(record: Path, *, host: str, pid: int, age_s: float = 0.0) -> Path:
    path = claims.claim_path(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "theirs", "since": 0}))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_a_claim_is_exclusive_and_released(tmp_path: Path) -> None:
    record = tmp_path / "runs" / "splitMNIST" / "m__k__seed42.json"
    first = claims.try_claim(record)
    assert first is not None and claims.claim_path(record).is_file()
    assert claims.try_claim(record) is None  # held by a live process: this one
    assert claims.claim_holder(record) == f"pid {os.getpid()} on {socket.gethostname()}"
    first.release()
    assert not claims.claim_path(record).exists()
    second = claims.try_claim(record)
    assert second is not None
    second.release()


def test_the_heartbeat_keeps_a_claim_fresh(tmp_path: Path) -> None:
    record = tmp_path / "r.json"
    claim = claims.try_claim(record, heartbeat_s=0.05)
    assert claim is not None
    old = time.time() - 1000
    os.utime(claims.claim_path(record), (old, old))
    time.sleep(0.3)
    assert time.time() - claims.claim_path(record).stat().st_mtime < 5
    claim.release()


def test_dead_and_silent_holders_are_taken_over_live_ones_are_not(tmp_path: Path) -> None:
    record = tmp_path / "r.json"
    here = socket.gethostname()
    # a process of this host that is gone: taken over at once
    _write_claim(record, host=here, pid=_dead_pid())
    assert claims.claim_holder(record) is None
    claim = claims.try_claim(record)
    assert claim is not None and json.loads(claims.claim_path(record).read_text())["pid"] == os.getpid()
    claim.release()
    # another host: respected while its heartbeat is fresh, taken over once it is stale
    _write_claim(record, host="gpu-box", pid=1)
    assert claims.claim_holder(record) == "pid 1 on gpu-box" and claims.try_claim(record) is None
    _write_claim(record, host="gpu-box", pid=1, age_s=claims.CLAIM_STALE_S + 10)
    claim = claims.try_claim(record)
    assert claim is not None
    claim.release()
    assert [p.name for p in tmp_path.iterdir()] == []  # the dead claim moved aside was removed


def test_releasing_a_claim_taken_over_leaves_the_new_holders_file(tmp_path: Path) -> None:
    record = tmp_path / "r.json"
    claim = claims.try_claim(record)
    assert claim is not None
    _write_claim(record, host="gpu-box", pid=1)  # someone else's now
    claim.release()
    assert json.loads(claims.claim_path(record).read_text())["host"] == "gpu-box"


class CountingHarness:
    """A fake harness that logs every call to a file (shared by processes) and takes `seconds` per run."""

    def __init__(self, calls: Path, seconds: float) -> None:
        self.calls, self.seconds = calls, seconds

    def run(self, hooks_path: str, cfg: object, **kw: object) -> dict:
        return self._result(Path(hooks_path).stem.split("-")[0], cfg)

    def run_joint(self, cfg: object, **kw: object) -> dict:
        return self._result("joint", cfg)

    def _result(self, name: str, cfg: object) -> dict:
        seed = cfg.seed  # type: ignore[attr-defined]
        with self.calls.open("a") as f:
            f.write(f"{os.getpid()} {name} {seed}\n")
        time.sleep(self.seconds)
        return {
            "experiment": cfg.experiment,  # type: ignore[attr-defined]
            "seed": seed,
            "average_accuracy": 0.5,
            "per_context_accuracy": [0.5, 0.5],
            "acc_matrix": [[0.5], [0.5, 0.5]],
            "device": "cpu",
            "data_source": "torchvision",
        }


def _jobs(tmp_path: Path) -> list[cache.Job]:
    methods = fe.resolve_methods(
        ["candidate", "joint"],
        hooks=HOOKS / "no_reg.py",
        candidate=None,
        tuned=None,
        module_dir=tmp_path / "m",
    )
    return fe.plan(methods, ["splitMNIST"], [42, 43, 44], runs_dir=tmp_path / "runs", overrides=TINY)


def _evaluate(tmp_path: Path, seconds: float, done: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    fake = CountingHarness(tmp_path / "calls.txt", seconds)
    outcome = fe.run_jobs(
        _jobs(tmp_path), overrides=TINY, run_fn=fake.run, joint_fn=fake.run_joint, log=lambda line: None
    )
    done.put((os.getpid(), len(outcome.ran), len(outcome.cached), outcome.complete))


def test_two_processes_share_one_evaluation_and_run_each_job_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claims, "CLAIM_POLL_S", 0.05)
    ctx = multiprocessing.get_context("fork")  # the patched poll interval travels with the fork
    done = ctx.Queue()
    procs = [ctx.Process(target=_evaluate, args=(tmp_path, 0.3, done)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = [done.get(timeout=5) for _ in procs]
    calls = (tmp_path / "calls.txt").read_text().split()
    runs = [(calls[i + 1], calls[i + 2]) for i in range(0, len(calls), 3)]
    assert sorted(runs) == sorted({(m, s) for m in ("candidate", "joint") for s in ("42", "43", "44")})
    assert len({calls[i] for i in range(0, len(calls), 3)}) == 2  # both processes ran some
    # each process returns only when all six are done, counting the other's runs as cached
    assert sorted((ran + cached, complete) for _, ran, cached, complete in results) == [(6, True), (6, True)]
    assert sum(ran for _, ran, _, _ in results) == 6
    assert not list((tmp_path / "runs").rglob("*.claim"))


def test_a_run_held_elsewhere_is_waited_for_not_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claims, "CLAIM_POLL_S", 0.05)
    jobs = _jobs(tmp_path)
    held = jobs[0]
    _write_claim(held.path, host="gpu-box", pid=1)

    def holder_finishes() -> None:  # the other machine writes its record, then drops its claim
        time.sleep(0.5)
        record = CountingHarness(tmp_path / "theirs.txt", 0).run(str(HOOKS / "no_reg.py"), _cfg(held))
        cache.store(held, _cfg(held), record, 0.5)
        claims.claim_path(held.path).unlink()

    thread = threading.Thread(target=holder_finishes)
    thread.start()
    fake = CountingHarness(tmp_path / "calls.txt", 0)
    lines: list[str] = []
    outcome = fe.run_jobs(jobs, overrides=TINY, run_fn=fake.run, joint_fn=fake.run_joint, log=lines.append)
    thread.join()
    assert outcome.complete and len(outcome.ran) == 5 and outcome.cached == [held]
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 5
    assert "waiting for 1 runs held by pid 1 on gpu-box (every 0 s)" in lines


def test_an_interrupted_run_releases_its_claim(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path)

    def power_cut(*args: object, **kw: object) -> dict:
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        fe.run_jobs(jobs, overrides=TINY, run_fn=power_cut, joint_fn=power_cut, log=lambda line: None)
    assert not list((tmp_path / "runs").rglob("*.claim"))


def _cfg(job: cache.Job) -> object:
    return cache.make_config(job.experiment, job.seed, device="cpu", overrides=TINY)


# A process that takes the trial lock of one SQLite file, says when it has it, then dies holding it or lets go.
_TAKE_TRIAL_LOCK = """
import os, sys, time
from search.loop import claim_lock
with claim_lock(sys.argv[1]):
    print(time.time(), flush=True)
    if sys.argv[2] == "die":
        os._exit(0)
"""


def test_workers_take_trials_from_one_sqlite_file_one_at_a_time(tmp_path: Path) -> None:
    """`search.loop.claim_lock` is a claim (the one file lock): a second process waits while one holds it, and a
    holder that died holding it is taken over at once."""
    from search.loop import claim_lock

    url = f"sqlite:///{tmp_path / 'study.db'}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, "-c", _TAKE_TRIAL_LOCK, url]
    with claim_lock(url):
        other = subprocess.Popen([*argv, "release"], stdout=subprocess.PIPE, text=True, env=env)
        time.sleep(1.5)  # long enough for it to start and wait
        released = time.time()
    assert float(other.communicate(timeout=60)[0]) >= released
    subprocess.run([*argv, "die"], check=True, env=env, timeout=60)
    t0 = time.monotonic()
    with claim_lock(url):
        assert time.monotonic() - t0 < 5  # its pid is gone on this host: not the 180 s of a silent holder
