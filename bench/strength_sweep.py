"""How does a calibrated design's proxy score fall off with its strength? The measurement behind the searched range.

Runs each named design (a preset or variant of the space) at several `reg_strength_scale` multiples on every
Permuted-MNIST proxy of a study, through the run cache (results/fidelity/runs), and prints one row per design and
scale: each proxy's accuracy and their mean (the score the plausibility figure uses, bench/random_designs.py).

    OMP_NUM_THREADS=1 python bench/strength_sweep.py --study campaign --designs ewc mas_calibrated \
        --scales 0.1 0.3 3 &   # twice, side by side (they share the runs); then --report-only

With `--ranks` it sweeps the eigenbasis rank of a structured design instead (0: the exact K-FAC penalty), the
accuracy half of the structured family's rank curve (the cost half: bench/kfac_cost.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "fidelity"


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    from contextlib import closing

    import torch

    import space
    from evaluation.cache import cached_path, load_record, run_cached, sha256_text, share_work, store_module
    from search.objective import proxy_config
    from search.studies import load_study_def

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="campaign")
    p.add_argument("--designs", nargs="+", default=["ewc", "mas_calibrated"])
    p.add_argument("--scales", nargs="+", type=float, default=[0.1, 0.3, 1.0, 3.0, 10.0])
    p.add_argument("--ranks", nargs="+", type=int, help="sweep kfac_rank (structured designs) instead")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    study_def = load_study_def(args.study)
    benches = [b for b in study_def.benchmarks if b.experiment == "permMNIST"]
    named = {**space.PRESETS, **space.VARIANTS}
    jobs = []
    for design_name in args.designs:
        base = named[design_name]
        points = (
            [(f"{design_name}_r{r}", base.replace(kfac_rank=r)) for r in args.ranks]
            if args.ranks
            else [
                (
                    f"{design_name}_s{scale:g}",
                    base.replace(reg_strength_scale=base.reg_strength_scale * scale),
                )
                for scale in args.scales
            ]
        )
        for label, design in points:
            source = space.generate_source(design)
            for bench in benches:
                cfg = proxy_config(bench, bench.seeds[0], data_dir=None, device="cpu")
                jobs.append((label, f"strength_{label}", source, sha256_text(source), cfg, bench))
    if not args.report_only:  # processes run side by side share the runs (claims), each run once
        with closing(share_work(jobs, lambda j: cached_path(j[1], j[3], j[4], OUT / "runs"))) as work:
            for label, name, source, sha, cfg, _ in work:
                path, _ = store_module(OUT / "modules" / "strength", label, source)
                run_cached(name, path, sha, cfg, cache_dir=OUT / "runs")
    rows: dict[str, dict[str, float]] = {}
    for label, name, _, sha, cfg, bench in jobs:
        record = load_record(cached_path(name, sha, cfg, OUT / "runs"))
        if record is not None:
            rows.setdefault(label, {})[bench.label] = float(record["result"]["average_accuracy"])
    print(f"{'design x scale':28s} " + " ".join(f"{b.label:>15s}" for b in benches) + "      mean")
    for label, scores in rows.items():
        cells = " ".join(f"{scores[b.label]:15.4f}" if b.label in scores else f"{'-':>15s}" for b in benches)
        mean = sum(scores.values()) / len(scores) if len(scores) == len(benches) else float("nan")
        print(f"{label:28s} {cells} {mean:9.4f}")
    out = OUT / f"{'ranks' if args.ranks else 'strength'}_{args.study}.json"
    kept = json.loads(out.read_text()) if out.is_file() else {}  # earlier sweeps' designs stay
    out.write_text(json.dumps({**kept, **rows}, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
