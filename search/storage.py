"""Where studies live: a local SQLite file under `studies/` by default, any Optuna RDB URL otherwise.

The storage is an `optuna.storages.RDBStorage` with a heartbeat, so a trial whose worker died (SIGKILL, power
loss, lost machine) is failed after `grace_period` seconds and re-queued by `RetryCrashedTrial`.
SQLite is opened with a long lock timeout so that several worker processes on one machine can share one file;
several machines share a study through a PostgreSQL URL.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from evaluation.errors import UserError
from search import optuna_adapter
from search.studies import repo_root, studies_dir

# Seconds a SQLite writer waits for the file lock before giving up (workers write at every context).
SQLITE_TIMEOUT_S = 120


def default_storage_url(name: str) -> str:
    """`sqlite:///<repo>/studies/<name>.db`: the study's own file, resolved from the package location.

    From the repository root the same file is `sqlite:///studies/<name>.db`, which optuna-dashboard opens.
    """
    return f"sqlite:///{studies_dir() / f'{name}.db'}"


def display_url(url: str) -> str:
    """The URL as a user would type it from the repository root (relative for files inside the repo)."""
    prefix = "sqlite:///"
    if url.startswith(prefix):
        path = Path(url[len(prefix) :])
        if path.is_absolute():
            try:
                return prefix + str(path.relative_to(repo_root()))
            except ValueError:
                return url
    return url


class RetryCrashedTrial:
    """Re-queue a crashed trial (dead worker, Ctrl-C) as a WAITING trial with the same parameters.

    Optuna's retry callback without the user attributes (`optuna_adapter.retry_without_user_attrs`): the retry
    must not inherit the crashed run's `fail_reason` or partial scores. `retry_history` (system attribute)
    lists the numbers of the crashed attempts; after `max_retry` attempts the design is dropped.
    """

    def __init__(self, max_retry: int = 2) -> None:
        self.max_retry = max_retry
        self._retry = optuna_adapter.retry_without_user_attrs(max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> int | None:
        """Add the retry; return its trial number, or None when the retries are used up."""
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > self.max_retry:
            return None
        self._retry(study, trial)
        retries = [
            t.number
            for t in study.get_trials(deepcopy=False)
            if t.system_attrs.get("retry_history") == history
        ]
        return retries[0] if retries else None


def make_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = 2,
) -> RDBStorage:
    """An RDB storage for `url`; with an interval, dead workers' trials are detected and retried."""
    engine_kwargs: dict[str, object] = {}
    if url.startswith("sqlite:"):
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True  # a server restart must not kill a long-running worker
    kwargs: dict[str, object] = {}
    if heartbeat_interval is not None:
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": RetryCrashedTrial(max_retry),
        }
    for attempt in range(3):
        try:
            with optuna_adapter.no_experimental_warning():
                return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
            # Two processes creating a fresh storage at once race on its schema tables; the second try finds
            # them made. Anything still failing is reported.
            if attempt == 2 or ("UNIQUE constraint" not in str(exc) and "already exists" not in str(exc)):
                raise UserError(
                    f"cannot open storage {display_url(url)}: {str(exc).splitlines()[0]}"
                ) from exc
            time.sleep(0.5)
    raise AssertionError("unreachable")


def open_study(
    name: str,
    storage: str | RDBStorage | None = None,
    *,
    create: bool = False,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Load study `name` from `storage` (default: its file under studies/); create it (maximize) if asked."""
    url_or_storage = storage if storage is not None else default_storage_url(name)
    if isinstance(url_or_storage, str):
        if not create and url_or_storage.startswith("sqlite:///"):
            db = Path(url_or_storage[len("sqlite:///") :])
            if not db.is_file():
                raise UserError(
                    f"study {name!r} has no storage yet ({display_url(url_or_storage)}); run it first"
                )
        url_or_storage = make_storage(url_or_storage)
    if create:
        return optuna.create_study(
            study_name=name,
            storage=url_or_storage,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
    try:
        return optuna.load_study(study_name=name, storage=url_or_storage, sampler=sampler, pruner=pruner)
    except KeyError as exc:
        names = [s.study_name for s in optuna.get_all_study_summaries(url_or_storage)]
        raise UserError(
            f"no study {name!r} in {display_url(url_or_storage.url)} (it holds: {', '.join(names) or 'none'})"
        ) from exc
