"""Fidelity of the harness to the published protocol: full Split-MNIST runs with no regularization, the
scaffold EWC module and a hand-written SI module for seeds 42-44, and one full Permuted-MNIST run with EWC.

Resumable: each run's result JSON goes to results/harness-fidelity/; runs whose file exists are skipped.
Usage: .venv/bin/python bench/harness_fidelity.py [--perm] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clharness.atomic import write_atomic
from clharness.runner import RunConfig, run

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "harness-fidelity"
MODULES = {
    "none": "tests/hooks/no_reg.py",
    "ewc": "tests/hooks/scaffold_ewc.py",
    "si": "tests/hooks/si_handwritten.py",
}


def main() -> None:
    """Run what is missing, then print the table of what exists."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--perm", action="store_true", help="also the full Permuted-MNIST EWC run (tens of minutes)"
    )
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    jobs = [("splitMNIST", m, s) for s in (42, 43, 44) for m in MODULES]
    if args.perm:
        jobs.append(("permMNIST", "ewc", 42))
    for experiment, method, seed in jobs:
        path = OUT / f"{experiment}-{method}-seed{seed}.json"
        if path.exists():
            continue
        cfg = RunConfig(experiment=experiment, seed=seed, device=args.device, acc_matrix=True)
        result = run(ROOT / MODULES[method], cfg, progress=False)
        write_atomic(path, json.dumps(result, indent=2) + "\n")
        print(
            f"{experiment} {method} seed {seed}: {result['average_accuracy']:.4f} ({result['timing']['total_s']:.0f} s)"
        )
    for path in sorted(OUT.glob("*.json")):
        r = json.loads(path.read_text())
        print(f"{path.stem:32s} {r['average_accuracy']:.4f}  {r['timing']['total_s']:7.1f} s")


if __name__ == "__main__":
    main()
