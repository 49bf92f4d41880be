"""Running a study: warm start, the budget, worker processes, heartbeat, retries, Ctrl-C and progress lines.

Every worker (a process here, or the same command on another machine) runs the same loop against the shared
storage: fail stale trials (their worker stopped beating; they are re-queued), stop when the budget is spent,
otherwise ask for a trial, run the objective under a heartbeat and tell the result. The budget `n_trials`
counts trials that are complete, pruned, or failed by their own design (`objective.counts_toward_budget`);
crashed trials do not count, since their retry will run the design again. A trial started while the budget
was being taken by trials of other workers is put back as WAITING, so the study ends with exactly `n_trials`
counted trials however many workers share it.

Before any trial the command probes the data the workers will train on (`search.data_check`): a study records
its data's source and fingerprint and refuses trials scored on other data. Each trial is sampled with a seed of
its own (`PerTrialSeedSampler`), so no process, worker or resume proposes a design again from the same seed.
SIGTERM (a scheduler's stop) is handled like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from clharness.errors import HarnessError
from clharness.protocol import PROTOCOLS
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from evaluation.errors import UserError
from search import data_check, interrupts, optuna_adapter
from search.annotate import annotate_study
from search.interrupts import (
    EXIT_CODES,
    Interrupted,
    interrupt_reason,
    interrupt_signals,
    signals_ignored,
    signame_of,
)
from search.objective import DesignFailed, Objective
from search.records import CRASH, counts_toward_budget, quiet_optuna, rank_trials
from search.storage import (
    RetryCrashedTrial,
    check_writable,
    display_url,
    local_storage_url,
    make_storage,
    sqlite_path,
)
from search.studies import PrunerDef, SamplerDef, StudyDef, load_study_def

DEFAULT_OBJECTIVE = "search.objective:make_objective"
# "module:function(experiments, data_dir) -> data record" (search.data_check.probe; tests swap in a stand-in)
DEFAULT_PROBE = "search.data_check:probe"
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
    probe: str = DEFAULT_PROBE  # how the worker fingerprints its data (checked against the study's record)
    study_name: str = ""  # the study's name when it is not its file's (`NAME_offline`, studies.as_offline)


def default_threads(n_workers: int) -> int:
    """Torch threads per worker: half the cores shared out, at least 1.

    Measured on the 2-core machine (docs/search.md): with other processes busy, 2 threads made a tiny trial
    50x slower than 1 thread (OpenMP threads spin-waiting on an oversubscribed CPU), so cores are never
    all claimed; `--threads` overrides.
    """
    return max(1, (os.cpu_count() or 1) // n_workers // 2)


def trial_seed(seed: int | None, number: int) -> int | None:
    """The sampler seed of trial `number`: derived from the study file's `seed`; None (fresh entropy) without one."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"search-sampler:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")  # numpy's RandomState takes < 2**32


