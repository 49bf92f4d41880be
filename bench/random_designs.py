"""Are random points of the space plausible regularizers? N random designs against the presets, on a study's proxy.

The proxy is every Permuted-MNIST benchmark of a study (`--study`, default `campaign`: two of them, docs/fidelity.md),
and a design's score is its validation accuracy averaged over them. Draws N designs uniformly from a version of the
space (`v3`: the working tree's; `v1`, `v2`: taken from git commits `SPACE_COMMITS` and run in a subprocess, so that
each version is measured with its own sampler and generator), runs them and the published presets of the same
version through the run cache, and reports the share of random designs within `--margin` of the best preset, on the
mean and on each proxy alone (issue 9 asks for at least a quarter within 0.01 on the Permuted-MNIST proxy;
the counting is `search.plausibility`'s).

    OMP_NUM_THREADS=1 python bench/random_designs.py --space v1 --n 40 &   # twice, side by side: they share the runs
    python bench/random_designs.py --space v1 --n 40 --report-only

`--from-study NAME --storage URL` takes the random designs from a study of today's space instead of drawing and
running them: its first N sampled trials (not warm starts), which the study's sampler drew at random (they must fall
within its `n_startup_trials`) and scored on the same proxies; their scores are the trials' `proxy_<benchmark>`
attributes. The presets are still run here, through the cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE_COMMITS = {"v1": "a0c0e35", "v2": "16e2855"}  # the last commit of each earlier version of the space
PRESETS = ("ewc", "online_ewc", "si", "mas", "l2")
OUT = ROOT / "results" / "fidelity"

# Run in a subprocess with a space package on its path: prints [[label, source], ...] as JSON.
_DRAW = """
import json, sys
import optuna
import space
optuna.logging.set_verbosity(optuna.logging.WARNING)
n, seed, presets = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
out = [["preset_" + p, space.generate_source(space.PRESETS[p], {"preset": p})] for p in presets]
study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
while len(out) < len(presets) + n:
    trial = study.ask()
    try:
        out.append([f"random_{len(out) - len(presets)}", space.generate_source(space.suggest(trial))])
    except ValueError:
        pass
    study.tell(trial, 0.0)
print(json.dumps(out))
"""


def draw(version: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(label, module source) of the presets and `n` random designs of that version of the space."""
    with tempfile.TemporaryDirectory(prefix="space-") as tmp:
        if version in SPACE_COMMITS:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", SPACE_COMMITS[version], "space"],
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            path = tmp
        else:
            path = str(ROOT)
        proc = subprocess.run(
            [sys.executable, "-c", _DRAW, str(n), str(seed), ",".join(PRESETS)],
            check=True,
            capture_output=True,
            text=True,
            env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
            cwd=tmp,
        )
    return [(label, source) for label, source in json.loads(proc.stdout)]


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    from contextlib import closing

    from evaluation.cache import cached_path, load_record, run_cached, share_work, store_module
    from evaluation.errors import UserError
    from search.objective import chance_accuracy, proxy_config
    from search.plausibility import study_randoms, summarize
    from search.studies import load_study_def

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", choices=(*SPACE_COMMITS, "v3"), required=True)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--seed", type=int, default=0, help="seed of the random sampler")
    p.add_argument(
        "--study", default="campaign", help="the study whose Permuted-MNIST proxies score the designs"
    )
    p.add_argument("--margin", type=float, default=0.01)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--from-study", help="take the random designs from this study's random start (v3 only)")
    p.add_argument("--storage", help="storage URL of --from-study")
    args = p.parse_args(argv)
    if args.from_study and args.space != "v3":
        p.error("--from-study holds designs of today's space: use it with --space v3")
    import torch

    torch.set_num_threads(1)
    benches = [
        b for b in load_study_def(args.from_study or args.study).benchmarks if b.experiment == "permMNIST"
    ]
    labels = [b.label for b in benches]
    tag = f"random_{args.space}"
    designs = draw(args.space, 0 if args.from_study else args.n, args.seed)
    scores: dict[str, dict[str, float]] = {}
    if args.from_study:
        try:
            scores.update(study_randoms(args.from_study, args.storage, args.n, labels))
        except UserError as exc:
            raise SystemExit(str(exc)) from None
    jobs = [(label, source, bench) for label, source in designs for bench in benches]
    pending = []
    for label, source, bench in jobs:
        path, sha = store_module(OUT / "modules" / tag, label, source)
        cfg = proxy_config(bench, bench.seeds[0], data_dir=None, device="cpu")
        record = load_record(cached_path(f"{tag}_{label}", sha, cfg, OUT / "runs"))
        if record is not None:
            scores.setdefault(label, {})[bench.label] = float(record["result"]["average_accuracy"])
        else:
            pending.append((label, path, sha, cfg, bench))
    # processes run side by side share what the cache still lacks (claims), each run once
    work = share_work(pending, lambda j: cached_path(f"{tag}_{j[0]}", j[2], j[3], OUT / "runs"))
    with closing(work):
        for label, path, sha, cfg, bench in [] if args.report_only else work:
            try:
                record, _ = run_cached(f"{tag}_{label}", path, sha, cfg, cache_dir=OUT / "runs")
                score = float(record["result"]["average_accuracy"])
            except Exception as exc:  # a diverged design is no regularizer: it scores chance, as in a study
                print(f"{label} on {bench.label}: failed: {exc}", flush=True)
                score = chance_accuracy(cfg.experiment)
            print(f"{label} on {bench.label}: {score:.4f}", flush=True)
            scores.setdefault(label, {})[bench.label] = score
    for label, _, sha, cfg, bench in pending:  # the runs another process did
        record = load_record(cached_path(f"{tag}_{label}", sha, cfg, OUT / "runs"))
        if record is not None:
            scores.setdefault(label, {})[bench.label] = float(record["result"]["average_accuracy"])
    summary = summarize(scores, labels, args.margin)
    if not summary:
        print(f"{len(scores)} designs scored so far, none of them random or none a preset")
        return 0
    summary = {
        "space": args.space,
        "proxies": {b.label: {"iters": b.iters, "contexts": b.contexts, "train_subset": b.train_subset,
                              "lr": b.lr, "seed": b.seeds[0]} for b in benches},
        "study": args.study,
        "random_drawn": args.n,
        "random_from": f"study {args.from_study}" if args.from_study else f"RandomSampler(seed={args.seed})",
        "margin": args.margin,
        "scores": scores,
        **summary,
    }  # fmt: skip
    (OUT / f"{tag}_{args.study}.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    for what in [w for w in ("mean", *labels) if w in summary]:
        row = summary[what]
        print(
            f"{args.space} on {what}: {row['within_margin']}/{row['random_scored']} random designs "
            f"({row['share_within_margin']:.0%}) within {args.margin} of the best preset, {row['best_preset']} "
            f"({row['best_preset_score']:.4f}); median random {row['random_median']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
