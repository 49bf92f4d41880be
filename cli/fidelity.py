"""`python -m search fidelity`: Spearman rank correlation between a study's proxy and full-protocol scores."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from clharness.paths import check_out_dir
from clharness.protocol import PROTOCOLS

from cli.options import add_device, add_storage, add_study, add_threads, set_threads
from evaluation import fidelity as fid
from search.fidelity import measure


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
    add_study(p, required=True)
    p.add_argument("--top", type=int, default=8, help="best complete trials to include (default 8)")
    p.add_argument("--random", type=int, default=4, help="random designs of the space to add (default 4)")
    p.add_argument(
        "--benchmark", nargs="+", choices=list(PROTOCOLS), help="only these benchmarks of the study"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random designs (default 0)")
    add_device(p)
    p.add_argument("--out", type=Path, default=fid.DEFAULT_OUT, help="default: results/fidelity")
    add_threads(p)
    add_storage(p)
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
