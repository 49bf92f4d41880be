"""Full-protocol runs of a few hook modules on several validation streams, and their per-context table.

The go/no-go of a new family and two-stream promotion rest on this: each module runs at the published protocol
on the validation split of every stream seed asked for, through the run cache (a run already filed under
another name with the same module and configuration is reused, `reuse_identical`), several processes sharing
the work through claims. `table` renders what is cached: per-context accuracy, each stream's mean, and the mean
over streams, with a column per stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from statistics import fmean, median
from typing import Any

from evaluation.cache import CachedRun, RunFn, load_record, sha256_text, share_work, validation_configs
from evaluation.errors import UserError
from evaluation.fidelity import agreement

VAL_FRACTION = 0.1  # the promotion and panel runs' held-out share: their cached runs are reused


def plan(
    modules: Mapping[str, Path],
    experiment: str,
    seeds: Sequence[int],
    *,
    device: str = "auto",
    contexts: int | None = None,
) -> list[CachedRun]:
    """One CachedRun per (module, stream seed), modules in the order given; `contexts`: only the first ones, at
    the protocol's iterations and rate (the ladder's middle rung), else the whole protocol."""
    runs = []
    for label, path in modules.items():
        if not path.is_file():
            raise UserError(f"module {label!r}: {path} does not exist")
        sha = sha256_text(path.read_text(encoding="utf-8"))
        cfgs = validation_configs(
            experiment, list(seeds), val_fraction=VAL_FRACTION, device=device, contexts=contexts
        )
        for cfg in cfgs:
            runs.append(CachedRun(label, path, sha, cfg))
    return runs


def run(
    runs: Sequence[CachedRun],
    runs_dir: Path,
    *,
    run_fn: RunFn | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Run what is missing; a process started beside this one takes the other runs."""
    with closing(share_work(runs, lambda r: r.record(runs_dir), log=log)) as todo:
        for item in todo:
            log(f"running {item.label} on {item.cfg.experiment} stream {item.cfg.seed}")
            acc = item.execute(runs_dir, run_fn=run_fn)
            log(f"{item.label} stream {item.cfg.seed}: {acc:.4f}")


