"""`python -m search dashboard`: optuna-dashboard on a study's storage, on the loopback interface.

The study is prepared first (`search.dashboard.prepare`: annotated, its promoted study brought up to date; a
committed reference served as an in-memory copy), and the dashboard gets the study's artifact store, so that every
trial's module opens and downloads as a file. Like `status` and `export` it reads your local study when you have
one (`--reference`, `make dashboard REFERENCE=1`: the committed one) and says which it reads.
"""

from __future__ import annotations

import argparse
import socket

from cli.options import add_read_options, study_name
from evaluation.errors import UserError
from search import annotate, optuna_adapter
from search.dashboard import ReadableStorage, free_port, prepare
from search.storage import display_url, is_reference, open_study, read_storage_url, storage_note


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `dashboard` subcommand."""
    p = sub.add_parser("dashboard", help="serve optuna-dashboard for a study on 127.0.0.1")
    add_read_options(p)
    p.add_argument(
        "--port", type=int, default=None, help="port (default: 8080 when free, else any free port)"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C."""
    from optuna_dashboard import run_server  # deferred: a 1 s import every command would pay

    name = study_name(args.study)
    url = read_storage_url(name, args.storage, reference=args.reference)
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
        f"optuna-dashboard for study {name}: storage {display_url(url)}{storage_note(name, url)}; {what}; "
        f"{modules}; at http://127.0.0.1:{port}/dashboard/studies/{optuna_adapter.study_id(storage, name)} "
        "(Ctrl-C stops it)",
        flush=True,
    )
    try:
        run_server(ReadableStorage(storage), host="127.0.0.1", port=port, artifact_store=store)
    except OSError as exc:
        raise UserError(f"cannot serve on 127.0.0.1:{port}: {exc}") from exc
    return 0
