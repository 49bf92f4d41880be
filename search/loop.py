"""The worker loop: what every worker (a process here, or the same command on another machine) runs against the
shared storage until the study's budget is spent.

Each round: fail stale trials (their worker stopped beating; they are re-queued), stop when the budget is spent,
otherwise ask for a trial, run the objective under a heartbeat and tell the result. The budget `n_trials` counts
trials that are complete, pruned, or failed by their own design (`records.counts_toward_budget`); crashed trials
do not count, since their retry will run the design again. A trial started while the budget was being taken by
trials of other workers is put back as WAITING, so the study ends with exactly `n_trials` counted trials however
many workers share it. A worker checks that its data is the study's before its first trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from evaluation.claims import exclusive
from evaluation.errors import UserError
from search import data_check, interrupts, optuna_adapter
from search.interrupts import interrupt_reason, signals_ignored
from search.objective import DesignFailed, Objective
from search.progress import Progress
from search.records import CRASH, counts_toward_budget
from search.sampling import make_pruner, make_sampler
from search.storage import RetryCrashedTrial, make_storage
from search.studies import StudyDef, load_study_def

DEFAULT_OBJECTIVE = "search.objective:make_objective"
# "module:function(experiments, data_dir) -> data record" (search.data_check.probe; tests swap in a stand-in)
DEFAULT_PROBE = "search.data_check:probe"
# Failed designs are recorded and the study goes on, but this many failures in a row stop the worker.
MAX_FAILURES_IN_A_ROW = 5
# How often a worker waiting to take a trial looks again (taking one holds the lock for milliseconds).
CLAIM_LOCK_POLL_S = 0.05


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process needs (picklable: it crosses the spawn boundary)."""

    study_file: str
    storage_url: str
    n_trials: int
    data_dir: str | None = None
    device: str = "auto"
    objective: str = DEFAULT_OBJECTIVE  # "module:factory(study_def, data_dir=, device=) -> objective"
    worker_index: int = 0
    n_workers: int = 1
    started_at: float = 0.0  # epoch seconds when the command began (for the trials-per-hour rate)
    threads: int = 1  # torch CPU threads of this worker
    probe: str = DEFAULT_PROBE  # how the worker fingerprints its data (checked against the study's record)
    study_name: str = ""  # the study's name when it is not its file's (`NAME_offline`, studies.as_offline)


def load_objective_factory(ref: str) -> Callable[..., Objective]:
    """Resolve "module:attr" to the objective factory."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def load_ref(ref: str) -> Callable[..., Any]:
    """Resolve "module:attr"."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def run_worker(spec: WorkerSpec) -> int:
    """Run trials of the study until its budget is spent; return 0 (KeyboardInterrupt propagates)."""
    import torch  # deferred: a command that only reads studies starts without it

    previous = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        return _worker_loop(spec)
    finally:
        torch.set_num_threads(previous)  # run in-process (tests, one worker): leave the process as found


def _check_worker_data(study: optuna.Study, spec: WorkerSpec, study_def: StudyDef) -> dict[str, Any]:
    """This worker's data record, which must be the study's (the command recorded it before starting us)."""
    mine: dict[str, Any] = load_ref(spec.probe)(study_def.experiments, spec.data_dir)
    stored = study.user_attrs.get(data_check.STUDY_ATTR)
    if isinstance(stored, dict) and not data_check.same_data(stored, mine):
        raise UserError(
            f"this worker's data ({mine['source']}, fingerprint {mine['fingerprint']}) is not the data study "
            f"{study.study_name!r} is scored on ({stored.get('source')}, fingerprint {stored.get('fingerprint')})"
        )
    return mine


