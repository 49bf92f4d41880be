"""Does the validation split rank strong designs as the test split does, stream by stream?

The search promotes on the validation split of one stream (a tenth of each context's training images held out
and scored); the final table reads the test split of others. This runs methods at the full protocol on the
validation split of given Permuted-MNIST streams (cached under results/split-check, resumable, shared by two
processes side by side) and prints each beside its test-split run of the same stream (results/heldout, the
held-out streams), with the candidate's paired difference on either split. Nothing here chooses anything.

    OMP_NUM_THREADS=1 python bench/split_check.py --seeds 100 --methods candidate mas
    python bench/split_check.py --report-only
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "split-check"
TEST = ROOT / "results" / "heldout"


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    import torch

    from evaluation import final_eval as fe
    from evaluation.report import results_as_cached
    from search.cmd_final_eval import study_modules

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[100])
    p.add_argument("--methods", nargs="+", default=["candidate", "mas", "tuned_mas"])
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _, tuned = study_modules(args.methods, None)
    overrides = {"eval_split": "val"}
    outcome, _ = fe.final_eval(
        methods=args.methods,
        tuned=tuned,
        benchmarks=["permMNIST"],
        seeds=args.seeds,
        out_dir=OUT,
        overrides=overrides,
        command=shlex.join(["python", "bench/split_check.py", *(sys.argv[1:] if argv is None else argv)]),
        report_only=args.report_only,
    )
    resolved = fe.resolve_methods(args.methods, tuned=tuned, module_dir=OUT / "modules")
    val = fe.collect_results(resolved, ["permMNIST"], out_dir=OUT, overrides=overrides)["permMNIST"]
    test = results_as_cached(TEST, ["permMNIST"])[0]["permMNIST"]

    print("\n".join(table(val, test, args.seeds, args.methods)))
    return 0 if outcome.complete else 2


def table(
    val: Mapping[str, Mapping[int, dict]],
    test: Mapping[str, Mapping[int, dict]],
    seeds: Sequence[int],
    methods: Sequence[str],
) -> list[str]:
    """Markdown rows: per stream and method, its accuracy on either split and the candidate's lead over it."""

    def acc(runs: Mapping[str, Mapping[int, dict]], method: str, seed: int) -> float | None:
        record = runs.get(method, {}).get(seed)
        return None if record is None else float(record["result"]["average_accuracy"])

    def cell(x: float | None, signed: bool = False) -> str:
        return "—" if x is None else f"{x:+.4f}" if signed else f"{x:.4f}"

    def lead(runs: Mapping[str, Mapping[int, dict]], method: str, seed: int) -> float | None:
        mine, theirs = acc(runs, "candidate", seed), acc(runs, method, seed)
        return None if method == "candidate" or mine is None or theirs is None else mine - theirs

    rows = [
        "| stream | method | validation split | test split | candidate − method, validation | test |",
        "|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        for m in methods:
            cells = [cell(acc(val, m, seed)), cell(acc(test, m, seed))]
            cells += [cell(lead(val, m, seed), True), cell(lead(test, m, seed), True)]
            rows.append(f"| {seed} | `{m}` | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
