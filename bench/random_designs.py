"""Are random points of the space plausible regularizers? N random designs against the presets, on one proxy.

Draws N designs uniformly from a version of the space (`v2`: today's calibrated space; `v1`: the first space, taken
from git commit `V1_COMMIT` and run in a subprocess, so that its sampler and generator are the ones the first
reference study used), runs them and the published presets of the same version on one benchmark's proxy
(validation split) through the run cache, and reports the share of random designs within `--margin` of the best
preset (issue 9 asks for at least a quarter within 0.01 on the Permuted-MNIST proxy).

    OMP_NUM_THREADS=1 python bench/random_designs.py --space v1 --n 40 --iters 250 --lr 0.002 --shard 0/2  # and 1/2
    python bench/random_designs.py --space v1 --n 40 --iters 250 --lr 0.002 --report-only

`--from-study NAME --storage URL` takes the random designs from a study instead of drawing and running them: its
first N sampled trials (not warm starts), which the study's sampler drew at random (they must fall within its
`n_startup_trials`) and scored on the same proxy; their Permuted-MNIST proxy score is the trial's
`proxy_<benchmark>` attribute. The presets are still run here, through the cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
V1_COMMIT = "a0c0e35"  # the last commit of the first space
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
        if version == "v1":
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", V1_COMMIT, "space"], check=True, capture_output=True
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


def study_randoms(name: str, storage: str | None, n: int, cfg: Any) -> dict[str, float]:
    """`random_<k>` -> proxy score of the study's first `n` sampled (not warm-start) complete trials, checked to be
    the sampler's random start and scored on `cfg`'s proxy."""
    from optuna.trial import TrialState

    from search.objective import CRASH, chance_accuracy
    from search.storage import default_storage_url, open_study
    from search.studies import load_study_def

    study_def = load_study_def(name)
    from clharness.protocol import PROTOCOLS

    def contexts(experiment: str, n: int | None) -> int:  # None: all of the protocol's
        return PROTOCOLS[experiment].contexts if n is None else n

    wanted = (
        cfg.experiment,
        cfg.iters,
        contexts(cfg.experiment, cfg.contexts),
        cfg.train_subset,
        cfg.seed,
        cfg.lr,
    )
    bench = next(
        (
            b
            for b in study_def.benchmarks
            if (b.experiment, b.iters, contexts(b.experiment, b.contexts), b.train_subset, b.seeds[0], b.lr)
            == wanted
        ),
        None,
    )
    if bench is None:
        raise SystemExit(f"study {name} does not score {cfg.experiment} at this proxy {wanted[1:]}")
    study = open_study(study_def.name, storage or default_storage_url(study_def.name))
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    # a crashed trial's design runs again in its retry (a later trial), which stands for it
    sampled = [
        t
        for t in trials
        if "warm_start" not in t.user_attrs
        and t.state != TrialState.WAITING
        and not (t.state == TrialState.FAIL and t.user_attrs.get("fail_kind") == CRASH)
    ]
    startup = study_def.sampler.n_startup_trials - len(study_def.warm_start)
    if study_def.sampler.name == "tpe" and startup < n:
        raise SystemExit(f"study {name} samples only {startup} trials at random before TPE; asked for {n}")
    first = sampled[:n]
    if len(first) < n or any(t.state not in (TrialState.COMPLETE, TrialState.FAIL) for t in first):
        raise SystemExit(f"study {name}: its first {n} sampled trials have not all finished unpruned")
    # a design that failed (diverged) is a random point that is no regularizer: it scores chance here
    return {
        f"random_{k}": float(t.user_attrs.get(f"proxy_{bench.label}", chance_accuracy(cfg.experiment)))
        if t.state == TrialState.COMPLETE
        else chance_accuracy(cfg.experiment)
        for k, t in enumerate(first)
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    from clharness.runner import RunConfig

    from evaluation.cache import code_version, load_record, result_path, run_cached, run_key, store_module

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", choices=("v1", "v2"), required=True)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--seed", type=int, default=0, help="seed of the random sampler")
    p.add_argument("--experiment", default="permMNIST")
    p.add_argument("--iters", type=int, required=True, help="proxy iterations per context")
    p.add_argument("--contexts", type=int)
    p.add_argument("--train-subset", type=int, help="training images per context (default: all)")
    p.add_argument("--lr", type=float, help="a learning-rate-matched proxy's rate (default: the protocol's)")
    p.add_argument("--proxy-seed", type=int, default=1001)
    p.add_argument("--margin", type=float, default=0.01)
    p.add_argument("--shard", default="0/1")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--from-study", help="take the random designs from this study's random start (v2 only)")
    p.add_argument("--storage", help="storage URL of --from-study")
    args = p.parse_args(argv)
    if args.from_study and args.space != "v2":
        p.error("--from-study holds designs of today's space: use it with --space v2")
    import torch

    torch.set_num_threads(1)
    index, count = (int(x) for x in args.shard.split("/"))
    cfg = RunConfig(
        experiment=args.experiment, seed=args.proxy_seed, iters=args.iters, contexts=args.contexts,
        val_fraction=0.1, eval_split="val", device="cpu", lr=args.lr, train_subset=args.train_subset,
    )  # fmt: skip
    tag = f"random_{args.space}"
    designs = draw(args.space, 0 if args.from_study else args.n, args.seed)
    scores: dict[str, float] = {}
    if args.from_study:
        scores.update(study_randoms(args.from_study, args.storage, args.n, cfg))
    for i, (label, source) in enumerate(designs):
        name = f"{tag}_{label}"
        path, sha = store_module(OUT / "modules" / tag, label, source)
        if args.report_only or i % count != index:
            key, _ = run_key(sha, cfg, code_version())
            record = load_record(result_path(OUT / "runs", name, cfg.experiment, key, cfg.seed))
        else:
            try:
                record, cached = run_cached(name, path, sha, cfg, cache_dir=OUT / "runs")
            except Exception as exc:  # a diverged design is no regularizer: it scores chance, as in a study
                from search.objective import chance_accuracy

                print(f"{label}: failed: {exc}", flush=True)
                scores[label] = chance_accuracy(cfg.experiment)
                continue
            if not cached:
                print(f"{label}: {record['result']['average_accuracy']:.4f}", flush=True)
        if record is not None:
            scores[label] = float(record["result"]["average_accuracy"])
    presets = {k: v for k, v in scores.items() if k.startswith("preset_")}
    randoms = {k: v for k, v in scores.items() if k.startswith("random_")}
    if not presets or not randoms:
        print(f"{len(presets)} presets and {len(randoms)} random designs scored so far")
        return 0
    best = max(presets.values())
    close = [k for k, v in randoms.items() if v >= best - args.margin]
    summary = {
        "space": args.space,
        "proxy": {
            "experiment": args.experiment,
            "iters": args.iters,
            "contexts": args.contexts,
            "seed": args.proxy_seed,
            "lr": args.lr,
            "train_subset": args.train_subset,
        },
        "presets": presets,
        "best_preset": best,
        "random_scored": len(randoms),
        "random_drawn": args.n,
        "random_from": f"study {args.from_study}" if args.from_study else f"RandomSampler(seed={args.seed})",
        "within_margin": len(close),
        "share_within_margin": len(close) / len(randoms),
        "random_median": statistics.median(randoms.values()),
        "random": randoms,
    }
    stem = f"{tag}_{args.experiment}_iters{args.iters}" + (f"_lr{args.lr:g}" if args.lr else "")
    stem += f"_n{args.train_subset}" if args.train_subset else ""
    (OUT / f"{stem}.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(
        f"{args.space}: {len(close)}/{len(randoms)} random designs ({len(close) / len(randoms):.0%}) within "
        f"{args.margin} of the best preset ({best:.4f}); median random {summary['random_median']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
