"""Where studies live, and the storage they are opened with.

Studies by name (the layout, docs/search.md "Storage"):

- `studies/NAME.db` is a committed **reference** study: evidence that the shipped module, the README and the
  tests read. Runs never write it (`check_writable`).
- `studies/local/NAME.db` (gitignored) is **your** study: `python -m search run --study NAME` (and `make search`)
  writes it unless `--storage` is given.
- `studies/campaign/NAME.db` (committed) is the team's **campaign** study, carried over sessions by `make
  campaign`.
- Reading commands (status, export and `make regenerate`, dashboard, promote, fidelity, final-eval) open your
  local study when it exists, else the campaign's, else the committed reference (`default_storage_url`); a
  file that does not hold the study (left by a run that stopped before creating it) is not one.
  `--reference` (status, export, dashboard; `REFERENCE=1` for make) reads the committed study even so;
  `--storage URL` is always taken as given. Each names the storage it reads, and says when your local study
  shadows the committed one and how to read that one (`storage_note`).

The storage is an `optuna.storages.RDBStorage` with a heartbeat, so a trial whose worker died (SIGKILL, power
loss, lost machine) is failed after `grace_period` seconds and re-queued by `RetryCrashedTrial`.
SQLite is opened with a long lock timeout so that several worker processes on one machine can share one file;
several machines share a study through a PostgreSQL URL, opened so that a server restart does not kill a
worker: every call retries a lost connection for up to `storage_retry_s()` seconds
(`optuna_adapter.RetryingRDBStorage`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from evaluation.errors import UserError
from search import optuna_adapter
from search.studies import offline_name, repo_root, studies_dir

# Seconds a SQLite writer waits for the file lock before giving up (workers write at every context).
SQLITE_TIMEOUT_S = 120
# Seconds a database call keeps retrying a lost connection (a server restart takes a few) before the worker
# gives up with one line; SEARCH_STORAGE_RETRY_S overrides it.
STORAGE_RETRY_S = 300.0
SQLITE = "sqlite:///"


def storage_retry_s() -> float:
    """How long a lost database connection is retried: $SEARCH_STORAGE_RETRY_S, else `STORAGE_RETRY_S`."""
    text = os.environ.get("SEARCH_STORAGE_RETRY_S")
    if not text:
        return STORAGE_RETRY_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise UserError(f"SEARCH_STORAGE_RETRY_S must be a number of seconds >= 0, got {text!r}")
    return value


def local_dir() -> Path:
    """Where your own studies live (gitignored): `studies/local/`."""
    return studies_dir() / "local"


def reference_storage_url(name: str) -> str:
    """`sqlite:///<repo>/studies/<name>.db`: the committed reference study (read-only evidence)."""
    return f"{SQLITE}{studies_dir() / f'{name}.db'}"


def local_storage_url(name: str) -> str:
    """`sqlite:///<repo>/studies/local/<name>.db`: the study that `run` writes by default."""
    return f"{SQLITE}{local_dir() / f'{name}.db'}"


def campaign_storage_url(name: str) -> str:
    """`sqlite:///<repo>/studies/campaign/<name>.db`: the team's campaign study (`make campaign`)."""
    return f"{SQLITE}{studies_dir() / 'campaign' / f'{name}.db'}"


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///` URL (None for other URLs and in-memory databases)."""
    if not url.startswith(SQLITE):
        return None
    db, _, query = url[len(SQLITE) :].partition("?")
    # SQLite's URI form, sqlite:///file:PATH?uri=true (mode=ro, ...), names the same file.
    if db.startswith("file:") and "uri=true" in query.split("&"):
        db = db[len("file:") :]
    return Path(db) if db and db != ":memory:" else None


def holds_study(path: Path, name: str) -> bool:
    """Whether the SQLite file at `path` holds a study named `name` (opened read-only: nothing is created).

    A file that is not an Optuna storage, or holds no study of that name, does not; one that cannot be read
    this instant (locked by a writer) is taken to hold it."""
    if not path.is_file():
        return False
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return False
    try:
        return con.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.OperationalError as exc:
        return "no such table" not in str(exc)
    except sqlite3.DatabaseError:  # not a database
        return False
    finally:
        con.close()