def _worker_loop(spec: WorkerSpec) -> int:
    study_def = load_study_def(spec.study_file)
    if spec.study_name:
        study_def = replace(study_def, name=spec.study_name)
    w = study_def.workers
    storage = make_storage(
        spec.storage_url,
        heartbeat_interval=w.heartbeat_interval,
        grace_period=w.grace_period,
        max_retry=w.max_retry,
    )
    retry = RetryCrashedTrial(w.max_retry)
    study = optuna.load_study(
        study_name=study_def.name,
        storage=storage,
        sampler=make_sampler(study_def.sampler),
        pruner=make_pruner(study_def.pruner, study_def.n_steps),
    )
    objective = load_objective_factory(spec.objective)(study_def, data_dir=spec.data_dir, device=spec.device)
    data = _check_worker_data(study, spec, study_def)
    progress = Progress(
        study_def,
        n_trials=spec.n_trials,
        started_at=spec.started_at,
        worker_index=spec.worker_index,
        n_workers=spec.n_workers,
    )
    stale_reason = {
        "fail_reason": (
            f"its worker stopped beating for over {w.grace_period} s (killed, machine lost, or the storage "
            "was unreachable); re-queued"
        ),
        "fail_kind": CRASH,
    }
    poll_s = max(1, min(5, w.heartbeat_interval))
    waiting_said = False
    failures_in_a_row = 0
    while True:
        interrupts.raise_if_interrupted()  # a Ctrl-C swallowed where Python ignores exceptions stops us here
        # dead workers' trials: FAIL with a reason, re-queued by RetryCrashedTrial
        for number in optuna_adapter.fail_stale_trials(study, storage, stale_reason):
            progress.say(f"trial {number}: {stale_reason['fail_reason']}")
        trials = study.get_trials(deepcopy=False)
        done = sum(counts_toward_budget(t) for t in trials)
        if done >= spec.n_trials:
            return 0
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        if done + len(running) >= spec.n_trials:
            if not waiting_said:
                progress.say(
                    f"budget taken: waiting for running trial(s) {running} to finish (or, if their "
                    f"worker died, to time out after {w.grace_period} s and be retried)"
                )
                waiting_said = True
            time.sleep(poll_s)
            continue
        waiting_said = False
        trial, surplus = _ask(study, storage, spec)
        if surplus:
            continue
        state = _run_trial(study, storage, trial, objective, retry, w.heartbeat_interval, progress, data)
        if state is None:
            continue
        failures_in_a_row = failures_in_a_row + 1 if state == TrialState.FAIL else 0
        if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise RuntimeError(
                f"{failures_in_a_row} trials in a row failed (last: trial {trial.number}); that looks like a bug "
                "rather than bad designs: see their fail_reason with `python -m search status`"
            )


def _ask(study: optuna.Study, storage: RDBStorage, spec: WorkerSpec) -> tuple[optuna.Trial, bool]:
    """A new trial and whether it is surplus (put back: another worker took the budget's last slot).

    A Ctrl-C is held until the trial exists, which then goes back to WAITING: no trial is left RUNNING."""
    trial: optuna.Trial | None = None
    try:
        with interrupts.deferred(), claim_lock(spec.storage_url), warnings.catch_warnings():
            # optuna warns that heartbeats are meant for Study.optimize; this loop records them itself
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
            surplus = _is_surplus(study, trial, spec.n_trials)
            if surplus:  # another worker took the last slot in the same instant
                optuna_adapter.put_back(storage, study, trial.number)
    except KeyboardInterrupt:
        if trial is not None:
            with signals_ignored():
                optuna_adapter.put_back(storage, study, trial.number)
        raise
    return trial, surplus


