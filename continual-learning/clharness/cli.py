"""Command line of the harness: `python continual-learning/main.py --experiment ... --hooks FILE ...`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clharness.atomic import write_atomic
from clharness.errors import HarnessError
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
        "--data-dir", default=None, help="torchvision dataset root (default: $CL_DATA_DIR, else ./data)"
    )
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument("--acc-matrix", action="store_true", help="evaluate every seen context after each context")
    p.add_argument("--cifar-trunk", choices=("pretrained", "scratch"), default="pretrained")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def check_out_path(out: str, hooks: str | None = None) -> Path:
    """`--out`, checked before any work starts, so a finished run is never lost to an unusable path.

    It must name a file (not a folder, not a device), not the hook module itself, in a folder that exists or can
    be created; missing folders are created only when the result is written.
    """
    if out.endswith(("/", os.sep)):
        raise HarnessError(f"--out {out} ends with a path separator; give the path of a file")
    path = Path(out)
    if path.is_dir():
        raise HarnessError(f"--out {out} is a folder; give the path of a file, e.g. {path / 'result.json'}")
    if path.exists():
        if not path.is_file():
            raise HarnessError(f"--out {out} exists and is not a regular file")
        if hooks is not None and Path(hooks).is_file() and os.path.samefile(path, hooks):
            raise HarnessError(f"--out {out} is the hook module; the result would overwrite it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the nearest folder that exists
        folder = folder.parent
    if not folder.is_dir():
        raise HarnessError(f"--out {out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise HarnessError(f"--out {out}: cannot write into {folder}")
    return path


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

    `--out` is checked before the run. Ctrl-C and SIGTERM stop the run with one line and exit 128 + the
    signal's number (130, 143); the result file is then not written (or was already written whole).
    """
    args = build_parser().parse_args(argv)
    try:
        out = check_out_path(args.out, None if args.joint else args.hooks) if args.out else None
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
