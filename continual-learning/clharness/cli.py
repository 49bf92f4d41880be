"""Command line of the harness: `python continual-learning/main.py --experiment ... --hooks FILE ...`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clharness.atomic import write_atomic
from clharness.errors import HarnessError
from clharness.paths import check_data_dir, check_out_path
from clharness.runner import EXPERIMENTS, RunConfig, run, run_joint


def build_parser() -> argparse.ArgumentParser:
    """The harness's argument parser; defaults are the published protocol and seed 42."""
    p = argparse.ArgumentParser(
        prog="python continual-learning/main.py",
        description="Run a regularization hook module on a continual-learning benchmark (HARNESS.md).",
    )
    p.add_argument("--experiment", required=True, choices=EXPERIMENTS)
    p.add_argument("--hooks", default="custom_regularization.py", help="hook module path")
    p.add_argument(
        "--joint", action="store_true", help="train on all contexts together (upper bound); no hooks"
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--iters", type=int, default=None, help="iterations per context (default: the protocol's)")
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate of a proxy run (default: the protocol's)"
    )
    p.add_argument("--contexts", type=int, default=None, help="first N contexts only (default: all)")
    p.add_argument("--val-fraction", type=float, default=None, help="held-out share of training images")
    p.add_argument("--eval-split", choices=("val", "test"), default="test")
    p.add_argument("--train-subset", type=int, default=None, help="at most N training images per context")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--data-dir",
        default=None,
        help="torchvision dataset root, an existing folder (default: $CL_DATA_DIR, else ./data)",
    )
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument("--acc-matrix", action="store_true", help="evaluate every seen context after each context")
    p.add_argument("--cifar-trunk", choices=("pretrained", "scratch"), default="pretrained")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop) raised where the run is, so it unwinds like Ctrl-C's KeyboardInterrupt."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (once; a second one is ignored while the run unwinds)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error(message: object) -> int:
    """Print a user error as one line on stderr; the exit code of user errors."""
    print(
        "error: " + " ".join(line.strip() for line in str(message).splitlines() if line.strip()),
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark; print per-context accuracies and the average; exit 2 on a user error.

    `--out` and `--data-dir` are checked before the run. Ctrl-C and SIGTERM stop the run with one line and exit 128 + the
    signal's number (130, 143); the result file is then not written (or was already written whole).
    """
    args = build_parser().parse_args(argv)
    try:  # before any work: a finished run must not be lost to its --out, nor a typo train on other data
        out = check_out_path(args.out, None if args.joint else args.hooks) if args.out else None
        check_data_dir(args.data_dir)
    except HarnessError as exc:
        return _error(exc)
    written: list[Path] = []
    with sigterm_as_interrupt():
        try:
            return _run_and_report(args, out, written)
        except KeyboardInterrupt as exc:
            signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
            kept = f"the result was written to {args.out}" if written else "no result written"
            print(f"interrupted ({signum.name}): the run was stopped, {kept}", file=sys.stderr)
            return 128 + signum


def _run_and_report(args: argparse.Namespace, out: Path | None, written: list[Path]) -> int:
    """The run of `main`: print the accuracies, write the result to `out` (appended to `written` once done)."""
    cfg = RunConfig(
        experiment=args.experiment, seed=args.seed, iters=args.iters, contexts=args.contexts,
        val_fraction=args.val_fraction, eval_split=args.eval_split, device=args.device, data_dir=args.data_dir,
        acc_matrix=args.acc_matrix, cifar_trunk=args.cifar_trunk, train_subset=args.train_subset, lr=args.lr,
    )  # fmt: skip
    try:
        result = (
            run_joint(cfg, progress=not args.no_progress)
            if args.joint
            else run(args.hooks, cfg, progress=not args.no_progress)
        )
    except HarnessError as exc:
        return _error(exc)
    what = "joint training" if args.joint else f"{args.hooks} (reg_strength {result['reg_strength']:g})"
    print(
        f"{args.experiment}, seed {args.seed}, {what}, {result['eval_split']} split, device {result['device']}"
    )
    for k, acc in enumerate(result["per_context_accuracy"], start=1):
        print(f"  context {k:2d}: {acc:.4f}")
    print(f"average accuracy: {result['average_accuracy']:.4f}  ({result['timing']['total_s']:.1f} s)")
    if out is not None:
        try:
            write_atomic(out, json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            return _error(f"cannot write the result to {args.out}: {exc}")
        written.append(out)
        print(f"result written to {args.out}")
    return 0
