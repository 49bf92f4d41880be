"""`python -m search run`: create or resume a study and run trials until its budget is spent.

Your runs write `studies/local/NAME.db` (gitignored) unless `--storage` is given; the committed
`studies/NAME.db` files are reference studies and never written (search/storage.py).
"""

from __future__ import annotations

import argparse

from evaluation.errors import UserError
from search.data_check import check_data_dir
from search.storage import local_storage_url
from search.studies import StudyDef, load_study_def
from search.workers import DEFAULT_OBJECTIVE, DEFAULT_PROBE, run_study

FALLBACK_STUDY = "campaign"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `run` subcommand."""
    p = sub.add_parser("run", help="run (or resume) a study until its trial budget is spent")
    p.add_argument(
        "--study", default="default", help="study name (studies/NAME.toml) or path to a study file"
    )
    p.add_argument(
        "--n-trials", type=int, default=None, help="the study's total budget (default: its file's)"
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: sqlite:///studies/local/NAME.db, your own study; the committed "
        "studies/NAME.db references are never written)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker (docs/search.md)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="dataset root, an existing folder (default: $CL_DATA_DIR, else <repo>/data)",
    )
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device (default auto)"
    )
    p.add_argument(
        "--auto-fallback",
        action="store_true",
        help="when the study needs CIFAR-100 and it is not in the data dir, run the mnist study instead",
    )
    # Test seams (not for users): the objective factory and the data probe as "module:function".
    p.add_argument("--objective", default=DEFAULT_OBJECTIVE, help=argparse.SUPPRESS)
    p.add_argument("--data-probe", default=DEFAULT_PROBE, help=argparse.SUPPRESS)
    p.set_defaults(func=main)


def cifar100_present(data_dir: str | None) -> bool:
    """Whether the torchvision CIFAR-100 folder is in the data dir (probed, never downloaded)."""
    from clharness import paths

    return (paths.data_dir(data_dir) / "cifar-100-python").is_dir()


def fallback(study_def: StudyDef, data_dir: str | None) -> tuple[StudyDef, str | None]:
    """The study to run instead when CIFAR-100 is missing, with the line that says so (None: no change)."""
    if "CIFAR100" not in study_def.experiments or cifar100_present(data_dir):
        return study_def, None
    from clharness import paths

    root = paths.data_dir(data_dir)
    line = (
        f"CIFAR-100 is not in {root}: running the '{FALLBACK_STUDY}' study (Permuted-MNIST, Split-MNIST) "
        f"instead of '{study_def.name}'. For the full suite: python -c \"import torchvision as t; "
        f"[d('{root}', download=True) for d in (t.datasets.CIFAR10, t.datasets.CIFAR100)]\", "
        "then `make pretrain-trunk`, then `make search` again."
    )
    return load_study_def(FALLBACK_STUDY), line


def main(args: argparse.Namespace) -> int:
    """Run the study named by `args`."""
    data_dir = check_data_dir(args.data_dir)  # a typo is an error, not the offline fallback
    study_def = load_study_def(args.study)
    if args.auto_fallback:
        study_def, line = fallback(study_def, data_dir)
        if line:
            print(line, flush=True)
    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"--n-trials must be at least 1, got {args.n_trials}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    storage = args.storage or local_storage_url(study_def.name)
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
    )
