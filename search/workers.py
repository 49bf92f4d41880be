"""Running a study: warm start, the budget, worker processes, heartbeat, retries, Ctrl-C and progress lines.

Every worker (a process here, or the same command on another machine) runs the same loop against the shared
storage: fail stale trials (their worker stopped beating; they are re-queued), stop when the budget is spent,
otherwise ask for a trial, run the objective under a heartbeat and tell the result. The budget `n_trials`
counts trials that are complete, pruned, or failed by their own design (`objective.counts_toward_budget`);
crashed trials do not count, since their retry will run the design again. A trial started while the budget
was being taken by trials of other workers is put back as WAITING, so the study ends with exactly `n_trials`
counted trials however many workers share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from evaluation.errors import UserError
from search import optuna_adapter
from search.export import rank_trials
from search.objective import CRASH, DesignFailed, Objective, counts_toward_budget
from search.storage import RetryCrashedTrial, display_url, make_storage
from search.studies import PrunerDef, SamplerDef, StudyDef, load_study_def

DEFAULT_OBJECTIVE = "search.objective:make_objective"
# Failed designs are recorded and the study goes on, but this many failures in a row stop the worker.
MAX_FAILURES_IN_A_ROW = 5


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


def default_threads(n_workers: int) -> int:
    """Torch threads per worker: half the cores shared out, at least 1.

    Measured on the 2-core machine (docs/search.md): with other processes busy, 2 threads made a tiny trial
    50x slower than 1 thread (OpenMP threads spin-waiting on an oversubscribed CPU), so cores are never
    all claimed; `--threads` overrides.
    """
    return max(1, (os.cpu_count() or 1) // n_workers // 2)


def make_sampler(d: SamplerDef, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler; with a seed, worker i uses seed + i so workers do not propose the same points."""
    seed = None if d.seed is None else d.seed + worker_index
    if d.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with optuna_adapter.no_experimental_warning():
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=d.n_startup_trials,
            multivariate=d.multivariate,
            # The space is conditional (a field exists only where it acts): group=True models each set of
            # co-occurring fields jointly instead of dropping to independent sampling.
            group=d.multivariate,
            constant_liar=d.constant_liar,
        )


def make_pruner(d: PrunerDef, n_steps: int) -> optuna.pruners.BasePruner:
    """The study's pruner; steps are contexts counted across the study's benchmarks."""
    if d.name == "none":
        return optuna.pruners.NopPruner()
    if d.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=d.n_startup_trials, n_warmup_steps=d.n_warmup_steps
        )
    if d.name == "percentile":
        return optuna.pruners.PercentilePruner(
            d.percentile, n_startup_trials=d.n_startup_trials, n_warmup_steps=d.n_warmup_steps
        )
    if d.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=d.min_resource, reduction_factor=d.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=d.min_resource, max_resource=n_steps, reduction_factor=d.reduction_factor
    )


def load_objective_factory(ref: str) -> Callable[..., Objective]:
    """Resolve "module:attr" to the objective factory."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------------------------------------
# Study preparation (once per command, before workers start)


def prepare_study(study_def: StudyDef, storage_url: str) -> optuna.Study:
    """Create or load the study; record its definition; enqueue the warm-start presets the first time only."""
    storage = make_storage(storage_url)
    study = optuna.create_study(
        study_name=study_def.name, storage=storage, direction="maximize", load_if_exists=True
    )
    attrs = study.user_attrs
    text = study_def.path.read_text(encoding="utf-8")
    if attrs.get("study_file") != text:
        study.set_user_attr("study_file", text)  # what the dashboard shows as the study's definition
        study.set_user_attr("benchmarks", list(study_def.experiments))
    if study_def.warm_start and "warm_start" not in attrs:
        import space

        # Mark first, then enqueue: a second command starting at the same moment sees the mark; the
        # skip_if_exists check covers the remaining window.
        study.set_user_attr("warm_start", list(study_def.warm_start))
        for name in study_def.warm_start:
            params = space.trial_params({**space.PRESETS, **space.VARIANTS}[name], study_def.fixed)
            study.enqueue_trial(params, user_attrs={"warm_start": name}, skip_if_exists=True)
    return study


# ----------------------------------------------------------------------------------------------------------
# The worker loop


@contextlib.contextmanager
def claim_lock(storage_url: str) -> Iterator[None]:
    """Serialize taking a trial among the processes of this machine that share one SQLite file.

    SQLite has no row locks (`SELECT ... FOR UPDATE`), so two workers popping the same WAITING trial (a
    warm-start preset) could both set it RUNNING; measured: two workers started together both ran trial 0.
    PostgreSQL locks the row, and SQLite files are only shared within one machine, so a file lock suffices.
    """
    if not storage_url.startswith("sqlite:///"):
        yield
        return
    db = Path(storage_url[len("sqlite:///") :]).resolve()
    digest = hashlib.sha1(str(db).encode()).hexdigest()[:16]
    lock_path = (
        Path(tempfile.gettempdir()) / f"search-claim-{digest}.lock"
    )  # not beside the db: no repo clutter
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sigint_once(signum: int, frame: Any) -> None:
    """First Ctrl-C raises KeyboardInterrupt; later ones are ignored so the cleanup can finish."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


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


