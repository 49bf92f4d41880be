"""Command line of the harness: `python continual-learning/main.py --experiment ... --hooks FILE ...`."""

from __future__ import annotations

import argparse
import json
import sys
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


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark; print per-context accuracies and the average; exit 2 on a user error."""
    args = build_parser().parse_args(argv)
    cfg = RunConfig(
        experiment=args.experiment, seed=args.seed, iters=args.iters, contexts=args.contexts,
        val_fraction=args.val_fraction, eval_split=args.eval_split, device=args.device, data_dir=args.data_dir,
        acc_matrix=args.acc_matrix, cifar_trunk=args.cifar_trunk, train_subset=args.train_subset,
    )  # fmt: skip
    try:
        result = (
            run_joint(cfg, progress=not args.no_progress)
            if args.joint
            else run(args.hooks, cfg, progress=not args.no_progress)
        )
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = "joint training" if args.joint else f"{args.hooks} (reg_strength {result['reg_strength']:g})"
    print(
        f"{args.experiment}, seed {args.seed}, {what}, {result['eval_split']} split, device {result['device']}"
    )
    for k, acc in enumerate(result["per_context_accuracy"], start=1):
        print(f"  context {k:2d}: {acc:.4f}")
    print(f"average accuracy: {result['average_accuracy']:.4f}  ({result['timing']['total_s']:.1f} s)")
    if args.out:
        write_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")
        print(f"result written to {args.out}")
    return 0