def default_storage_url(name: str) -> str:
    """What reading commands open for study `name`: your local study when it exists, else the campaign's when
    it exists, else the reference. A file that does not hold the study is passed over (`holds_study`).

    All are resolved from the package location, so a study opens from any working directory; from the
    repository root the same files are `sqlite:///studies/local/<name>.db`, `sqlite:///studies/campaign/<name>.db`
    and `sqlite:///studies/<name>.db`.
    """
    for url in (local_storage_url(name), campaign_storage_url(name)):
        path = sqlite_path(url)
        if path is not None and holds_study(path, name):
            return url
    return reference_storage_url(name)


def committed_storage_url(name: str) -> str:
    """The study the repository commits under `name`: the campaign's when it exists, else the reference."""
    campaign = campaign_storage_url(name)
    path = sqlite_path(campaign)
    return campaign if path is not None and path.is_file() else reference_storage_url(name)


def read_storage_url(name: str, storage: str | None = None, *, reference: bool = False) -> str:
    """The storage a reading command opens: `storage` as given, else the committed study when asked (`--reference`),
    else the default."""
    if storage and reference:
        raise UserError("--reference reads the committed study; it does not go with --storage")
    if storage:
        return storage
    return committed_storage_url(name) if reference else default_storage_url(name)


def _shown(url: str) -> str:
    path = sqlite_path(url)
    assert path is not None
    try:
        return str(path.relative_to(studies_dir().parent))
    except ValueError:
        return str(path)


def storage_note(name: str, url: str) -> str:
    """Which study a reading command reads, in parentheses: the committed reference, the team's campaign study
    or your local one; when your local study shadows the committed one, how to read that one (`REFERENCE=1`,
    `--reference`); when the committed one is read beside a local one, that the local one is not; and your
    study of the offline MNIST subset (`NAME_offline`), when there is one."""
    local = sqlite_path(local_storage_url(name))
    has_local = local is not None and holds_study(local, name)
    committed = committed_storage_url(name)
    committed_path = sqlite_path(committed)
    parts: list[str] = []
    if url in (reference_storage_url(name), campaign_storage_url(name)):
        parts.append(
            "the committed reference study"
            if url == reference_storage_url(name)
            else "the team's campaign study"
        )
        if has_local:
            parts.append(
                f"your local {_shown(local_storage_url(name))} is not read: without REFERENCE=1 (make) or "
                "--reference it is"
            )
    elif url == local_storage_url(name):
        if committed_path is not None and committed_path.is_file():
            parts.append(
                f"your local study, which shadows the committed {_shown(committed)}: REFERENCE=1 (make) or "
                "--reference reads the committed one"
            )
        else:
            parts.append("your local study")
    offline = offline_name(name)
    offline_path = sqlite_path(local_storage_url(offline))
    if offline != name and offline_path is not None and holds_study(offline_path, offline):
        parts.append(
            f"your run on the offline MNIST subset is the study {offline} ({_shown(local_storage_url(offline))}): "
            f"STUDY={offline} reads it"
        )
    return f" ({'; '.join(parts)})" if parts else ""


def local_studies() -> list[str]:
    """The names of your own studies: the SQLite files in `studies/local/`."""
    return sorted(p.stem for p in local_dir().glob("*.db"))


def is_reference(url: str) -> bool:
    """Whether `url` is a file directly in `studies/`: a committed reference study (read-only)."""
    path = sqlite_path(url)
    if path is None:
        return False
    try:
        return path.resolve().parent == studies_dir().resolve()
    except OSError:
        return False


def _read_only(url: str, path: Path) -> str | None:
    """Why the SQLite file at `path` (of `url`) cannot be written, or None."""
    if "mode=ro" in url.partition("?")[2].split("&"):
        return "opened with mode=ro"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"no write permission on {path}"
    folder = path.parent  # a missing one is made by `make_storage`, which says when it cannot be
    if folder.is_dir() and not os.access(
        folder, os.W_OK | os.X_OK
    ):  # SQLite writes its journal beside the file
        return f"cannot create files in {folder}"
    return None


