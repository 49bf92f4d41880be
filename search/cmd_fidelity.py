"""`python -m search fidelity`: Spearman rank correlation between a study's proxy and full-protocol scores."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clharness.paths import check_out_dir
from clharness.protocol import PROTOCOLS

from evaluation import fidelity as fid
from evaluation.cache import RunFn
from evaluation.errors import UserError
from evaluation.final_eval import LogFn
from search.cli import add_threads_argument, set_threads
from search.export import top_designs
from search.storage import open_study
from search.studies import load_study_def


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `fidelity` subcommand."""
    p = sub.add_parser(
        "fidelity",
        help="how well a study's proxy ranks designs as full runs do (Spearman rank correlation)",
        description=(
            "Runs the study's top designs and random designs of its space at the proxy settings and at the "
            "full protocol (validation split, the study's proxy seed), caching every run, and reports the "
            "Spearman rank correlation per benchmark in OUT/<study>.md and .json."
        ),
    )
    p.add_argument("--study", required=True, help="study name (studies/<name>.toml) or file")
    p.add_argument("--top", type=int, default=8, help="best complete trials to include (default 8)")
    p.add_argument("--random", type=int, default=4, help="random designs of the space to add (default 4)")
    p.add_argument(
        "--benchmark", nargs="+", choices=list(PROTOCOLS), help="only these benchmarks of the study"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random designs (default 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", type=Path, default=fid.DEFAULT_OUT, help="default: results/fidelity")
    add_threads_argument(p)
    p.add_argument("--storage", help="storage URL (default: the study's file under studies/)")
    g = p.add_argument_group(
        "alternative proxy settings (to tune a study's proxy against the same full runs)"
    )
    g.add_argument("--proxy-iters", type=int)
    g.add_argument("--proxy-contexts", type=int)
    g.add_argument("--proxy-train-subset", type=int)
    g.add_argument("--proxy-seeds", type=int, nargs="+")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    check_out_dir(args.out)  # before any work: an unusable --out would otherwise fail after the runs
    set_threads(args.threads)
    overrides = {
        "iters": args.proxy_iters,
        "contexts": args.proxy_contexts,
        "train_subset": args.proxy_train_subset,
        "seeds": tuple(args.proxy_seeds) if args.proxy_seeds else None,
    }
    summary = measure(
        args.study,
        top=args.top,
        random=args.random,
        benchmarks=args.benchmark,
        seed=args.seed,
        device=args.device,
        out_dir=args.out,
        proxy_overrides={k: v for k, v in overrides.items() if v is not None},
        storage=args.storage,
        command=shlex.join(command_line(args)),
    )
    return 0 if summary["complete"] else 2


def measure(
    study: str,
    *,
    top: int = 8,
    random: int = 4,
    benchmarks: Sequence[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    out_dir: Path = fid.DEFAULT_OUT,
    proxy_overrides: Mapping[str, Any] | None = None,
    storage: str | None = None,
    run_fn: RunFn | None = None,
    log: LogFn = print,
    command: str = "",
) -> dict:
    """The study's `top` best designs (from its storage) and `random` designs of its space (drawn with `seed`),
    measured by `evaluation.fidelity.fidelity` on the study's proxies of `benchmarks` (default: all)."""
    study_def = load_study_def(study)
    benches = [b for b in study_def.benchmarks if benchmarks is None or b.experiment in benchmarks]
    if not benches:
        raise UserError(
            f"study {study_def.name!r} has no benchmark among {', '.join(benchmarks or [])} "
            f"(it has {', '.join(study_def.experiments)})"
        )
    if top < 0 or random < 0 or top + random < 3:
        raise UserError("--top and --random must be >= 0 and give at least 3 designs together")
    # random designs alone need no storage: the proxy can be measured before the study has run
    designs = top_designs(open_study(study_def.name, storage), top) if top else []
    if len(designs) < top:
        log(f"fidelity: study {study_def.name!r} has only {len(designs)} distinct complete designs")
    seen = {json.dumps(d.design, sort_keys=True) for d in designs}
    designs += fid.random_designs(random, seed=seed, fixed=study_def.fixed, exclude=seen)
    return fid.fidelity(
        study_def.name,
        benches,
        designs,
        device=device,
        out_dir=out_dir,
        proxy_overrides=proxy_overrides,
        run_fn=run_fn,
        log=log,
        command=command,
    )


def command_line(args: argparse.Namespace) -> list[str]:
    """The full command with its settings spelled out, for the report."""
    argv = ["python", "-m", "search", "fidelity", "--study", args.study, "--top", str(args.top)]
    argv += ["--random", str(args.random), "--seed", str(args.seed)]
    if args.benchmark:
        argv += ["--benchmark", *args.benchmark]
    for flag in ("proxy_iters", "proxy_contexts", "proxy_train_subset"):
        if getattr(args, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    if args.proxy_seeds:
        argv += ["--proxy-seeds", *map(str, args.proxy_seeds)]
    argv += ["--device", args.device, "--out", str(args.out)]
    return [*argv, "--threads", str(args.threads)] if args.threads is not None else argv
