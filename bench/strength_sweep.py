"""How does a calibrated design's proxy score fall off with its strength? The measurement behind the searched range.

Runs each named design (a preset or variant of the space) at several `reg_strength_scale` multiples on every
Permuted-MNIST proxy of a study, through the run cache (results/fidelity/runs), and prints one row per design and
scale: each proxy's accuracy and their mean (the score the plausibility figure uses, bench/random_designs.py).

    OMP_NUM_THREADS=1 python bench/strength_sweep.py --study campaign --designs ewc mas_calibrated \
        --scales 0.1 0.3 3 --shard 0/2     # and 1/2; then --report-only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "fidelity"


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    import torch

    import space
    from evaluation.cache import code_version, load_record, result_path, run_cached, run_key, store_module
    from search.objective import proxy_config
    from search.studies import load_study_def

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="campaign")
    p.add_argument("--designs", nargs="+", default=["ewc", "mas_calibrated"])
    p.add_argument("--scales", nargs="+", type=float, default=[0.1, 0.3, 1.0, 3.0, 10.0])
    p.add_argument("--shard", default="0/1")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    index, count = (int(x) for x in args.shard.split("/"))
    study_def = load_study_def(args.study)
    benches = [b for b in study_def.benchmarks if b.experiment == "permMNIST"]
    named = {**space.PRESETS, **space.VARIANTS}
    rows: dict[str, dict[str, float]] = {}
    job = 0
    for design_name in args.designs:
        base = named[design_name]
        for scale in args.scales:
            design = base.replace(reg_strength_scale=base.reg_strength_scale * scale)
            label = f"{design_name}_s{scale:g}"
            path, sha = store_module(OUT / "modules" / "strength", label, space.generate_source(design))
            for bench in benches:
                cfg = proxy_config(bench, bench.seeds[0], data_dir=None, device="cpu")
                name = f"strength_{label}"
                if args.report_only or job % count != index:
                    key, _ = run_key(sha, cfg, code_version())
                    record = load_record(result_path(OUT / "runs", name, cfg.experiment, key, cfg.seed))
                else:
                    record, _ = run_cached(name, path, sha, cfg, cache_dir=OUT / "runs")
                job += 1
                if record is not None:
                    rows.setdefault(label, {})[bench.label] = float(record["result"]["average_accuracy"])
    print(f"{'design x scale':28s} " + " ".join(f"{b.label:>15s}" for b in benches) + "      mean")
    for label, scores in rows.items():
        cells = " ".join(f"{scores[b.label]:15.4f}" if b.label in scores else f"{'-':>15s}" for b in benches)
        mean = sum(scores.values()) / len(scores) if len(scores) == len(benches) else float("nan")
        print(f"{label:28s} {cells} {mean:9.4f}")
    (OUT / f"strength_{args.study}.json").write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
