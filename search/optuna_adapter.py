"""What the worker loop needs from Optuna beyond `Study` and `Trial`: the storage's heartbeat and trial state.

`study.optimize` records heartbeats, fails stale trials and re-queues them itself, but the worker loop cannot use
it: its budget counts trials that failed by their own design and not crashed ones, a trial started after the
budget was taken goes back to WAITING (not FAIL), and a Ctrl-C re-queues the trial without its user attributes.
So the loop asks and tells (public API) and reaches the storage through the functions here, which name trials by
study name and trial number only (no private attributes). They use the storage methods of
`optuna.storages.BaseStorage` and `RDBStorage.record_heartbeat`; pyproject bounds optuna to the versions this
module is tested with (tests/test_search_machinery.py runs every function here).

`SignalSafeRDBStorage` runs each of the RDB storage's calls whole under Ctrl-C, and `RetryingRDBStorage` (for
database servers) also retries them; both wrap the calls, private ones included (those that `_CachedStorage`, Optuna's
wrapper of every RDB storage, makes), so that a database server restart does not end a long worker.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from evaluation.errors import UserError
from search import interrupts


@contextlib.contextmanager
def no_experimental_warning() -> Iterator[None]:
    """Heartbeats, stale-trial failing and the retry callback are marked experimental by Optuna."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def trial_id(storage: BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study`."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def study_id(storage: BaseStorage, name: str) -> int:
    """The storage's id of study `name` (optuna-dashboard's URLs use it)."""
    return storage.get_study_id_from_name(name)


def frozen_trial(storage: BaseStorage, study: optuna.Study, number: int) -> FrozenTrial:
    """Trial `number` as the storage holds it now."""
    return storage.get_trial(trial_id(storage, study, number))


# Study system attributes of optuna-dashboard that name a trial by its storage id (trial notes, and artifacts
# uploaded through old dashboards): a copy gives trials new ids, so these keys are renamed.
_TRIAL_KEY = re.compile(r"^(dashboard:(?:artifacts:)?)(\d+)(:.*)$", re.DOTALL)


