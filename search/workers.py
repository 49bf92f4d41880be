"""Running a study: the command's part (`run_study`) and its worker processes.

The command checks the storage and the data before anything is created (a study records its data's source and
fingerprint and refuses trials scored on other data, `search.data_check`), prepares the study once
(`search.prepare`: scoring checked, definition recorded, warm starts enqueued), starts the workers, each running
`search.loop` against the shared storage with its own sampler (`search.sampling`) and progress lines
(`search.progress`), and says at the end where the best trial stands. A worker that dies is said with why; the
others finish the budget. SIGTERM (a scheduler's stop) is handled like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from typing import Any

import optuna
from clharness.errors import HarnessError
from optuna.trial import TrialState

from evaluation.errors import UserError
from search import data_check, interrupts
from search.interrupts import EXIT_CODES, Interrupted, interrupt_signals, signame_of
from search.loop import DEFAULT_OBJECTIVE, DEFAULT_PROBE, WorkerSpec, load_ref, run_worker
from search.prepare import prepare_study
from search.progress import format_best, format_duration, format_scores, seconds_per_trial
from search.records import counts_toward_budget, quiet_optuna, rank_trials
from search.storage import check_writable, display_url, local_storage_url, make_storage, sqlite_path
from search.studies import StudyDef


def default_threads(n_workers: int) -> int:
    """Torch threads per worker: half the cores shared out, at least 1.

    Measured on the 2-core machine (docs/search.md): with other processes busy, 2 threads made a tiny trial
    50x slower than 1 thread (OpenMP threads spin-waiting on an oversubscribed CPU), so cores are never
    all claimed; `--threads` overrides.
    """
    return max(1, (os.cpu_count() or 1) // n_workers // 2)


def _exit_line(exc: BaseException) -> str:
    """`Type: first line of the message`."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _worker_process(spec: WorkerSpec, deaths: Any) -> None:
    """Entry point of a spawned worker: run the loop, exit 0 / 2 (user error) / 130, 143 (signal) / 1.

    A worker that dies puts (index, why) on `deaths` so that the command can say which worker died and why
    (a user error in one line, a bug with its traceback printed here too).
    """
    interrupts.install()
    try:
        code = run_worker(spec)
    except KeyboardInterrupt as exc:
        code = EXIT_CODES[signame_of(exc)]
    except (UserError, HarnessError) as exc:  # said in one line by the command (`run_workers`)
        deaths.put((spec.worker_index, str(exc)))
        code = 2
    except Exception as exc:
        traceback.print_exc()
        deaths.put((spec.worker_index, _exit_line(exc)))
        code = 1
    sys.stdout.flush()
    sys.exit(code)


def _death_line(index: int, code: int | None, why: str | None) -> str:
    if why is not None:
        return f"worker {index} died: {why}"
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"worker {index} was killed by {name}{hint}"
    return f"worker {index} exited with code {code}"


