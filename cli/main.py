"""Command line of `python -m search`: one subcommand per module, each exposing `register(subparsers)`.

The modules are this package's (`SUBCOMMANDS`). A subcommand module defines
`register(sub: argparse._SubParsersAction) -> None`, which adds its parser (with the options several commands share
from `cli.options`) and sets `func=<callable(args) -> int>` as the parser default. Errors a user can cause raise
`UserError` (`evaluation.errors`) or the harness's `HarnessError`; they are printed as one line and exit with
code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from clharness.errors import HarnessError

from evaluation.errors import UserError

# The explicit table of subcommands (modules of this package), in the order `--help` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "cli.export",
    "cli.run",
    "cli.status",
    "cli.dashboard",
    "cli.final_eval",
    "cli.fidelity",
    "cli.panel",
    "cli.promote",
    "cli.sweep",
    "cli.reorder",
    "cli.validate",
    "cli.modules",
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="python -m search", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


# Exit codes: 2 for an error the user can fix (one line on stderr), 130 / 143 after Ctrl-C / SIGTERM (as a
# shell reports a job ended by that signal), 141 when the reader of stdout went away (`status | head`).
EXIT_USER_ERROR = 2
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the subcommand, map user errors to exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader gone away (`status | head`) is caught below
        return code
    except (UserError, HarnessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        signame = getattr(exc, "signame", "SIGINT")
        what = "stopped by SIGTERM" if signame == "SIGTERM" else "interrupted"
        print(f"{what}; everything already computed is kept", file=sys.stderr)
        return 143 if signame == "SIGTERM" else 130
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


def _stdout_to_devnull() -> None:
    """The reader of stdout is gone: point stdout at /dev/null so the exit flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
