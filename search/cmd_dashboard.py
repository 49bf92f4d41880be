"""`python -m search dashboard`: optuna-dashboard on a study's storage, on the loopback interface.

Before serving, the study is annotated (`search.annotate`: the objective's name, the study's note with its
description and promoted trials), its promoted study (`NAME:promoted`) gets the promotion results it lacks
(`search.promote.record_promoted`), and the dashboard gets the study's artifact store, so that every trial's
module opens and downloads as a file. A committed reference study (`studies/NAME.db`) is evidence and is not
written: the dashboard serves an in-memory copy of it, annotated, and says so.
"""

from __future__ import annotations

import argparse
import socket

import optuna
from optuna.storages import BaseStorage, InMemoryStorage

from evaluation.errors import UserError
from search import annotate, optuna_adapter
from search.cmd_status import study_name
from search.promote import record_promoted
from search.storage import default_storage_url, display_url, is_reference, make_storage, open_study


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `dashboard` subcommand."""
    p = sub.add_parser("dashboard", help="serve optuna-dashboard for a study on 127.0.0.1")
    p.add_argument("--study", default="default", help="study name or study file")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: your studies/local/NAME.db, else the committed studies/NAME.db)",
    )
    p.add_argument(
        "--port", type=int, default=None, help="port (default: 8080 when free, else any free port)"
    )
    p.set_defaults(func=main)


def in_memory_copy(name: str, url: str) -> tuple[InMemoryStorage, optuna.Study]:
    """Study `name` of `url` copied into memory: trials, attributes and the dashboard's notes and artifacts."""
    src_storage = make_storage(url)
    source = open_study(name, src_storage)
    storage = InMemoryStorage()
    return storage, optuna_adapter.copy_study(src_storage, name, storage, source.get_trials(deepcopy=False))


def prepare(name: str, url: str) -> tuple[BaseStorage, str]:
    """The storage to serve for study `name` of `url`, annotated and with its promoted study up to date, and
    what it is (the study's own storage, or an in-memory copy of a committed reference)."""
    storage: BaseStorage
    if is_reference(url):
        storage, study = in_memory_copy(name, url)
        what = "an in-memory copy of the committed reference; edits made in the dashboard are not saved"
    else:
        storage = make_storage(url)
        study = open_study(name, storage)
        what = "notes written in the dashboard are saved to the study"
    annotate.annotate_study(study, annotate.description_of(study), url)
    # A reference's promoted trials are rebuilt in memory, without module files: its folder is not written.
    folder = None if is_reference(url) else annotate.artifact_dir(url, name)
    record_promoted(study, storage, artifact_folder=folder)
    return storage, what


def main(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C."""
    from optuna_dashboard import run_server

    name = study_name(args.study)
    url = args.storage or default_storage_url(name)
    open_study(name, url)  # fails with a clear message when the study does not exist
    storage, what = prepare(name, url)
    folder = annotate.artifact_dir(url, name)
    store = annotate.artifact_store(folder) if folder.is_dir() or not is_reference(url) else None
    port = args.port
    if port is None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 8080))
            port = 8080
        except OSError:
            port = free_port()
    elif not 0 < port < 65536:
        raise UserError(f"--port must be in 1..65535, got {port}")
    modules = (
        f"modules from {annotate.display_path(folder)}" if store else "no module files (none were stored)"
    )
    print(
        f"optuna-dashboard for study {name} ({display_url(url)}; {what}; {modules}) at "
        f"http://127.0.0.1:{port}/dashboard/studies/{optuna_adapter.study_id(storage, name)} (Ctrl-C stops it)",
        flush=True,
    )
    try:
        run_server(storage, host="127.0.0.1", port=port, artifact_store=store)
    except OSError as exc:
        raise UserError(f"cannot serve on 127.0.0.1:{port}: {exc}") from exc
    return 0
