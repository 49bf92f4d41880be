"""`python -m search panel`: run the fidelity panel and rank its candidate proxies (evaluation/panel.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.options import add_device, add_storage, add_threads, set_threads
from evaluation import panel as pnl
from evaluation.cache import store_module
from evaluation.errors import UserError
from search.export import top_designs
from search.storage import open_study


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `panel` subcommand."""
    p = sub.add_parser(
        "panel",
        help="run the fidelity panel (full runs and candidate proxies) and rank the proxies",
        description=(
            "Runs every design of the panel file at the full protocol (validation split) and at each candidate "
            "proxy, caching every run, then writes panel.md and panel.json beside the panel file: Spearman's rho "
            "per proxy and benchmark, whether the best design is in the proxy's top 3, and the proxy's cost."
        ),
    )
    p.add_argument(
        "--panel", type=Path, default=pnl.DEFAULT_PANEL, help="default: results/fidelity/panel.toml"
    )
    p.add_argument("--benchmarks", nargs="+", help="default: every benchmark of the panel file")
    p.add_argument("--proxies", nargs="+", help="only these candidate proxies (default: all)")
    p.add_argument("--no-full", action="store_true", help="run no full-fidelity run (only proxies)")
    p.add_argument("--no-proxies", action="store_true", help="run only the full-fidelity runs")
    p.add_argument("--report-only", action="store_true", help="run nothing; summarize the cache")
    p.add_argument(
        "--add-from-study",
        metavar="STUDY",
        help="first add the best distinct designs of this study to the panel",
    )
    p.add_argument("--top", type=int, default=3, help="how many designs --add-from-study adds (default 3)")
    add_storage(p, of="--add-from-study")
    add_device(p)
    add_threads(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    panel = pnl.load_panel(args.panel)
    benchmarks = args.benchmarks or list(panel.full_seeds)
    unknown = [b for b in benchmarks if b not in panel.full_seeds]
    if unknown:
        raise UserError(f"benchmark {unknown[0]!r} is not in the panel ({', '.join(panel.full_seeds)})")
    if args.add_from_study:
        for label in _add_from_study(panel, args.add_from_study, args.top, args.storage):
            print(f"panel: added {label}")
    if not args.report_only:
        pnl.run_panel(
            panel, benchmarks=benchmarks, full=not args.no_full, proxies=[] if args.no_proxies else args.proxies,
            device=args.device,
        )  # fmt: skip
    summary = pnl.write_summary(panel, benchmarks)
    for experiment, res in summary["benchmarks"].items():
        for row in res["proxies"]:
            print(
                f"{experiment} {row['proxy']}: rho {row['spearman_rho']:.3f} over {row['n']} designs, "
                f"best in top 3: {row['best_in_top3']}"
            )
    print(f"panel: {panel.path.with_suffix('.md')}")
    return 0


def _add_from_study(panel: pnl.PanelDef, study_name: str, top: int, storage_url: str | None) -> list[str]:
    """Store the module sources of the study's `top` best distinct designs in the panel's folder."""
    designs = top_designs(open_study(study_name, storage_url), top)
    if not designs:
        raise UserError(f"study {study_name!r} has no complete trial with a design to add to the panel")
    labels = []
    for d in designs:
        label = f"{study_name}_{d.label}"
        store_module(panel.modules_dir, label, d.source)
        labels.append(label)
    return labels