def check_writable(url: str) -> None:
    """Refuse to run trials into a reference study (`studies/NAME.db`): it is evidence, never written by runs.
    A SQLite file that cannot be written (its permissions, its folder's, a read-only mount) is one line too,
    before any work."""
    path = sqlite_path(url)
    why = _read_only(url, path) if path is not None and not is_reference(url) else None
    if why is not None:
        raise UserError(
            f"storage {display_url(url)} is read-only ({why}): runs write their trials into it; make the file and "
            "its folder writable, or give another --storage"
        )
    if is_reference(url):
        path = sqlite_path(url)
        assert path is not None
        name = path.stem
        raise UserError(
            f"{display_url(url)} is a committed reference study and read-only; runs write "
            f"{display_url(local_storage_url(name))} (drop --storage) or another --storage. To publish a study "
            f"as a reference, copy its file to studies/{name}.db and commit it"
        )


def display_url(url: str) -> str:
    """The URL as a user would type it from the repository root (relative for files inside the repo)."""
    path = sqlite_path(url)
    if path is not None and path.is_absolute():
        try:
            return SQLITE + str(path.relative_to(repo_root()))
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
    """An RDB storage for `url`; with an interval, dead workers' trials are detected and retried.

    A server database (PostgreSQL, MySQL) is opened as a `RetryingRDBStorage`: a lost connection is retried
    for `storage_retry_s()` seconds before `StorageUnreachable`. SQLite files are local and not retried
    beyond their lock timeout. Every failure to open is a one-line `UserError`.
    """
    engine_kwargs: dict[str, object] = {}
    server = not url.startswith("sqlite:")
    if not server:
        path = sqlite_path(url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                why = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)
                raise UserError(
                    f"cannot open storage {display_url(url)}: cannot create the folder {path.parent} ({why})"
                ) from exc
            if path.is_dir():
                raise UserError(f"cannot open storage {display_url(url)}: {path} is a folder, not a file")
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True  # a connection the server dropped is replaced on checkout
    kwargs: dict[str, object] = {}
    if heartbeat_interval is not None:
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": RetryCrashedTrial(max_retry),
        }
    retry_s = storage_retry_s() if server else 0.0
    for attempt in range(3):
        try:
            with optuna_adapter.no_experimental_warning():
                if server:
                    return optuna_adapter.RetryingRDBStorage(
                        url,
                        retry_s=retry_s,
                        label=display_url(url),
                        engine_kwargs=engine_kwargs,
                        **kwargs,  # type: ignore[arg-type]
                    )
                return optuna_adapter.SignalSafeRDBStorage(
                    url,
                    label=display_url(url),
                    engine_kwargs=engine_kwargs,
                    **kwargs,  # type: ignore[arg-type]
                )
        except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
            # Two processes creating a fresh storage at once race on its schema tables; the second try finds
            # them made. Anything still failing is reported.
            if attempt == 2 or ("UNIQUE constraint" not in str(exc) and "already exists" not in str(exc)):
                raise UserError(f"cannot open storage {display_url(url)}: {_first_line(exc)}") from exc
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (sqlalchemy appends SQL and a URL on more lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def known_studies() -> list[str]:
    """The names of the study files in `studies/` and of the studies stored there (reference, campaign, local)."""
    folder = studies_dir()
    names = {p.stem for p in folder.glob("*.toml")}
    for sub in (folder, folder / "campaign", local_dir()):
        names |= {p.stem for p in sub.glob("*.db")}
    return sorted(names)


def open_study(
    name: str,
    storage: str | RDBStorage | None = None,
    *,
    create: bool = False,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Load study `name` from `storage` (default: `default_storage_url`); create it (maximize) if asked."""
    url_or_storage = storage if storage is not None else default_storage_url(name)
    if isinstance(url_or_storage, str):
        path = sqlite_path(url_or_storage)
        if not create and path is not None and not path.is_file():
            defaults = (local_storage_url(name), campaign_storage_url(name), reference_storage_url(name))
            known = known_studies()
            if (storage is None or url_or_storage in defaults) and name not in known:
                raise UserError(
                    f"unknown study {name!r}: no study file studies/{name}.toml and no storage of that name "
                    f"(known studies: {', '.join(known) or 'none'})"
                )
            where = display_url(url_or_storage)
            if storage is None or url_or_storage in defaults:
                where = f"neither {', '.join(display_url(url) for url in defaults[:2])} nor {display_url(defaults[2])}"
            yours = local_studies()
            mine = (
                f"; your own studies (studies/local/): {', '.join(yours)}, e.g. make status STUDY={yours[0]}"
                if yours
                else ""
            )
            raise UserError(
                f"study {name!r} has no storage yet ({where}); run it first: python -m search run --study {name}"
                f"{mine}"
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
