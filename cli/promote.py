"""`python -m search promote`: re-run a study's best trials at a higher fidelity and store their scores."""

from __future__ import annotations

import argparse
from pathlib import Path

from clharness.paths import check_out_dir

from cli.options import add_device, add_storage, add_threads, set_threads
from evaluation.errors import UserError
from search import promote as prm
from search.records import best_promoted, promoted_study_name
from search.storage import check_writable, make_storage, open_study, read_storage_url
from search.studies import load_study_def


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `promote` subcommand."""
    p = sub.add_parser(
        "promote",
        help="re-run a study's K best trials at the full protocol (validation split) and store the scores",
        description=(
            "Runs the K best distinct designs of the study (by proxy value), and its warm starts, on each of "
            "its benchmarks at the "
            "full published protocol, or at the fidelity given by --iters/--contexts/--train-subset, on the "
            "validation split with the study's proxy stream seeds, with none and joint training as anchors. "
            "Every run is cached; the scores are stored on the study, and `export`/`make regenerate` then pick "
            "the best design at the highest fidelity run. For the dashboard, each result is also a trial of "
            "the study NAME:promoted in the same storage."
        ),
    )
    p.add_argument(
        "--study",
        nargs="+",
        required=True,
        metavar="NAME",
        help="study names (studies/NAME.toml) or paths of study files; several are promoted as one pool of runs, "
        "so that two processes sharing it wait for each other once, at the end, rather than after each study",
    )
    p.add_argument(
        "--top", type=int, default=5, help="how many of the best trials, besides the warm starts (default 5)"
    )
    add_storage(p, of="--study when it names one study; several are each read from their default storage")
    p.add_argument("--iters", type=int, help="iterations per context (default: the published protocol's)")
    p.add_argument("--contexts", type=int, help="contexts (default: all)")
    p.add_argument("--train-subset", type=int, help="training images per context (default: all)")
    p.add_argument(
        "--streams",
        nargs="+",
        metavar="EXPERIMENT=SEED,SEED",
        help="validation streams per benchmark instead of the study's proxy streams (e.g. permMNIST=1001,1002 "
        "splitMNIST=1000,1003): each design is scored by the mean over them",
    )
    p.add_argument(
        "--from",
        dest="rank_from",
        metavar="FIDELITY",
        help="pick the --top designs by their results at this fidelity instead of by proxy value (the next rung "
        "of a ladder, e.g. --from contexts4; a family's best two on a second stream, --from full)",
    )
    add_device(p)
    p.add_argument(
        "--out", type=Path, default=prm.DEFAULT_OUT, help="run cache and modules (default: results/fidelity)"
    )
    add_threads(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    check_out_dir(args.out)  # before any work: an unusable --out would otherwise fail after the runs
    set_threads(args.threads)
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    for name in ("iters", "contexts", "train_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.storage and len(args.study) > 1:
        raise UserError("--storage names the storage of one study; several are each read from their own")
    overrides = {"iters": args.iters, "contexts": args.contexts, "train_subset": args.train_subset}
    streams = _streams(args.streams or [])
    plans = []
    for name in args.study:
        study_def = load_study_def(name)
        url = read_storage_url(study_def.name, args.storage)
        check_writable(url)  # promotion results are written onto the study: never onto a committed reference
        plans.append(
            prm.plan(
                open_study(study_def.name, url),
                study_def,
                storage=make_storage(url),
                top=args.top,
                overrides=overrides,
                streams=streams,
                rank_from=args.rank_from,
                device=args.device,
                out_dir=args.out,
            )
        )
        if not plans[-1].chosen:
            raise UserError(f"study {study_def.name!r} has no complete trial with a stored module to promote")
    prm.run_plans(plans)
    for p in plans:
        results = prm.score(p)
        best = best_promoted(p.study)
        assert best is not None
        name = p.study_def.name
        print(
            f"promoted {len(results)} trials of study {name} at fidelity {p.fidelity}; best at the highest "
            f"fidelity: trial {best['trial']} ({best['fidelity']}, value {best['value']:.4f}); "
            f"write it with: python -m search export --study {name}"
            f"{f' --storage {args.storage}' if args.storage else ''} --out custom_regularization.py; "
            f"the dashboard shows each promoted trial in study {promoted_study_name(name)}"
        )
    return 0


def _streams(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """EXPERIMENT=SEED,SEED,... -> {experiment: seeds}; a one-line UserError for anything else."""
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        experiment, sep, seeds = spec.partition("=")
        try:
            values = tuple(int(s) for s in seeds.split(","))
        except ValueError:
            values = ()
        if not sep or not values or len(set(values)) != len(values):
            raise UserError(f"--streams {spec!r}: expected EXPERIMENT=SEED,SEED with distinct integer seeds")
        out[experiment] = values
    return out
