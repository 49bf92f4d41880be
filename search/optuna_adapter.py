"""What the worker loop needs from Optuna beyond `Study` and `Trial`: the storage's heartbeat and trial state.

`study.optimize` records heartbeats, fails stale trials and re-queues them itself, but the worker loop cannot use
it: its budget counts trials that failed by their own design and not crashed ones, a trial started after the
budget was taken goes back to WAITING (not FAIL), and a Ctrl-C re-queues the trial without its user attributes.
So the loop asks and tells (public API) and reaches the storage through the functions here, which name trials by
study name and trial number only (no private attributes). They use the storage methods of
`optuna.storages.BaseStorage` and `RDBStorage.record_heartbeat`; pyproject bounds optuna to the versions this
module is tested with (tests/test_search_machinery.py runs every function here).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState


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


def put_back(storage: BaseStorage, study: optuna.Study, number: int) -> None:
    """Return a RUNNING trial to WAITING, so that a worker takes it later with the same parameters."""
    storage.set_trial_state_values(trial_id(storage, study, number), TrialState.WAITING)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose worker stopped beating; the storage's stale-trial callback re-queues them."""
    with no_experimental_warning():
        optuna.storages.fail_stale_trials(study)


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
