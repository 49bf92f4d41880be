"""`python -m search validate`: hook modules at the full protocol on several validation streams (evaluation/streams.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clharness.atomic import write_atomic

from cli.options import add_device, add_threads, set_threads
from evaluation import streams
from evaluation.cache import store_module
from evaluation.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `validate` subcommand."""
    p = sub.add_parser(
        "validate",
        help="run hook modules at the full protocol on several validation streams and tabulate them",
        description=(
            "Runs each LABEL=PATH hook module at the published protocol on the validation split of every stream "
            "seed, through the run cache (two processes started side by side share the runs), then prints the "
            "per-context table and the mean over streams."
        ),
    )
    p.add_argument(
        "--finalists",
        nargs="+",
        default=[],
        metavar="STUDY",
        help=(
            "also every trial each study promoted at its highest fidelity (labelled STUDY_TRIAL), as the module "
            "it scored: the budget rule's two-stream finalists"
        ),
    )
    p.add_argument(
        "--module",
        nargs="+",
        default=[],
        metavar="LABEL=PATH|NAME",
        help=(
            "the modules to run: a hook module file under a label, or a preset or variant of the space by name, "
            "NAME@X for it at X times its strength (a sweep: mas@2 mas@4 ...)"
        ),
    )
    p.add_argument("--benchmark", default="permMNIST", help="default: permMNIST")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[1001, 1002], help="stream seeds (default: 1001 1002)"
    )
    p.add_argument(
        "--contexts",
        type=int,
        help=(
            "run only the first N contexts, at the protocol's iterations and rate (the ladder's middle rung), "
            "and rank the modules against their full runs on the same streams (copied from an equivalent run, "
            "else run after the rung)"
        ),
    )
    p.add_argument(
        "--value",
        metavar="STUDY",
        help=(
            "also each module's value on STUDY's promoted scale (the budget rule's): from its cached full runs on "
            "the streams of the study's best promoted result, as the share of that result's none-to-joint gap "
            "closed, weighted as the study weighs its benchmarks; the study's own pick beside it (runs nothing "
            "more: a missing run is named)"
        ),
    )
    p.add_argument("--runs", type=Path, default=Path("results/fidelity/runs"), help="the run cache")
    p.add_argument("--report", type=Path, help="also write the table to this file")
    p.add_argument("--report-only", action="store_true", help="run nothing; tabulate the cache")
    add_device(p)
    add_threads(p)
    p.set_defaults(func=_main)


def _modules(specs: list[str], module_dir: Path) -> dict[str, Path]:
    """LABEL=PATH as given; a preset or variant name (NAME@X: at X times its strength, labelled NAME_xX) is
    generated into `module_dir` (named by its content)."""
    import space  # deferred: it imports torch, which the other commands start without

    named = {**space.PRESETS, **space.VARIANTS}
    modules = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        name, at, times = spec.partition("@")
        if not sep and name in named:
            try:
                design = space.named(spec)
            except ValueError as exc:
                raise UserError(f"--module {exc}") from None
            label, provenance = (
                (f"{name}_x{float(times):g}".replace(".", "p"), {}) if at else (name, {"preset": name})
            )
            source = space.generate_source(design, provenance)
            modules[label] = store_module(module_dir, label, source)[0]
            continue
        if not sep or not label.isidentifier():
            raise UserError(
                f"--module {spec!r}: expected LABEL=PATH with LABEL an identifier, or a preset or variant "
                f"({', '.join(sorted(named))})"
            )
        modules[label] = Path(path)
    return modules


def _finalists(studies: list[str], module_dir: Path) -> tuple[dict[str, Path], dict[str, float]]:
    """The trials each study promoted at its highest fidelity, as the modules they scored, under STUDY_TRIAL;
    and their proxy values (the study's objective), which the ladder's rung table ranks beside the rung."""
    from search.export import trial_module
    from search.records import top_promoted
    from search.storage import open_study, read_storage_url

    modules, proxy = {}, {}
    for name in studies:
        study = open_study(name, read_storage_url(name))
        entries = top_promoted(study)
        if not entries:
            raise UserError(f"--finalists {name}: the study has no promoted trial")
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        for e in sorted(entries, key=lambda e: -e["value"]):
            label = f"{name}_{e['trial']}"
            modules[label] = store_module(module_dir, label, trial_module(trials[e["trial"]], name))[0]
            if (value := trials[e["trial"]].value) is not None:
                proxy[label] = float(value)
    return modules, proxy


def _value_section(study_name: str, modules: dict[str, Path], runs_dir: Path, device: str) -> str:
    """The modules' values on a study's promoted scale, beside the study's best promoted result."""
    from search.objective import objective_value
    from search.records import best_promoted
    from search.storage import open_study, read_storage_url
    from search.studies import load_study_def

    study_def = load_study_def(study_name)
    entry = best_promoted(open_study(study_name, read_storage_url(study_name)))
    if entry is None:
        raise UserError(f"--value {study_name}: the study has no promoted trial")
    if not entry["fidelity"].startswith("full"):  # its anchors are then of a shorter protocol than these runs
        raise UserError(
            f"--value {study_name}: its promotions reach {entry['fidelity']}, not the full protocol"
        )
    table, _ = streams.value_table(
        modules,
        {b.label: b.experiment for b in study_def.benchmarks},
        entry["streams"],
        lambda scores: objective_value(scores, study_def, entry["anchors"]),
        runs_dir,
        device=device,
    )
    return (
        f"\n## Values on the `{study_name}` study's promoted scale ({entry['fidelity']})\n\n{table}\n"
        f"The study's pick: trial {entry['trial']}, value {entry['value']:.4f}.\n"
    )


def _main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.report is not None and args.report.parent.exists() and not args.report.parent.is_dir():
        raise UserError(f"--report {args.report}: its folder is not a directory")
    if args.contexts is not None and args.contexts < 1:
        raise UserError(f"--contexts {args.contexts}: expected at least 1")
    if not args.module and not args.finalists:
        raise UserError("name the modules to run: --module LABEL=PATH|NAME ... and/or --finalists STUDY ...")
    module_dir = args.runs.parent / "modules" / "validate"
    finalists, proxy = _finalists(args.finalists, module_dir)
    modules = {**finalists, **_modules(args.module, module_dir)}
    runs = streams.plan(modules, args.benchmark, args.seeds, device=args.device, contexts=args.contexts)
    # the rung is ranked against each module's full runs: copied from an equivalent run, else run after the rung
    full = streams.plan(modules, args.benchmark, args.seeds, device=args.device) if args.contexts else []
    if not args.report_only:
        streams.run(runs, args.runs)
        streams.run(full, args.runs)
    text = streams.table(runs, args.runs)
    if full:
        text += f"\n## The first {args.contexts} contexts against the full protocol\n\n"
        text += streams.rung_table(runs, full, args.runs, proxy)
    if args.value:
        text += _value_section(args.value, modules, args.runs, args.device)
    print(text, end="")
    if args.report is not None:
        write_atomic(args.report, text)
    return 0
