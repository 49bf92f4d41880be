"""`python -m search dashboard`: optuna-dashboard on a study's storage, on the loopback interface."""

from __future__ import annotations

import argparse
import socket

from evaluation.errors import UserError
from search import optuna_adapter
from search.cmd_status import study_name
from search.storage import default_storage_url, display_url, make_storage, open_study


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `dashboard` subcommand."""
    p = sub.add_parser("dashboard", help="serve optuna-dashboard for a study on 127.0.0.1")
    p.add_argument("--study", default="default", help="study name or study file")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///studies/NAME.db)")
    p.add_argument(
        "--port", type=int, default=None, help="port (default: 8080 when free, else any free port)"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C."""
    from optuna_dashboard import run_server

    name = study_name(args.study)
    url = args.storage or default_storage_url(name)
    open_study(name, url)  # fails with a clear message when the study does not exist
    storage = make_storage(url)
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
    print(
        f"optuna-dashboard for study {name} ({display_url(url)}) at "
        f"http://127.0.0.1:{port}/dashboard/studies/{optuna_adapter.study_id(storage, name)} (Ctrl-C stops it)",
        flush=True,
    )
    try:
        run_server(storage, host="127.0.0.1", port=port)
    except OSError as exc:
        raise UserError(f"cannot serve on 127.0.0.1:{port}: {exc}") from exc
    return 0