def results(runs: Sequence[CachedRun], runs_dir: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """label -> seed -> the cached result, filed under the label or, the same run, under another (a promotion's
    `trial_N`); missing runs left out."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        path = r.record(runs_dir)
        _, key, seed = path.name.rsplit("__", 2)
        record = load_record(path) or next(
            filter(None, map(load_record, sorted(path.parent.glob(f"*__{key}__{seed}")))), None
        )
        if record is not None:
            out.setdefault(r.label, {})[r.cfg.seed] = record["result"]
    return out


def table(runs: Sequence[CachedRun], runs_dir: Path) -> str:
    """Markdown: one row per module and stream with its per-context accuracies, then the mean over streams."""
    found = results(runs, runs_dir)
    labels = list(dict.fromkeys(r.label for r in runs))
    seeds = list(dict.fromkeys(r.cfg.seed for r in runs))
    contexts = max(
        (len(res["per_context_accuracy"]) for by in found.values() for res in by.values()), default=0
    )
    head = ["module", "stream", *[f"c{i + 1}" for i in range(contexts)], "average"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    means = []
    for label in labels:
        by_seed = found.get(label, {})
        for seed in seeds:
            res = by_seed.get(seed)
            if res is None:
                lines.append(f"| `{label}` | {seed} | " + "— | " * contexts + "not run |")
                continue
            accs = " | ".join(f"{a:.4f}" for a in res["per_context_accuracy"])
            lines.append(f"| `{label}` | {seed} | {accs} | {res['average_accuracy']:.4f} |")
        if len(by_seed) == len(seeds):
            means.append((label, fmean(by_seed[s]["average_accuracy"] for s in seeds)))
    lines.append("")
    lines.append("| module | mean over streams " + " ".join(f"({s})" for s in seeds) + " |")
    lines.append("|---|---|")
    lines.extend(f"| `{label}` | {mean:.4f} |" for label, mean in sorted(means, key=lambda m: -m[1]))
    return "\n".join(lines) + "\n"


def value_table(
    modules: Mapping[str, Path],
    benchmarks: Mapping[str, str],
    streams: Mapping[str, Sequence[int]],
    value_of: Callable[[Mapping[str, float]], float],
    runs_dir: Path,
    *,
    device: str = "auto",
) -> tuple[str, dict[str, float]]:
    """Markdown: each module's value on a study's scale, from its cached full runs: per benchmark (label ->
    experiment) the mean over its `streams`, then `value_of` those scores (the study's objective on its promoted
    anchors). Returns the table and the values of the modules with every run (a module missing one is listed
    with what it lacks)."""
    head = " | ".join(f"{label} ({', '.join(map(str, streams[label]))})" for label in benchmarks)
    lines = [f"| module | {head} | value |", "|---|" + "---|" * len(benchmarks) + "---|"]
    values = {}
    for name, path in modules.items():
        cells, scores = [], {}
        for label, experiment in benchmarks.items():
            seeds = streams[label]
            found = results(plan({name: path}, experiment, seeds, device=device), runs_dir).get(name, {})
            missing = [s for s in seeds if s not in found]
            if missing:
                cells.append("not run: " + ", ".join(map(str, missing)))
                continue
            scores[label] = fmean(found[s]["average_accuracy"] for s in seeds)
            cells.append(f"{scores[label]:.4f}")
        if len(scores) == len(benchmarks):
            values[name] = value_of(scores)
        cells.append(f"**{values[name]:.4f}**" if name in values else "—")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", values


def rung_table(
    rung: Sequence[CachedRun],
    full: Sequence[CachedRun],
    runs_dir: Path,
    proxy: Mapping[str, float] | None = None,
) -> str:
    """Markdown: how a cheaper rung's runs rank the modules against their full runs, stream by stream and on the
    mean over streams (Spearman rho over all, over the strong half, the full best in the rung's top 3), and what
    a design's rung run costs against its full run; then the scores side by side. `proxy` (a design's score on
    the rung below, its study's objective) is ranked against the same full runs, and the rung again over the
    same designs where it ran more."""
    ours, theirs = results(rung, runs_dir), results(full, runs_dir)
    seeds = list(dict.fromkeys(r.cfg.seed for r in rung))
    labels = list(dict.fromkeys(r.label for r in rung))
    proxy = proxy or {}

    def scores(found: dict[str, dict[int, dict[str, Any]]], which: Sequence[int]) -> dict[str, float]:
        return {
            k: fmean(by[s]["average_accuracy"] for s in which)
            for k, by in found.items()
            if all(s in by for s in which)
        }

    lines = [
        "| ranked by | streams | designs | Spearman rho | rho, strong half | full best in its top 3 |",
        "|---|---|---|---|---|---|",
    ]
    rung_name = f"the first {rung[0].cfg.contexts} contexts" if rung else "the rung"
    rows: list[tuple[str, Callable[[Sequence[int]], Mapping[str, float]]]] = [
        (rung_name, lambda which: scores(ours, which))
    ]
    if proxy:
        if set(labels) - set(proxy):
            rows.append(
                (
                    f"{rung_name}, the proxy's designs",
                    lambda w: {k: v for k, v in scores(ours, w).items() if k in proxy},
                )
            )
        rows.append(("the proxy", lambda which: proxy))
    for row, ranked in rows:
        for which in [[s] for s in seeds] + ([seeds] if len(seeds) > 1 else []):
            a = agreement(ranked(which), scores(theirs, which))
            top3 = "—" if a.best_in_top3 is None else ("yes" if a.best_in_top3 else "no")
            on = " and ".join(map(str, which)) + (" (mean)" if len(which) > 1 else "")
            # NaN: under 3 designs
            rho, strong = ("—" if r != r else f"{r:.2f}" for r in (a.rho, a.rho_strong))
            lines.append(f"| {row} | {on} | {len(a.designs)} | {rho} | {strong} | {top3} |")
    # Cost: each design's rung run against its own full run on the same stream, so that designs of another
    # cost (a structured penalty) weigh on both sides alike.
    walls = {
        name: {
            (r.label, r.cfg.seed): float(rec["wall_s"])
            for r in runs
            if (rec := load_record(r.record(runs_dir))) is not None and "wall_s" in rec
        }
        for name, runs in (("rung", rung), ("full", full))
    }
    pairs = sorted(set(walls["rung"]) & set(walls["full"]))
    if pairs:
        cost = {name: median(w[k] for k in pairs) for name, w in walls.items()}
        share = median(walls["rung"][k] / walls["full"][k] for k in pairs)
        lines += [
            "",
            f"Cost per design and stream, over the {len(pairs)} runs with both (median wall time of the cached "
            f"runs, each as it ran): rung {cost['rung']:.0f} s, full {cost['full']:.0f} s; a design's rung run "
            f"takes {share:.0%} of its full run (median).",
        ]
    head = "| module | " + ("proxy | " if proxy else "") + " | ".join(f"rung {s} | full {s}" for s in seeds)
    lines += ["", head + " |", "|---|" + ("---|" if proxy else "") + "---|---|" * len(seeds)]
    for label in labels:
        cells = [f"{proxy[label]:.4f}" if label in proxy else "—"] if proxy else []
        cells += [
            "—" if s not in found.get(label, {}) else f"{found[label][s]['average_accuracy']:.4f}"
            for s in seeds
            for found in (ours, theirs)
        ]
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