def run_workers(spec: WorkerSpec, n_workers: int) -> int:
    """Run `n_workers` (1: in this process) on the study; return the worst exit code of the workers.

    When a worker dies the others go on (its trial is re-queued, or failed as stale after the grace period and
    retried) and finish the budget; the command then says which worker died and why, on stderr.
    """
    if n_workers == 1:
        return run_worker(replace(spec, n_workers=1))
    ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and the SQLite connection
    deaths = ctx.SimpleQueue()
    procs = [
        ctx.Process(target=_worker_process, args=(replace(spec, worker_index=i, n_workers=n_workers), deaths))
        for i in range(n_workers)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt as exc:
        # Forward the signal for the case it reached only this process (a scheduler's SIGTERM to our pid).
        sig = signal.Signals[signame_of(exc)]
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
        raise
    why: dict[int, str] = {}
    while not deaths.empty():
        index, text = deaths.get()
        why[index] = text
    codes = [p.exitcode for p in procs]
    for signame, exit_code in EXIT_CODES.items():
        if exit_code in codes:
            raise Interrupted(signame)
    dead = [i for i, c in enumerate(codes) if c != 0]
    for i in dead:
        print(_death_line(i, codes[i], why.get(i)), file=sys.stderr, flush=True)
    if dead and len(dead) < n_workers:
        print(f"the other {n_workers - len(dead)} worker(s) went on to the end", file=sys.stderr, flush=True)
    for bad in (2, 1):
        if bad in codes:
            return bad
    return 1 if dead else 0


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
    probe: str = DEFAULT_PROBE,
    data: dict[str, Any] | None = None,
) -> int:
    """Create or resume the study and run workers until `n_trials` (default: the study's) are counted.

    Refuses (UserError) a reference storage, and data other than the study's. The data is loaded (`probe`,
    unless the command gave its record as `data`) before a new SQLite storage is made or a study created: a
    study is created only once its first trial can run. SIGINT and SIGTERM raise `Interrupted` once the
    running trials are failed and re-queued.
    """
    budget = n_trials if n_trials is not None else study_def.n_trials
    if n_workers < 1:
        raise UserError(f"--workers must be at least 1, got {n_workers}")
    check_writable(storage_url)
    with quiet_optuna(), interrupt_signals():
        file = sqlite_path(storage_url)
        if file is None or file.exists():
            make_storage(storage_url)  # a bad URL is one line before the data is loaded
        if data is None:
            data = load_ref(probe)(study_def.experiments, data_dir)
        study = prepare_study(study_def, storage_url, data)
        trials = study.get_trials(deepcopy=False)
        where = display_url(storage_url)
        ran = [t.number for t in trials if t.state != TrialState.WAITING]  # enqueued warm starts have not run
        note = data_check.adopt_or_check(study, data, where, first_trial=max(ran, default=-1) + 1)
        if note:
            print(note, flush=True)
        done = sum(counts_toward_budget(t) for t in trials)
        if done >= budget:
            print(
                f"study {study_def.name}: complete, {done}/{budget} trials in {where}; "
                "raise --n-trials to run more"
            )
            return 0
        n_threads = threads if threads is not None else default_threads(n_workers)
        history = ""
        if done:
            per_trial = seconds_per_trial(trials)
            eta = (
                f", ~{format_duration(per_trial)} per trial: ETA {format_duration((budget - done) * per_trial / n_workers)}"
                if per_trial
                else ""
            )
            history = f", best {format_best(trials)}{eta}"
        print(
            f"study {study_def.name}: {done}/{budget} trials done{history}; storage {where}, "
            f"{n_workers} worker(s) x {n_threads} thread(s), benchmarks {', '.join(study_def.labels)}, "
            f"{data_check.describe(data)}",
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
            threads=n_threads,
            probe=probe,
            study_name="" if study_def.name == study_def.path.stem else study_def.name,
        )
        code = run_workers(spec, n_workers)
        _summary(study, budget, data, storage_url)
        return code


def _summary(study: optuna.Study, budget: int, data: dict[str, Any], storage_url: str) -> None:
    trials = study.get_trials(deepcopy=False)
    done = sum(counts_toward_budget(t) for t in trials)
    offline = f" (data: {data_check.describe(data)})" if data_check.is_offline(data) else ""
    ranked = rank_trials(trials)
    if not ranked:
        print(f"study {study.study_name}: {done}/{budget} trials, none complete{offline}")
        return
    best = ranked[0]
    name = study.study_name
    where = "" if storage_url == local_storage_url(name) else f" --storage {display_url(storage_url)}"
    # An offline study's module is a demo: it does not replace the shipped custom_regularization.py.
    out = f"studies/local/{name}.py" if offline else "custom_regularization.py"
    print(
        f"study {name}: {done}/{budget} trials; best trial {best.number}: {best.value:.4f} "
        f"({format_scores(best)}){offline}; "
        f"write it with: python -m search export --study {name}{where} --out {out}"
    )