def _storage_cause(exc: BaseException) -> optuna_adapter.StorageUnreachable | None:
    """The `StorageUnreachable` that `exc` was raised from, if any (the objective may wrap it)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, optuna_adapter.StorageUnreachable):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _run_trial(
    study: optuna.Study,
    storage: RDBStorage,
    trial: optuna.Trial,
    objective: Objective,
    retry: RetryCrashedTrial,
    heartbeat_interval: int,
    progress: Progress,
    data: dict[str, Any],
) -> TrialState | None:
    """Run one trial under a heartbeat and tell its result; return its final state (None: dropped)."""
    t0 = time.perf_counter()
    state, value = TrialState.COMPLETE, None
    report = trial.report

    def report_and_show(value: float, step: int) -> None:
        report(value, step)
        progress.step(trial.number, step)

    try:
        trial.report = report_and_show  # type: ignore[method-assign]  # the live line follows the reports
        progress.trial_started()
        beat = optuna_adapter.trial_id(storage, study, trial.number)
        with optuna_adapter.Heartbeat(storage, beat, heartbeat_interval):
            trial.set_user_attr("data_source", data["source"])
            trial.set_user_attr("data_fingerprint", data["fingerprint"])
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except DesignFailed as exc:
                lost = _storage_cause(exc)
                if lost is not None:  # the storage failed under the objective: not the design's fault
                    raise lost from exc
                state = TrialState.FAIL
                if not trial.user_attrs.get("fail_reason"):  # every failed trial says why
                    trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
                    trial.set_user_attr("fail_kind", "design")
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker finished this trial meanwhile (it judged our heartbeat stale and re-queued it): the
        # retry runs the design again, so this run is dropped and the worker goes on.
        progress.say(f"trial {trial.number} was closed by another worker meanwhile; dropping this run")
        return None
    except (
        BaseException
    ) as exc:  # a signal, missing data, a bug: fail the trial, re-queue it, stop this worker
        quick = isinstance(exc, KeyboardInterrupt) and isinstance(storage, optuna_adapter.RetryingRDBStorage)
        with signals_ignored(), storage.without_retry() if quick else contextlib.nullcontext():  # type: ignore[attr-defined]
            _fail_crashed(study, storage, trial, exc, retry, progress)
        raise
    try:
        # a pruned trial keeps its last reported value, as optuna's optimize does
        frozen = study.tell(trial, value) if state == TrialState.COMPLETE else study.tell(trial, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        progress.say(
            f"trial {trial.number} was failed as stale by another worker meanwhile; its retry reruns it"
        )
        return None
    progress.trial_done(study, frozen, time.perf_counter() - t0)
    return frozen.state


def _fail_crashed(
    study: optuna.Study,
    storage: RDBStorage,
    trial: optuna.Trial,
    exc: BaseException,
    retry: RetryCrashedTrial,
    progress: Progress,
) -> None:
    """Mark a crashed trial FAIL with its reason and re-queue it; say in one line what became of it."""
    if isinstance(exc, KeyboardInterrupt):
        reason = interrupt_reason(exc)
    else:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    try:
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("fail_kind", CRASH)
        study.tell(trial, state=TrialState.FAIL)
        retried = retry(study, optuna_adapter.frozen_trial(storage, study, trial.number))
    except optuna.exceptions.UpdateFinishedTrialError:
        progress.say(f"trial {trial.number} {reason}: already closed by another worker")
        return
    except Exception as cleanup:
        if _storage_cause(cleanup) is None and not optuna_adapter.is_connection_error(cleanup):
            raise
        progress.say(
            f"trial {trial.number} {reason}: the storage is unreachable, so it stays RUNNING until its heartbeat "
            "is older than the study's grace_period; the next worker then fails and re-queues it"
        )
        return
    again = f"; re-queued as trial {retried}" if retried is not None else ""
    progress.say(f"trial {trial.number} {reason}: marked failed{again}")


@contextlib.contextmanager
def claim_lock(storage_url: str) -> Iterator[None]:
    """Serialize taking a trial among the processes of this machine that share one SQLite file.

    SQLite has no row locks (`SELECT ... FOR UPDATE`), so two workers popping the same WAITING trial (a
    warm-start preset) could both set it RUNNING; measured: two workers started together both ran trial 0.
    PostgreSQL locks the row, and SQLite files are only shared within one machine, so a file lock suffices: the
    project's claim (`evaluation.claims.exclusive`), on a file named after the database in the temporary folder
    (not beside the database: no clutter in the repository). A holder that died is taken over at once.
    """
    if not storage_url.startswith("sqlite:///"):
        yield
        return
    db = Path(storage_url[len("sqlite:///") :]).resolve()
    digest = hashlib.sha1(str(db).encode()).hexdigest()[:16]
    with exclusive(Path(tempfile.gettempdir()) / f"search-claim-{digest}", poll_s=CLAIM_LOCK_POLL_S):
        yield


def _is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Whether `trial` started after the budget was already taken by counted and earlier running trials."""
    trials = study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == trial.number)

    def key(t: FrozenTrial) -> tuple[datetime, int]:
        return (t.datetime_start or datetime.max, t.number)

    ahead = [
        t for t in trials if t.state == TrialState.RUNNING and t.number != me.number and key(t) < key(me)
    ]
    return sum(counts_toward_budget(t) for t in trials) + len(ahead) >= n_trials