class _Progress:
    """One line per finished trial: done / budget, best value, trials per hour since this command began."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.tag = f"[worker {spec.worker_index}] " if spec.n_workers > 1 else ""

    def say(self, text: str) -> None:
        print(f"{self.tag}{text}", flush=True)

    def trial_done(self, study: optuna.Study, trial: FrozenTrial, seconds: float) -> None:
        trials = study.get_trials(deepcopy=False)
        counted = [t for t in trials if counts_toward_budget(t)]
        best = next(iter(rank_trials(trials)), None)
        since = datetime.fromtimestamp(self.spec.started_at)
        recent = [t for t in counted if t.datetime_complete is not None and t.datetime_complete >= since]
        hours = max(time.time() - self.spec.started_at, 1e-9) / 3600
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        note = f" ({trial.user_attrs['warm_start']})" if "warm_start" in trial.user_attrs else ""
        reason = trial.user_attrs.get("fail_reason")
        best_txt = f"{best.value:.4f} (#{best.number})" if best is not None else "-"
        self.say(
            f"trial {trial.number}{note} {trial.state.name.lower()} {value} in {seconds:.0f} s"
            f"{' - ' + reason if reason else ''} | {len(counted)}/{self.spec.n_trials} done, "
            f"best {best_txt}, "
            f"{len(recent) / hours:.0f} trials/h"
        )


def run_worker(spec: WorkerSpec) -> int:
    """Run trials of the study until its budget is spent; return 0 (KeyboardInterrupt propagates)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        return _worker_loop(spec)
    finally:
        torch.set_num_threads(previous)  # run in-process (tests, one worker): leave the process as found


def _worker_loop(spec: WorkerSpec) -> int:
    study_def = load_study_def(spec.study_file)
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
        sampler=make_sampler(study_def.sampler, spec.worker_index),
        pruner=make_pruner(study_def.pruner, study_def.n_steps),
    )
    objective = load_objective_factory(spec.objective)(study_def, data_dir=spec.data_dir, device=spec.device)
    progress = _Progress(spec)
    poll_s = max(1, min(5, w.heartbeat_interval))
    waiting_said = False
    failures_in_a_row = 0
    while True:
        optuna_adapter.fail_stale_trials(study)  # dead workers' trials: FAIL, re-queued by RetryCrashedTrial
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
        with claim_lock(spec.storage_url), warnings.catch_warnings():
            # optuna warns that heartbeats are meant for Study.optimize; this loop records them itself
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
            surplus = _is_surplus(study, trial, spec.n_trials)
            if surplus:  # another worker took the last slot in the same instant
                optuna_adapter.put_back(storage, study, trial.number)
        if surplus:
            continue
        state = _run_trial(study, storage, trial, objective, retry, w.heartbeat_interval, progress)
        if state is None:
            continue
        failures_in_a_row = failures_in_a_row + 1 if state == TrialState.FAIL else 0
        if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise RuntimeError(
                f"{failures_in_a_row} trials in a row failed (last: trial {trial.number}); that looks like a bug "
                "rather than bad designs: see their fail_reason with `python -m search status`"
            )


