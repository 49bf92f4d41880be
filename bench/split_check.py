"""Does the validation split rank strong designs as the test split does, stream by stream?

The search promotes on the validation split of one stream (a tenth of each context's training images held out
and scored); the final table reads the test split of others. This runs methods at the full protocol on the
validation split of given Permuted-MNIST streams (cached under results/split-check, resumable, shared by two
processes side by side) and prints each beside its test-split run of the same stream (results/heldout, the
held-out streams), with the candidate's paired difference on either split. Nothing here chooses anything
(`evaluation.split_check`).

    OMP_NUM_THREADS=1 python bench/split_check.py --seeds 100 --methods candidate mas
    python bench/split_check.py --report-only
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "split-check"
TEST = ROOT / "results" / "heldout"


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    import torch

    from evaluation.split_check import compare
    from search.export import study_modules

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[100])
    p.add_argument("--methods", nargs="+", default=["candidate", "mas", "tuned_mas"])
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _, tuned = study_modules(args.methods, None)
    complete, rows = compare(
        args.methods,
        args.seeds,
        tuned=tuned,
        out_dir=OUT,
        test_dir=TEST,
        command=shlex.join(["python", "bench/split_check.py", *(sys.argv[1:] if argv is None else argv)]),
        report_only=args.report_only,
    )
    print("\n".join(rows))
    return 0 if complete else 2


if __name__ == "__main__":
    raise SystemExit(main())