def copy_study(
    source_storage: BaseStorage, name: str, target_storage: BaseStorage, trials: Sequence[FrozenTrial]
) -> optuna.Study:
    """Study `name` created in `target_storage` with `trials` (all of the source's, in number order, or changed
    copies of them), its user attributes, and the dashboard's notes moved to the trials' new storage ids."""
    source = optuna.load_study(study_name=name, storage=source_storage)
    numbers = [t.number for t in trials]
    if numbers != list(range(len(source.get_trials(deepcopy=False)))):
        raise ValueError("copy_study takes every trial of the source, in number order")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in ..."
    try:
        target = optuna.create_study(study_name=name, storage=target_storage, directions=source.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    target.add_trials(trials)
    new_id = {trial_id(source_storage, source, n): trial_id(target_storage, target, n) for n in numbers}
    target_id = study_id(target_storage, name)
    for key, value in source_storage.get_study_system_attrs(study_id(source_storage, name)).items():
        if m := _TRIAL_KEY.match(key):
            if int(m.group(2)) not in new_id:
                continue  # a note of a trial of another study in the same file
            key = f"{m.group(1)}{new_id[int(m.group(2))]}{m.group(3)}"
        target_storage.set_study_system_attr(target_id, key, value)
    for key, value in source.user_attrs.items():
        target.set_user_attr(key, value)
    return target


def put_back(storage: BaseStorage, study: optuna.Study, number: int) -> None:
    """Return a RUNNING trial to WAITING, so that a worker takes it later with the same parameters."""
    storage.set_trial_state_values(trial_id(storage, study, number), TrialState.WAITING)


def fail_stale_trials(
    study: optuna.Study, storage: BaseStorage, user_attrs: Mapping[str, Any] | None = None
) -> list[int]:
    """Fail the RUNNING trials whose worker stopped beating, with `user_attrs` (the fail reason) set first; the
    storage's stale-trial callback re-queues them. Returns the numbers of the trials this call failed.

    `optuna.storages.fail_stale_trials` without the attributes: a finished trial's attributes cannot be set.
    """
    if not isinstance(storage, RDBStorage) or storage.get_heartbeat_interval() is None:
        return []
    failed: list[FrozenTrial] = []
    for tid in storage._get_stale_trial_ids(study_id(storage, study.study_name)):
        try:
            for key, value in (user_attrs or {}).items():
                storage.set_trial_user_attr(tid, key, value)
            if storage.set_trial_state_values(tid, state=TrialState.FAIL):
                failed.append(copy.deepcopy(storage.get_trial(tid)))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it (or its own worker finished it) meanwhile
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        with no_experimental_warning():
            for trial in failed:
                callback(study, trial)
    return [t.number for t in failed]


class Heartbeat:
    """Record a trial's heartbeat every `interval` seconds from a daemon thread while the block runs."""

    def __init__(self, storage: Any, trial_id: int, interval: int | None) -> None:
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self._interval is not None:
            self._storage.record_heartbeat(self._trial_id)
            self._thread = threading.Thread(target=self._beat, name="search-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):  # a transient storage error must not kill the trial
                self._storage.record_heartbeat(self._trial_id)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def retry_without_user_attrs(max_retry: int) -> Any:
    """Optuna's retry callback (a WAITING copy of a failed trial's parameters, `failed_trial` and
    `retry_history` system attributes, at most `max_retry` retries), called on a copy of the trial whose user
    attributes are dropped except `warm_start`: the retry must not inherit the crashed run's `fail_reason` or
    partial scores."""
    with no_experimental_warning():
        cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        callback = (cls or optuna.storages.RetryFailedTrialCallback)(max_retry=max_retry)

    def retry(study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.deepcopy(trial)  # optuna's callback appends to the retry history it is given
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k == "warm_start"}
        with no_experimental_warning():
            callback(study, clean)

    return retry


# ----------------------------------------------------------------------------------------------------------
# A storage that rides out a database server restart


class StorageUnreachable(UserError):
    """The database stayed unreachable for the whole retry window: one line, exit code 2."""


class StorageWriteRefused(UserError, optuna.exceptions.StorageInternalError):
    """The database refused a write: a read-only file, folder or connection, or a full disk. One line, exit
    code 2, instead of Optuna's chain that ends in "invalid data in the commit, e.g. exceeding max length".
    Still a `StorageInternalError` for Optuna's own handlers."""


# Messages of the innermost database error (SQLite, PostgreSQL, the OS) -> what the storage is.
_WRITE_REFUSED = (
    ("readonly database", "is read-only"),
    ("read-only", "is read-only"),
    ("permission denied", "is read-only"),
    ("database or disk is full", "is on a full disk"),
    ("no space left on device", "is on a full disk"),
    ("disk full", "is on a full disk"),
)


def write_refused(label: str, exc: BaseException) -> StorageWriteRefused | None:
    """The one-line error of a write the database `label` (its URL as shown) refused (`exc` or what it was
    raised from), or None when `exc` is anything else."""
    from sqlalchemy import exc as sa  # deferred: optuna loads sqlalchemy only when a storage is opened

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        database = isinstance(cur, sa.SQLAlchemyError | sqlite3.Error | OSError) or type(
            cur
        ).__module__.startswith("psycopg")
        text = str(cur).lower()
        what = next((w for needle, w in _WRITE_REFUSED if needle in text), None) if database else None
        if what is not None:
            advice = (
                "free some space; the trials already stored are kept"
                if "full" in what
                else "make the file and its folder writable, or give another --storage"
            )
            return StorageWriteRefused(f"storage {label} {what} ({_first(cur)}): {advice}")
        cur = cur.__cause__ or cur.__context__
    return None


def _first(exc: BaseException) -> str:
    """The first line of `exc`'s message, without sqlalchemy's "(sqlite3.OperationalError)" prefix."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = re.sub(r"^\([\w.]+\)\s*", "", lines[0]) if lines else type(exc).__name__
    return text[:200]


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is a lost or refused database connection."""
    from sqlalchemy import exc as sa  # deferred: optuna loads sqlalchemy only when a storage is opened

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, sa.DBAPIError) and cur.connection_invalidated:
            return True
        if isinstance(cur, sa.OperationalError | sa.InterfaceError | sa.PendingRollbackError):
            return True
        if type(cur).__module__.startswith("psycopg") and type(cur).__name__ in (
            "OperationalError",
            "InterfaceError",
        ):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


# Every RDBStorage method that talks to the database, as BaseStorage and `_CachedStorage` call them.
_DATABASE_CALLS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_n_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


class SignalSafeRDBStorage(RDBStorage):
    """An RDBStorage whose database calls a Ctrl-C or SIGTERM cannot cut in half: the signal's `Interrupted`
    is raised when the call returns (`search.interrupts.deferred`), so no connection is left holding a lock.
    `label` is its URL as errors show it (default: the URL)."""

    def __init__(self, url: str, *, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.label = label or url

    def _call(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with interrupts.deferred():
            return method(self, *args, **kwargs)


class RetryingRDBStorage(SignalSafeRDBStorage):
    """An RDBStorage whose database calls survive a lost connection (a server restart, a failover).

    A call that fails on a lost or refused connection is retried with backoff (0.5 s doubling to 15 s) for up
    to `retry_s` seconds, then raises `StorageUnreachable` (one line). Once a call has given up, later calls
    try once without waiting until one succeeds, so that a worker's cleanup does not wait the window again.
    `log` hears one line when an outage begins and one when it ends. Only the outermost call of a thread
    retries (storage methods call each other).
    """

    def __init__(
        self,
        url: str,
        *,
        retry_s: float,
        label: str | None = None,
        log: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, label=label, **kwargs)
        self.retry_s = retry_s
        self._log = log
        self._init_state()

    def _init_state(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._gave_up = False

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for key in ("_local", "_lock", "_down_since", "_gave_up", "_log"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._log = None
        self._init_state()

    def say(self, text: str) -> None:
        if self._log is not None:
            self._log(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def _call(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if getattr(self._local, "inside", False):
            return method(self, *args, **kwargs)
        self._local.inside = True
        try:
            return self._retry(method, args, kwargs)
        finally:
            self._local.inside = False

    def _retry(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        deadline: float | None = None
        delay = 0.5
        while True:
            try:
                with interrupts.deferred():  # each attempt whole; a signal still ends the waits between them
                    result = method(self, *args, **kwargs)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                now = time.monotonic()
                with self._lock:
                    if self._down_since is None:
                        self._down_since = now
                        self.say(
                            f"storage {self.label} unreachable ({_one_line(exc)}); retrying for up to "
                            f"{self.retry_s:.0f} s"
                        )
                    gave_up = self._gave_up  # this or another thread (the heartbeat) ran out of time
                if deadline is None or gave_up:
                    deadline = now if gave_up else now + self.retry_s
                if now >= deadline:
                    with self._lock:
                        self._gave_up = True
                        since = self._down_since
                    waited = now - since if since is not None else 0.0
                    raise StorageUnreachable(
                        f"storage {self.label} unreachable for {waited:.0f} s ({_one_line(exc)})"
                    ) from exc
                time.sleep(max(0.0, min(delay, deadline - now)))
                delay = min(delay * 2, 15.0)
                continue
            if self._down_since is not None:
                with self._lock:
                    since, self._down_since, self._gave_up = self._down_since, None, False
                if since is not None:
                    self.say(f"storage {self.label} reachable again after {time.monotonic() - since:.0f} s")
            return result

    @contextlib.contextmanager
    def without_retry(self) -> Iterator[None]:
        """Calls in this block (this thread) try once: for cleanup after the storage has given up."""
        previous = getattr(self._local, "inside", False)
        self._local.inside = True
        try:
            yield
        finally:
            self._local.inside = previous


def _one_line(exc: BaseException) -> str:
    """The first line of the innermost database error's message."""
    cur: BaseException = exc
    while cur.__cause__ is not None:
        cur = cur.__cause__
    lines = [line.strip() for line in str(cur).splitlines() if line.strip()]
    return f"{type(cur).__name__}: {lines[0]}" if lines else type(cur).__name__


def _wrapped(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: SignalSafeRDBStorage, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._call(method, args, kwargs)
        except StorageWriteRefused:
            raise  # a nested call's, already one line
        except Exception as exc:
            refused = write_refused(self.label, exc)
            if refused is None:
                raise
            raise refused from exc

    return call


for _name in _DATABASE_CALLS:
    if hasattr(RDBStorage, _name):
        setattr(SignalSafeRDBStorage, _name, _wrapped(_name))