def _run_trial(
    study: optuna.Study,
    storage: RDBStorage,
    trial: optuna.Trial,
    objective: Objective,
    retry: RetryCrashedTrial,
    heartbeat_interval: int,
    progress: _Progress,
) -> TrialState | None:
    """Run one trial under a heartbeat and tell its result; return its final state (None: dropped)."""
    t0 = time.perf_counter()
    state, value = TrialState.COMPLETE, None
    try:
        beat = optuna_adapter.trial_id(storage, study, trial.number)
        with optuna_adapter.Heartbeat(storage, beat, heartbeat_interval):
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except DesignFailed:
                state = TrialState.FAIL
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker finished this trial meanwhile (it judged our heartbeat stale and re-queued it): the
        # retry runs the design again, so this run is dropped and the worker goes on.
        progress.say(f"trial {trial.number} was closed by another worker meanwhile; dropping this run")
        return None
    except BaseException as exc:  # Ctrl-C, missing data, a bug: fail the trial, re-queue it, stop this worker
        previous = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the trial RUNNING
        try:
            reason = (
                "interrupted (Ctrl-C)"
                if isinstance(exc, KeyboardInterrupt)
                else f"{type(exc).__name__}: {exc}"
            )
            with contextlib.suppress(Exception):
                trial.set_user_attr("fail_reason", reason)
                trial.set_user_attr("fail_kind", CRASH)
            with contextlib.suppress(Exception):
                study.tell(trial, state=TrialState.FAIL)
            retried = retry(study, optuna_adapter.frozen_trial(storage, study, trial.number))
            again = f"; re-queued as trial {retried}" if retried is not None else ""
            progress.say(f"trial {trial.number} {reason}: marked failed{again}")
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)
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


# ----------------------------------------------------------------------------------------------------------
# Several worker processes on this machine


def _worker_process(spec: WorkerSpec) -> None:
    """Entry point of a spawned worker: share the cores, run the loop, exit 0 / 2 (user error) / 130 / 1."""
    signal.signal(signal.SIGINT, _sigint_once)
    from clharness.errors import HarnessError

    try:
        code = run_worker(spec)
    except KeyboardInterrupt:
        code = 130
    except (UserError, HarnessError) as exc:
        print(f"[worker {spec.worker_index}] error: {exc}", file=sys.stderr, flush=True)
        code = 2
    except Exception:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.exit(code)


def run_workers(spec: WorkerSpec, n_workers: int) -> int:
    """Run `n_workers` (1: in this process) on the study; return the worst exit code of the workers."""
    if n_workers == 1:
        return run_worker(replace(spec, n_workers=1))
    ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and the SQLite connection
    procs = [
        ctx.Process(target=_worker_process, args=(replace(spec, worker_index=i, n_workers=n_workers),))
        for i in range(n_workers)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to every worker too; forward it for the case it reached only this process.
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
        raise
    codes = [p.exitcode for p in procs]
    if any(c == 130 for c in codes):
        raise KeyboardInterrupt
    for bad in (2, 1):
        if bad in codes:
            return bad
    if any(c not in (0, None) for c in codes):
        return 1
    return 0


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO logs duplicate our progress lines."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def run_study(
    study_def: StudyDef,
    storage_url: str,
    *,
    n_trials: int | None = None,
    n_workers: int = 1,
    data_dir: str | None = None,
    device: str = "auto",
    objective: str = DEFAULT_OBJECTIVE,
    threads: int | None = None,
) -> int:
    """Create or resume the study and run workers until `n_trials` (default: the study's) are counted."""
    budget = n_trials if n_trials is not None else study_def.n_trials
    if n_workers < 1:
        raise UserError(f"--workers must be at least 1, got {n_workers}")
    with quiet_optuna():
        study = prepare_study(study_def, storage_url)
        trials = study.get_trials(deepcopy=False)
        done = sum(counts_toward_budget(t) for t in trials)
        where = display_url(storage_url)
        if done >= budget:
            print(
                f"study {study_def.name}: complete, {done}/{budget} trials in {where}; "
                "raise --n-trials to run more"
            )
            return 0
        print(
            f"study {study_def.name}: {done}/{budget} trials done, storage {where}, {n_workers} worker(s) "
            f"x {threads if threads is not None else default_threads(n_workers)} thread(s), "
            f"benchmarks {', '.join(study_def.experiments)}",
            flush=True,
        )
        spec = WorkerSpec(
            study_file=str(study_def.path),
            storage_url=storage_url,
            n_trials=budget,
            data_dir=data_dir,
            device=device,
            objective=objective,
            started_at=time.time(),
            threads=threads if threads is not None else default_threads(n_workers),
        )
        code = run_workers(spec, n_workers)
        if code == 0:
            _summary(study, budget)
        return code


def _summary(study: optuna.Study, budget: int) -> None:
    trials = study.get_trials(deepcopy=False)
    done = sum(counts_toward_budget(t) for t in trials)
    ranked = rank_trials(trials)
    if not ranked:
        print(f"study {study.study_name}: {done}/{budget} trials, none complete")
        return
    best = ranked[0]
    scores = ", ".join(f"{k} {v:.4f}" for k, v in best.user_attrs.get("scores", {}).items())
    print(
        f"study {study.study_name}: {done}/{budget} trials; best trial {best.number}: {best.value:.4f} "
        f"({scores}); "
        f"write it with: python -m search export --study {study.study_name} --out custom_regularization.py"
    )
