"""`python -m search final-eval`: the candidate and every baseline on the full benchmarks, resumable."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from clharness.paths import check_out_dir
from clharness.protocol import PROTOCOLS

from cli.options import add_data_dir, add_device, add_threads, set_threads
from evaluation import final_eval as fe
from evaluation.cache import SEARCHED
from search.data_check import check_data_dir
from search.export import best_tuned_baseline, searched_source, study_modules


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `final-eval` subcommand."""
    p = sub.add_parser(
        "final-eval",
        help="score the candidate and the baselines on the full benchmarks over several seeds",
        description=(
            "Runs every (method, benchmark, seed) at the full published protocol on the test split, caching "
            "each result as JSON under OUT/runs (a rerun skips what is done), then writes OUT/README.md "
            "(table), OUT/summary.json and OUT/plots/."
        ),
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument("--hooks", type=Path, help="candidate hook module (default: custom_regularization.py)")
    who.add_argument("--study", help="take the candidate from this study's best trial")
    p.add_argument("--benchmarks", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help="evaluation seeds for every benchmark (default: "
        + ", ".join(f"{b} {fe.default_seeds(b)[0]}-{fe.default_seeds(b)[-1]}" for b in PROTOCOLS)
        + ")",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        help="subset of: candidate, searched (the campaign study's best trial: the search's own design, "
        "whichever ships), " + ", ".join(fe.PRESET_METHODS) + ", joint, tuned_<baseline>, tuned_best "
        "(the tuned baseline with the best promoted score on the validation split) (default: all, with every "
        "tuned baseline whose study exists)",
    )
    add_device(p)
    add_data_dir(p)
    p.add_argument("--out", type=Path, default=fe.DEFAULT_OUT, help="results folder (default: results)")
    add_threads(p)
    p.add_argument(
        "--report-only", action="store_true", help="rebuild the report from the cache, run nothing"
    )
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    check_out_dir(args.out)  # before any work: an unusable --out would otherwise fail after the runs
    data_dir = check_data_dir(args.data_dir)
    if data_dir is not None:
        # The harness reads $CL_DATA_DIR when a run names no folder; the run cache's keys leave paths out, so
        # runs made with the data elsewhere are still found.
        os.environ["CL_DATA_DIR"] = data_dir
    set_threads(args.threads)
    if args.methods and "tuned_best" in args.methods:
        best = best_tuned_baseline()
        args.methods = list(dict.fromkeys(best if m == "tuned_best" else m for m in args.methods))
    command = shlex.join(command_line(args))
    candidate, tuned = study_modules(args.methods, args.study)
    searched = searched_source() if not args.methods or SEARCHED in args.methods else None
    outcome, _ = fe.final_eval(
        methods=args.methods,
        hooks=args.hooks,
        candidate=candidate,
        tuned=tuned,
        searched=searched,
        benchmarks=args.benchmarks,
        seeds=args.seeds,
        device=args.device,
        out_dir=args.out,
        command=command,
        report_only=args.report_only,
    )
    return 0 if outcome.complete else 2


def command_line(args: argparse.Namespace) -> list[str]:
    """The full command, defaults spelled out, so the report says exactly what produced it."""
    argv = ["python", "-m", "search", "final-eval"]
    if args.hooks is not None:
        argv += ["--hooks", str(args.hooks)]
    if args.study is not None:
        argv += ["--study", args.study]
    argv += ["--benchmarks", *args.benchmarks]
    if args.seeds:
        argv += ["--seeds", *map(str, args.seeds)]
    if args.methods:
        argv += ["--methods", *args.methods]
    argv += ["--device", args.device]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    argv += ["--out", str(args.out)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return [*argv, "--report-only"] if args.report_only else argv
