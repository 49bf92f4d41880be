"""`python -m search run`: create or resume a study and run trials until its budget is spent.

Your runs write `studies/local/NAME.db` (gitignored) unless `--storage` is given; the committed
`studies/NAME.db` files are reference studies and never written (search/storage.py).

The data is loaded before anything is created: data that cannot serve is one line and no study. Without full
MNIST (the 5,000-image offline subset the harness falls back to) the study runs as a study of its own,
`NAME_offline` in `studies/local/NAME_offline.db`, whose anchors are measured on the same images; the first lines
say what data it uses and how to get the real benchmark.
"""

from __future__ import annotations

import argparse
from typing import Any

from clharness import paths
from clharness.errors import HarnessError

from cli.options import add_data_dir, add_device, add_storage, add_study, add_threads
from evaluation.errors import UserError
from search import data_check
from search.data_check import check_data_dir, cifar100_present
from search.loop import DEFAULT_OBJECTIVE, DEFAULT_PROBE, load_ref
from search.storage import display_url, local_storage_url
from search.studies import StudyDef, as_offline, derived_offline, load_study_def
from search.workers import run_study

FALLBACK_STUDY = "campaign"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `run` subcommand."""
    p = sub.add_parser("run", help="run (or resume) a study until its trial budget is spent")
    add_study(p)
    p.add_argument(
        "--n-trials", type=int, default=None, help="the study's total budget (default: its file's)"
    )
    add_storage(p, writes=True)
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    add_threads(p, default="half the cores shared out among the workers")
    add_data_dir(p)
    add_device(p)
    p.add_argument(
        "--auto-fallback",
        action="store_true",
        help="when the study needs CIFAR-100 and it is not in the data dir, run the mnist study instead",
    )
    # Test seams (not for users): the objective factory and the data probe as "module:function".
    p.add_argument("--objective", default=DEFAULT_OBJECTIVE, help=argparse.SUPPRESS)
    p.add_argument("--data-probe", default=DEFAULT_PROBE, help=argparse.SUPPRESS)
    p.set_defaults(func=main)


def fallback(study_def: StudyDef, data_dir: str | None) -> tuple[StudyDef, str | None]:
    """The study to run instead when CIFAR-100 is missing, with the line that says so (None: no change)."""
    if "CIFAR100" not in study_def.experiments or cifar100_present(data_dir):
        return study_def, None
    root = paths.data_dir(data_dir)
    line = (
        f"CIFAR-100 is not in {root}: running the '{FALLBACK_STUDY}' study (Permuted-MNIST, Split-MNIST) "
        f"instead of '{study_def.name}'. For the full suite: python -c \"import torchvision as t; "
        f"[d('{root}', download=True) for d in (t.datasets.CIFAR10, t.datasets.CIFAR100)]\", "
        "then `make pretrain-trunk`, then `make search` again."
    )
    return load_study_def(FALLBACK_STUDY), line


def load_data(probe: str, study_def: StudyDef, data_dir: str | None) -> dict[str, Any]:
    """The data record of the study's run (`search.data_check.probe`), said before it loads; data that cannot
    serve (unreadable files, a dataset absent with no fallback) is one line, before anything is created."""
    datasets = sorted({data_check.DATASET[e] for e in study_def.experiments})
    print(
        f"study {study_def.name}: loading its data ({', '.join(datasets)}) from {paths.data_dir(data_dir)} ...",
        flush=True,
    )
    try:
        record: dict[str, Any] = load_ref(probe)(study_def.experiments, data_dir)
    except HarnessError as exc:
        raise UserError(f"{' '.join(str(exc).split())} (no study was created)") from exc
    return record


def main(args: argparse.Namespace) -> int:
    """Run the study named by `args`."""
    data_dir = check_data_dir(args.data_dir)  # a typo is an error, not the offline fallback
    study_def = load_study_def(args.study)
    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"--n-trials must be at least 1, got {args.n_trials}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.auto_fallback:
        study_def, line = fallback(study_def, data_dir)
        if line:
            print(line, flush=True)
    data = load_data(args.data_probe, study_def, data_dir)
    offline = data_check.is_offline(data)
    if offline and args.storage is None:
        study_def = as_offline(study_def)  # your own study of the offline subset, never the full-MNIST one
    elif not offline and derived_offline(study_def):
        base = study_def.path.stem
        raise UserError(
            f"study {study_def.name!r} is {base!r} on the offline MNIST subset, and this run's data is "
            f"{data['source']} from {data.get('root')}: run --study {base} (make search STUDY={base})"
        )
    storage = args.storage or local_storage_url(study_def.name)
    if offline:
        print(data_check.offline_line(data, study_def.name, display_url(storage)), flush=True)
    return run_study(
        study_def,
        storage,
        n_trials=args.n_trials,
        n_workers=args.workers,
        data_dir=data_dir,
        device=args.device,
        threads=args.threads,
        objective=args.objective,
        probe=args.data_probe,
        data=data,
    )
