"""Command line of `python -m search`: one subcommand per module, each exposing `register(subparsers)`.

A subcommand module defines `register(sub: argparse._SubParsersAction) -> None`, which adds its parser and sets
`func=<callable(args) -> int>` as the parser default. Errors a user can cause raise `UserError` (or the
harness's `HarnessError`); they are printed as one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# The explicit table of subcommands (module names under search/), in the order `--help` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "search.cmd_export",
    "search.cmd_run",
    "search.cmd_status",
    "search.cmd_dashboard",
    "search.cmd_final_eval",
    "search.cmd_fidelity",
)


class UserError(Exception):
    """An error the user can fix (bad study file, missing data...): one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="python -m search", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the subcommand, map user errors to exit code 2."""
    from clharness.errors import HarnessError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, HarnessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything already computed is kept", file=sys.stderr)
        return 130