def base_sampler(d: SamplerDef, seed: int | None) -> optuna.samplers.BaseSampler:
    """The study's sampler with one seed."""
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


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """The study's sampler, made afresh for every trial with the seed `trial_seed(seed, trial number)`.

    A sampler seeded once per process proposes the same sequence on every start: a resumed run, or a second
    process joining the study, ran designs again (measured: 6 trials held 5 distinct designs; two processes
    with 2 workers each duplicated 2 of 12). Trial numbers are unique within a study, so no two trials draw
    from the same seed whichever process, worker or resume runs them; with a `seed` in the study file trial n
    is still reproducible (the same seed and, with one worker, the same history), without one every trial
    draws fresh entropy. The samplers keep no state between trials besides their random generator (TPE reads
    the history from the storage), so nothing is lost by making them per trial.
    """

    def __init__(self, d: SamplerDef) -> None:
        self._def = d
        self._inner = base_sampler(d, trial_seed(d.seed, -1))

    def __str__(self) -> str:
        return f"PerTrialSeedSampler({self._inner})"

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = base_sampler(self._def, trial_seed(self._def.seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(d: SamplerDef) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per trial (`PerTrialSeedSampler`)."""
    return PerTrialSeedSampler(d)


def make_pruner(d: PrunerDef, n_steps: int) -> optuna.pruners.BasePruner:
    """The study's pruner; steps are contexts counted across the study's benchmarks."""
    if d.name == "none":
        return optuna.pruners.NopPruner()
    if d.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=d.n_startup_trials,
            n_warmup_steps=d.n_warmup_steps,
            interval_steps=d.interval_steps,
        )
    if d.name == "percentile":
        return optuna.pruners.PercentilePruner(
            d.percentile,
            n_startup_trials=d.n_startup_trials,
            n_warmup_steps=d.n_warmup_steps,
            interval_steps=d.interval_steps,
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


def check_scoring(study_def: StudyDef, recorded: Any, where: str) -> None:
    """Refuse (UserError) a study file whose scoring differs from the one the study's trials were scored with:
    their values would no longer be comparable. Sampler, pruner, budget and workers may change."""
    now = json.loads(json.dumps(study_def.scoring))  # as the storage holds it (tuples become lists)
    if recorded is None or recorded == now:
        return
    what = next((key for key in now if recorded.get(key) != now[key]), "benchmarks")
    if what == "space":  # studies made before the version was recorded sampled version 2 or an earlier one
        raise UserError(
            f"study {study_def.name!r} in {where} sampled version {recorded.get('space', '2 or earlier')} of the "
            f"design space, and the code now has version {now['space']}: its trials' values would mix. Give the "
            "study a new name"
        )
    if (
        what == "benchmarks"
        and recorded.get("benchmarks")
        and {json.dumps(b, sort_keys=True) for b in recorded["benchmarks"]}
        == {json.dumps(b, sort_keys=True) for b in now["benchmarks"]}
    ):
        raise UserError(
            f"study {study_def.name!r} in {where} reported its benchmarks in another order than {study_def.path} "
            f"now gives: old and new reports would mix under the pruner. `python -m search reorder --study "
            f"{study_def.name} --from URL --to NEW_URL` copies the study with its trials' reports in the new order"
        )
    raise UserError(
        f"study {study_def.name!r} in {where} was scored with {what} = {json.dumps(recorded.get(what))}, but "
        f"{study_def.path} now says {json.dumps(now[what])}: the trials' values would mix. Restore the file, or "
        "give the changed study a new name"
    )


# A guard's marker study older than this (seconds) was left by a process that died holding it: it is removed.
GUARD_STALE_S = 120.0
GUARD_POLL_S = 0.1


def guard_name(study_name: str, what: str) -> str:
    """The marker study of `storage_guard` (a study file's name has no colon: never a study of its own)."""
    return f"{study_name}:{what}-guard"


@contextlib.contextmanager
def storage_guard(
    storage: BaseStorage, name: str, *, stale_s: float = GUARD_STALE_S, poll_s: float = GUARD_POLL_S
) -> Iterator[None]:
    """Hold a guard named `name` in the storage itself for a block: of the processes asking at once, on this
    machine or any other sharing the storage, one holds it at a time.

    The guard is a marker study: creating a study is an insert under the storage's unique constraint on study
    names (SQLite, PostgreSQL, MySQL alike), so exactly one process creates it; the others wait until it is
    deleted. A marker that stays longer than `stale_s` belonged to a process that died holding it, and is
    removed.
    """
    seen: tuple[int, float] | None = None  # (marker id, when this process first saw it)
    while True:
        try:
            marker = storage.create_new_study([StudyDirection.MAXIMIZE], name)
            break
        except optuna.exceptions.DuplicatedStudyError:
            try:
                held = storage.get_study_id_from_name(name)
            except KeyError:  # released meanwhile
                continue
            if seen is None or seen[0] != held:
                seen = (held, time.monotonic())
            elif time.monotonic() - seen[1] > stale_s:
                with contextlib.suppress(KeyError):
                    storage.delete_study(held)
                seen = None
                continue
            time.sleep(poll_s)
    try:
        yield
    finally:
        with signals_ignored():
            storage.delete_study(marker)


def enqueue_warm_starts(study: optuna.Study, study_def: StudyDef, storage: BaseStorage) -> None:
    """Enqueue the study file's warm starts once, whatever the number of processes starting together.

    The check (the study's `warm_start` attribute) and the inserts happen under `storage_guard`, so two
    commands starting at the same instant on one new storage cannot both find none and both enqueue (seen: 2
    of 9 pairs ran a warm start twice, each spending a budget slot). The mark is set after the inserts: a
    process that dies between them leaves no mark, and the next one enqueues what is missing (`skip_if_exists`).
    """
    import space  # deferred: it imports torch, which a command that only reads studies does without

    with storage_guard(storage, guard_name(study.study_name, "warm-start")), interrupts.deferred():
        if "warm_start" in study.user_attrs:
            return  # another process enqueued them while this one waited
        for name in study_def.warm_start:
            params = space.trial_params({**space.PRESETS, **space.VARIANTS}[name], study_def.fixed)
            study.enqueue_trial(params, user_attrs={"warm_start": name}, skip_if_exists=True)
        study.set_user_attr("warm_start", list(study_def.warm_start))


def existing_study(storage: BaseStorage, name: str) -> optuna.Study | None:
    """Study `name` of `storage`, or None when the storage holds none of that name (nothing is created)."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def prepare_study(study_def: StudyDef, storage_url: str, data: dict[str, Any] | None = None) -> optuna.Study:
    """Create or load the study; record its definition; enqueue the warm-start presets the first time only.

    An existing study is checked first, before anything is written to it: its scoring and, given this run's
    `data`, its data record must be this run's.
    """
    storage = make_storage(storage_url)
    where = display_url(storage_url)
    found = existing_study(storage, study_def.name)
    if found is not None:
        check_scoring(study_def, found.user_attrs.get("scoring"), where)
        if data is not None:
            data_check.check_same(found.user_attrs.get(data_check.STUDY_ATTR), data, study_def.name, where)
    study = optuna.create_study(
        study_name=study_def.name, storage=storage, direction="maximize", load_if_exists=True
    )
    attrs = study.user_attrs
    check_scoring(study_def, attrs.get("scoring"), where)
    if "scoring" not in attrs:
        study.set_user_attr("scoring", study_def.scoring)
    text = study_def.path.read_text(encoding="utf-8")
    if attrs.get("study_file") != text:
        study.set_user_attr("study_file", text)  # what the dashboard shows as the study's definition
        study.set_user_attr("benchmarks", list(study_def.labels))
    annotate_study(study, study_def.description, storage_url)
    if study_def.warm_start and "warm_start" not in attrs:
        enqueue_warm_starts(study, study_def, storage)
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


# ----------------------------------------------------------------------------------------------------------
# Progress


def format_scores(trial: FrozenTrial) -> str:
    """`permMNIST 0.9012, splitMNIST 0.9876`: a trial's proxy accuracy per benchmark."""
    scores = trial.user_attrs.get("scores") or {}
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, int | float))


def format_best(trials: list[FrozenTrial]) -> str:
    """`0.8520 (#4: permMNIST 0.9012, splitMNIST 0.9876)`, or `-` with no complete trial."""
    best = next(iter(rank_trials(trials)), None)
    if best is None or best.value is None:
        return "-"
    scores = format_scores(best)
    return f"{best.value:.4f} (#{best.number}{': ' + scores if scores else ''})"


def format_duration(seconds: float) -> str:
    """`45 s`, `12 min`, `3.4 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def seconds_per_trial(trials: list[FrozenTrial], last: int = 20) -> float | None:
    """Mean wall time of the last `last` counted trials (from their start and end times), None without any."""
    spans = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if counts_toward_budget(t) and t.datetime_start is not None and t.datetime_complete is not None
    ]
    spans = spans[-last:]
    return sum(spans) / len(spans) if spans else None


def step_positions(study_def: StudyDef) -> list[str]:
    """What step n (1-based, index n - 1) of a trial has reached: `permMNIST seed 1001, context 4/10`."""
    out: list[str] = []
    for b in study_def.benchmarks:
        n = b.contexts if b.contexts is not None else PROTOCOLS[b.experiment].contexts
        for seed in b.seeds:
            out.extend(f"{b.label} seed {seed}, context {k}/{n}" for k in range(1, n + 1))
    return out


def live_progress_enabled() -> bool:
    """The updating per-context line is drawn on a terminal only (a log gets the per-trial lines)."""
    return sys.stdout.isatty()


class _Progress:
    """Progress on stdout: one line per finished trial (done / budget, the best so far with its per-benchmark
    scores, trials per hour since this command began, the ETA of the budget) and, on a terminal, one updating
    line with the benchmark, seed and context the running trial has reached."""

    def __init__(self, spec: WorkerSpec, study_def: StudyDef) -> None:
        self.spec = spec
        self.tag = f"[worker {spec.worker_index}] " if spec.n_workers > 1 else ""
        self.live = live_progress_enabled()
        self.positions = step_positions(study_def)
        self._shown = False
        self._t0 = time.monotonic()

    def _clear(self) -> None:
        if self._shown:
            sys.stdout.write("\r\x1b[K")
            self._shown = False

    def say(self, text: str) -> None:
        self._clear()
        print(f"{self.tag}{text}", flush=True)

    def trial_started(self) -> None:
        self._t0 = time.monotonic()

    def step(self, number: int, step: int) -> None:
        """The trial reported step `step`: redraw the live line."""
        if not self.live:
            return
        where = self.positions[step - 1] if 0 < step <= len(self.positions) else f"step {step}"
        total = len(self.positions)
        text = f"{self.tag}trial {number}: {where} (step {step}/{total}), {time.monotonic() - self._t0:.0f} s"
        sys.stdout.write(f"\r{text}\x1b[K")
        sys.stdout.flush()
        self._shown = True

    def trial_done(self, study: optuna.Study, trial: FrozenTrial, seconds: float) -> None:
        trials = study.get_trials(deepcopy=False)
        counted = [t for t in trials if counts_toward_budget(t)]
        since = datetime.fromtimestamp(self.spec.started_at)
        recent = [t for t in counted if t.datetime_complete is not None and t.datetime_complete >= since]
        hours = max(time.time() - self.spec.started_at, 1e-9) / 3600
        rate = len(recent) / hours
        left = max(self.spec.n_trials - len(counted), 0)
        eta = f", ETA {format_duration(left / rate * 3600)}" if rate > 0 and left else ""
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        note = f" ({trial.user_attrs['warm_start']})" if "warm_start" in trial.user_attrs else ""
        reason = trial.user_attrs.get("fail_reason")
        self.say(
            f"trial {trial.number}{note} {trial.state.name.lower()} {value} in {seconds:.0f} s"
            f"{' - ' + reason if reason else ''} | {len(counted)}/{self.spec.n_trials} done, "
            f"best {format_best(trials)}, {rate:.0f} trials/h{eta}"
        )


# ----------------------------------------------------------------------------------------------------------
# The worker loop


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
    progress = _Progress(spec, study_def)
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
    progress: _Progress,
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
    progress: _Progress,
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


# ----------------------------------------------------------------------------------------------------------
# Several worker processes on this machine


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
