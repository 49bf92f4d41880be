"""The results report: a markdown table (mean ± SE over seeds), published numbers beside it, plots.

Built from the cached run records of `evaluation.final_eval` only, so it can be rebuilt at any time
(`python -m search final-eval --report-only`) and always shows every seed the cache holds for the current
configuration of each method.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clharness.atomic import write_atomic

from evaluation import cache
from evaluation.errors import UserError
from evaluation.stats import (
    ALPHA,
    CANDIDATE,
    Comparison,
    Summary,
    compare,
    compare_table,
    paired_differences,
    side,
    summarize,
    verdict,
)

BENCHMARK_TITLES: dict[str, str] = {
    "splitMNIST": "Split-MNIST",
    "permMNIST": "Permuted-MNIST",
    "CIFAR100": "Split-CIFAR100",
}
BENCHMARK_SETTINGS: dict[str, str] = {
    "splitMNIST": "task-incremental, 5 contexts x 2 digits",
    "permMNIST": "domain-incremental, 10 permutations",
    "CIFAR100": "task-incremental, 10 contexts x 10 classes",
}

# Published numbers, as fractions. Sources are keyed by a short tag that the report's footnotes explain.
SOURCES: dict[str, str] = {
    "harness": "the original benchmark harness's published results for its EWC, Online EWC and SI modules",
    "vdv2022": (
        "van de Ven, Tuytelaars & Tolias, *Three types of incremental learning*, Nature Machine Intelligence "
        "2022, Table 3: Split-CIFAR100 task-incremental with the pretrained trunk, 10 seeds "
        "(published in percent)"
    ),
}
REFERENCES: dict[str, dict[str, list[tuple[str, float]]]] = {
    "splitMNIST": {
        "ewc": [("harness", 0.958)],
        "online_ewc": [("harness", 0.974)],
        "si": [("harness", 0.985)],
    },
    "permMNIST": {
        "ewc": [("harness", 0.838)],
        "online_ewc": [("harness", 0.843)],
        "si": [("harness", 0.447)],
    },
    "CIFAR100": {
        "none": [("vdv2022", 0.6143)],
        "ewc": [("harness", 0.546), ("vdv2022", 0.7634)],
        "online_ewc": [("harness", 0.544)],
        "si": [("harness", 0.536), ("vdv2022", 0.7484)],
        "joint": [("vdv2022", 0.7878)],
    },
}


def format_summary(summary: Summary) -> str:
    """`0.9812 ± 0.0013`, or `0.9812 (n=1)` where one seed gives no error estimate."""
    if summary.se is None:
        return f"{summary.mean:.4f} (n=1)"
    return f"{summary.mean:.4f} ± {summary.se:.4f}"


def format_references(experiment: str, method: str) -> str:
    """The published numbers for one cell, each with its source tag."""
    refs = REFERENCES.get(experiment, {}).get(method, [])
    return ", ".join(f"{value:.4g} [{tag}]" for tag, value in refs) or "—"


# ---------------------------------------------------------------------------------------------------------
# Accuracy matrices


def average_curve(acc_matrix: Sequence[Sequence[float]]) -> list[float]:
    """Average accuracy over the contexts seen so far, after each context (row means of the matrix)."""
    return [statistics.fmean(row) for row in acc_matrix if row]


def _valid_matrix(record: Mapping) -> list[list[float]] | None:
    matrix = record.get("result", {}).get("acc_matrix")
    if not matrix or not all(isinstance(row, list) and len(row) == i + 1 for i, row in enumerate(matrix)):
        return None  # joint training, or a run without a matrix: no "as training proceeds" view
    return [[float(v) for v in row] for row in matrix]


# ---------------------------------------------------------------------------------------------------------
# Plots


@dataclass(frozen=True)
class Style:
    """How one method is drawn in every figure."""

    color: str
    marker: str
    ls: str = "-"
    lw: float = 1.4
    zorder: float = 2.0


# One colour per method, the same in every figure (tab10 and its light shades; red is the candidate's alone).
STYLES: dict[str, Style] = {
    CANDIDATE: Style("#d62728", "o", lw=2.6, zorder=5.0),
    "ewc": Style("#1f77b4", "s"),
    "online_ewc": Style("#ff7f0e", "^"),
    "si": Style("#2ca02c", "v"),
    "mas": Style("#9467bd", "D"),
    "l2": Style("#8c564b", "P"),
    "none": Style("#7f7f7f", "X"),
    "joint": Style("#000000", "", ls="--", lw=1.2),
    "tuned_ewc": Style("#17becf", "*", ls="--"),
    "tuned_online_ewc": Style("#bcbd22", "*", ls="--"),
    "tuned_si": Style("#98df8a", "*", ls="--"),
    "tuned_mas": Style("#e377c2", "*", ls="--"),
    "tuned_l2": Style("#c49c94", "*", ls="--"),
}
_SPARE_COLORS = ("#aec7e8", "#ffbb78", "#c5b0d5", "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79")


def method_style(method: str) -> Style:
    """The method's style; a method without one gets a spare colour chosen from its name (stable)."""
    if method in STYLES:
        return STYLES[method]
    index = int(hashlib.sha256(method.encode()).hexdigest(), 16) % len(_SPARE_COLORS)
    return Style(_SPARE_COLORS[index], "h")


def _same_as(by_method: Mapping[str, Mapping[int, dict]], method: str) -> str | None:
    """An earlier method whose every seed scored exactly as `method`'s (two names for one computation)."""
    mine = {s: r["result"]["average_accuracy"] for s, r in by_method.get(method, {}).items()}
    for other, recs in by_method.items():
        if other == method:
            return None
        if mine and {s: r["result"]["average_accuracy"] for s, r in recs.items()} == mine:
            return other
    return None


def top_group(finals: Mapping[str, float], share: float = 0.25) -> list[str]:
    """The methods whose final accuracy lies within `share` of the whole range below the best one."""
    if not finals:
        return []
    hi, lo = max(finals.values()), min(finals.values())
    return [m for m, v in finals.items() if v >= hi - share * (hi - lo)]


def _curves(mats: Sequence[Sequence[Sequence[float]]]) -> tuple[Any, Any, Any]:
    import numpy as np

    curves = np.array([average_curve(mat) for mat in mats])
    mean = curves.mean(axis=0)
    se = curves.std(axis=0, ddof=1) / math.sqrt(len(curves)) if len(curves) > 1 else None
    return np.arange(1, curves.shape[1] + 1), mean, se


def _plot_contexts(
    title: str, matrices: Mapping[str, list[list[list[float]]]], path: Path, kind: str = "test"
) -> None:
    import matplotlib.pyplot as plt

    n = len(matrices)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.1 * rows + 0.6), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, (method, mats) in zip(axes.flat, matrices.items(), strict=False):
        k = len(mats[0])
        for ctx in range(k):
            # accuracy of context ctx+1 after training on contexts ctx+1..k, mean over seeds; contexts in shades
            # of one sequential map, so that no context takes a method's colour
            ys = [statistics.fmean(mat[row][ctx] for mat in mats) for row in range(ctx, k)]
            shade = plt.get_cmap("viridis")(0.9 * ctx / max(k - 1, 1))
            ax.plot(range(ctx + 1, k + 1), ys, marker="o", ms=3, color=shade, label=f"context {ctx + 1}")
        ax.set_title(f"{method} (n={len(mats)})", fontsize=10, color=method_style(method).color)
        ax.set_xlabel("contexts trained")
        ax.set_xticks(range(1, k + 1))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{kind} accuracy")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{title}: each context's accuracy as training proceeds (mean over seeds)", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_average(
    title: str,
    by_method: Mapping[str, Mapping[int, dict]],
    matrices: Mapping[str, list[list[list[float]]]],
    path: Path,
    kind: str = "test",
) -> None:
    """Average accuracy over the contexts seen, per method; a zoomed panel where the best methods overlap.

    The full panel draws the standard error as a band in the line's colour; the zoomed panel as error bars
    side by side (bands of six close methods would cover each other). A method whose every seed scored exactly
    as an earlier one's is drawn as markers only and says so in the legend.
    """
    import matplotlib.pyplot as plt

    flat = {m: statistics.fmean(float(r["result"]["average_accuracy"]) for r in recs.values())
            for m, recs in by_method.items() if m not in matrices and recs}  # fmt: skip
    curves = {m: _curves(mats) for m, mats in matrices.items()}
    finals = {m: float(c[1][-1]) for m, c in curves.items()}
    group = top_group(finals)
    lows = [float(c[1].min()) for c in curves.values()]
    highs = [float(c[1].max()) for c in curves.values()] + list(flat.values())
    spread = max(finals[m] for m in group) - min(finals[m] for m in group) if group else 0.0
    zoom = len(group) >= 2 and bool(lows) and spread < 0.25 * (max(highs) - min(lows))
    fig, axes = plt.subplots(
        1, 2 if zoom else 1, figsize=(12.5 if zoom else 7.5, 5.6), squeeze=False, layout="constrained"
    )
    panels = [(axes[0, 0], list(curves), "all methods (band: ± SE)")]
    if zoom:
        panels.append((axes[0, 1], group, "zoom on the methods that end near the best (bars: ± SE)"))
    for ax, shown, subtitle in panels:
        zoomed = ax is not axes[0, 0]
        ys: list[float] = []
        for i, method in enumerate(shown):
            xs, mean, se = curves[method]
            st = method_style(method)
            same = _same_as(by_method, method)
            label = f"{method} (n={len(matrices[method])}{'; same accuracies as ' + same if same else ''})"
            line = {"ls": "none", "zorder": 6.0} if same else {"ls": st.ls, "lw": st.lw, "zorder": st.zorder}
            ms = 9 if st.marker == "*" else 5
            if zoomed and se is not None:
                dodge = 0.06 * (i - (len(shown) - 1) / 2)
                ax.errorbar(xs + dodge, mean, yerr=se, color=st.color, marker=st.marker, ms=ms, capsize=2,
                            elinewidth=0.9, label=label, **line)  # fmt: skip
            else:
                ax.plot(xs, mean, color=st.color, marker=st.marker, ms=ms, label=label, **line)
                if se is not None and not same:
                    ax.fill_between(xs, mean - se, mean + se, color=st.color, alpha=0.15, lw=0, zorder=1)
            ys += list(mean) + (list(mean - se) + list(mean + se) if se is not None else [])
            ax.set_xticks(xs)
        for method, final in flat.items():
            st = method_style(method)
            if not zoomed or min(ys) <= final <= max(ys) + 0.5 * (max(ys) - min(ys)):
                n = len(by_method[method])
                ax.axhline(
                    final, color=st.color, ls=st.ls, lw=st.lw, label=f"{method} (n={n}; final accuracy)"
                )
                ys.append(final)
        if zoomed:
            pad = 0.06 * (max(ys) - min(ys) or 0.01)
            ax.set_ylim(min(ys) - pad, max(ys) + pad)
        ax.set_title(subtitle, fontsize=9)
        ax.set_xlabel("contexts trained")
        ax.set_ylabel(f"average {kind} accuracy over the contexts seen")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ncol = min(5, math.ceil(len(labels) / 2))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(f"{title}: average accuracy as contexts are added (mean over seeds)", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _numbers(c: Comparison) -> str:
    """`p 0.053, Holm p 0.58, 95% CI [-0.0003, +0.0141]`, or nothing where there is no test."""
    if c.p is None or c.p_holm is None:
        return ""
    text = f"p {c.p:.2g}, Holm p {c.p_holm:.2g}"
    return text if c.ci is None else f"{text}, 95% CI [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]"


def _plot_paired(title: str, tests: Mapping[str, Comparison], path: Path, kind: str = "test") -> None:
    """One row per baseline: the candidate's difference per seed, the mean and its 95% confidence interval, with
    0 marked, and the verdict of the Holm-adjusted test beside it."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = len(tests)
    fig, axes = plt.subplots(n, 1, figsize=(8.5, 0.95 * n + 1.3), squeeze=False, layout="constrained")
    for ax, (method, c) in zip(axes[:, 0], tests.items(), strict=True):
        p = c.paired
        st = method_style(method)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.scatter(p.diffs, [0.25] * p.n, color=st.color, s=22, zorder=3, label="seeds")
        lo_ci, hi_ci = c.ci if c.ci is not None else (p.mean, p.mean)
        values = [0.0, *p.diffs, lo_ci, hi_ci]
        lo, hi = min(values), max(values)
        pad = 0.12 * (hi - lo) if hi > lo else 0.001  # all differences 0: a range of +-0.001
        # seeds whose points nearly coincide share one label
        clusters: list[tuple[float, list[str]]] = []
        for d, seed in sorted(zip(p.diffs, p.seeds, strict=True)):
            if clusters and d - clusters[-1][0] < 0.04 * (hi - lo + 2 * pad):
                clusters[-1][1].append(str(seed))
            else:
                clusters.append((d, [str(seed)]))
        for d, seeds in clusters:
            ax.annotate(",".join(seeds), (d, 0.25), xytext=(0, 5), textcoords="offset points", fontsize=6,
                        ha="center", color="dimgray")  # fmt: skip
        xerr = [[p.mean - lo_ci], [hi_ci - p.mean]] if c.ci is not None else None
        ax.errorbar([p.mean], [-0.25], xerr=xerr, fmt="D", color=st.color, ms=6, capsize=4, lw=1.6, zorder=3)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(-0.8, 0.8)
        ax.set_yticks([])
        ax.set_ylabel(f"vs {method}", rotation=0, ha="right", va="center", fontsize=9, color=st.color)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.grid(axis="x", alpha=0.3)
        said = verdict(c).replace("**", "")
        numbers = _numbers(c).replace(", 95% CI", "\n95% CI")
        text = f"{p.mean:+.4f}, n={p.n}: {said}" + (f"\n{numbers}" if numbers else "")
        ax.text(1.01, 0.5, text, transform=ax.transAxes, fontsize=7.5, va="center")
    axes[-1, 0].set_xlabel(f"candidate − baseline, average {kind} accuracy (each row has its own scale)")
    family = max((c.family for c in tests.values()), default=0)
    fig.suptitle(
        f"{title}: candidate minus each baseline, paired by seed\n"
        "dots: seeds; diamond and bar: mean and its 95% confidence interval; the line: no difference"
        + (f"\nhigher / lower only where the Holm p (over {_tests(family)}) < {ALPHA:g}" if family else ""),
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_benchmark(
    experiment: str,
    by_method: Mapping[str, Mapping[int, dict]],
    plot_dir: Path,
    tests: Mapping[str, Comparison] | None = None,
    kind: str = "test",
) -> list[Path]:
    """The benchmark's PNGs: each context's accuracy per method, the average curve, and (with a candidate) the
    candidate's paired difference against each baseline (`tests`: its family's comparisons; default: this
    benchmark's alone). `kind`: the split the runs were scored on, `test` or `validation`."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI

    title = BENCHMARK_TITLES.get(experiment, experiment)
    matrices = {
        m: [mat for rec in recs.values() if (mat := _valid_matrix(rec)) is not None]
        for m, recs in by_method.items()
    }
    matrices = {m: mats for m, mats in matrices.items() if mats and len({len(x) for x in mats}) == 1}
    written: list[Path] = []
    plot_dir.mkdir(parents=True, exist_ok=True)
    if matrices:
        path = plot_dir / f"{experiment}_contexts.png"
        _plot_contexts(title, matrices, path, kind)
        written.append(path)
    if any(by_method.values()):
        path = plot_dir / f"{experiment}_average.png"
        _plot_average(title, by_method, matrices, path, kind)
        written.append(path)
    if tests is None:
        tests = compare(paired_differences(by_method))
    if tests:
        path = plot_dir / f"{experiment}_paired.png"
        _plot_paired(title, tests, path, kind)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------------
# The report

PROVENANCE = (
    "with every seed the cache already held for each method's current configuration, from earlier "
    "invocations too"
)


def paired_table(
    by_method: Mapping[str, Mapping[int, dict]],
    tests: Mapping[str, Comparison] | None = None,
    kind: str = "test",
) -> list[str]:
    """The candidate against each baseline, paired by seed: the lines of a markdown table (none without a
    candidate). `tests`: the comparisons of its family (default: this benchmark's alone)."""
    if tests is None:
        tests = compare(paired_differences(by_method))
    if not tests:
        return []
    lines = [
        f"Candidate minus each baseline, paired by seed (average {kind} accuracy; the standard error is that of "
        "the mean difference, ddof=1): the figure and the table the verdict rests on.",
        "",
        "| baseline | seeds | candidate − baseline, per seed | mean ± SE | 95% CI | p, paired t-test | Holm p "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, c in tests.items():
        p = c.paired
        per_seed = ", ".join(f"{seed}: {d:+.4f}" for seed, d in zip(p.seeds, p.diffs, strict=True))
        cell = f"{p.mean:+.4f} ± {p.se:.4f}" if p.se is not None else f"{p.mean:+.4f} (n=1)"
        ci = "—" if c.ci is None or c.p is None else f"[{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]"
        pv = "—" if c.p is None else f"{c.p:.2g}"
        ph = "—" if c.p_holm is None else f"{c.p_holm:.2g}"
        lines.append(f"| `{method}` | {p.n} | {per_seed} | {cell} | {ci} | {pv} | {ph} | {verdict(c)} |")
    family = max(c.family for c in tests.values())
    in_table = sum(c.p is not None for c in tests.values())
    note = stats_note(family, "of this table" if family == in_table else "of this report, every benchmark's")
    return [*lines, "", *([note, ""] if note else [])]


def _split(results: Mapping[str, Mapping[str, Mapping[int, dict]]]) -> tuple[str, str]:
    """(kind, split) of the runs: `validation` where every run was scored on the validation split, else `test`."""
    splits = {
        r["result"].get("eval_split", "test")
        for by in results.values()
        for recs in by.values()
        for r in recs.values()
    }
    # Runs scored on the validation split (bench/split_check.py) must not read as test accuracy.
    if splits == {"val"}:
        return "validation", "validation split (a tenth of each context's training images, held out)"
    return "test", "test split"


def table_tests(results: Mapping[str, Mapping[str, Mapping[int, dict]]]) -> dict[str, dict[str, Comparison]]:
    """Per benchmark, the candidate against each baseline: every paired test of the table in one Holm family."""
    return compare_table({b: paired_differences(by_method) for b, by_method in results.items()})


def render_markdown(
    results: Mapping[str, Mapping[str, Mapping[int, dict]]],
    *,
    methods: Sequence[tuple[str, str]],
    benchmarks: Sequence[str],
    missing: Mapping[str, str],
    command: str,
    plots: Mapping[str, Sequence[str]],
    extra_notes: Sequence[str] = (),
    provenance: str = PROVENANCE,
) -> str:
    """The report text. `results[experiment][method][seed]` is a run record; `methods` is [(name, label)]."""
    with_results = [b for b in benchmarks if any(results.get(b, {}).values())]
    kind, split = _split(results)
    tests = table_tests({b: results[b] for b in with_results})
    lines = [
        "# Final evaluation",
        "",
        f"Average {kind} accuracy over contexts after the last context (mean ± standard error over seeds; the "
        "standard error is the sample standard deviation, ddof=1, divided by sqrt(n)), full published "
        f"protocol, {split}. Published numbers are beside ours, each tagged with its source below.",
        "",
        f"Produced by: `{command}` ({provenance}).",
        "",
    ]
    if with_results:
        header = ["method"]
        for b in with_results:
            header += [f"{BENCHMARK_TITLES.get(b, b)}", "seeds", "published"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for name, _label in methods:
            row = [f"`{name}`"]
            for b in with_results:
                recs = results.get(b, {}).get(name, {})
                values = [float(r["result"]["average_accuracy"]) for r in recs.values()]
                row += [format_summary(summarize(values)), str(len(values))] if values else ["not run", "0"]
                row.append(format_references(b, name))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    else:
        lines += ["No benchmark has results yet.", ""]
    for b in benchmarks:
        if b not in with_results:
            why = missing.get(b, "not run yet")
            lines.append(f"- **{BENCHMARK_TITLES.get(b, b)}: no results** ({why}).")
    if any(b not in with_results for b in benchmarks):
        lines.append("")
    lines.append("Sources of the published numbers:")
    lines.append("")
    for tag, text in SOURCES.items():
        lines.append(f"- [{tag}] {text}.")
    lines.append("")
    lines.append("Methods:")
    lines.append("")
    for name, label in methods:
        lines.append(f"- `{name}`: {label}")
    lines.append("")
    for note in extra_notes:
        lines += [note, ""]
    for b in with_results:
        title = BENCHMARK_TITLES.get(b, b)
        lines += [f"## {title} ({BENCHMARK_SETTINGS.get(b, '')})", ""]
        for png in plots.get(b, []):
            lines += [f"![{title}]({png})", ""]
        lines += paired_table(results.get(b, {}), tests[b], kind)
        lines += ["| method | seed | average accuracy | per-context accuracy | device | wall time | file |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for name, _label in methods:
            for seed, rec in results.get(b, {}).get(name, {}).items():
                res = rec["result"]
                per = " ".join(f"{float(a):.3f}" for a in res.get("per_context_accuracy", []))
                lines.append(
                    f"| `{name}` | {seed} | {float(res['average_accuracy']):.4f} | {per} | "
                    f"{res.get('device', '?')} | {float(rec.get('wall_s', 0.0)):.0f} s | "
                    f"[json]({rec.get('_relpath', '')}) |"
                )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def summary_json(
    results: Mapping[str, Mapping[str, Mapping[int, dict]]], methods: Sequence[tuple[str, str]]
) -> dict:
    """Machine-readable table: per benchmark and method, mean, SE, n, per-seed values and record files."""
    out: dict = {}
    for b, by_method in results.items():
        for name, _label in methods:
            recs = by_method.get(name, {})
            if not recs:
                continue
            values = [float(r["result"]["average_accuracy"]) for r in recs.values()]
            s = summarize(values)
            out.setdefault(b, {})[name] = {
                "mean": s.mean,
                "se": s.se,
                "n": s.n,
                "seeds": list(recs),
                "values": values,
                "files": [r.get("_relpath") for r in recs.values()],
                "published": {tag: v for tag, v in REFERENCES.get(b, {}).get(name, [])},
            }
    return out


def write_report(
    out_dir: Path,
    results: Mapping[str, Mapping[str, Mapping[int, dict]]],
    *,
    methods: Sequence[tuple[str, str]],
    benchmarks: Sequence[str],
    missing: Mapping[str, str],
    command: str,
    extra_notes: Sequence[str] = (),
    provenance: str = PROVENANCE,
) -> Path:
    """Write `<out>/README.md`, `<out>/summary.json` and `<out>/plots/*.png`; returns the README's path."""
    with_results = [b for b in benchmarks if any(results.get(b, {}).values())]
    tests = table_tests({b: results[b] for b in with_results})
    kind, _ = _split(results)
    plots: dict[str, list[str]] = {}
    for b in with_results:
        files = plot_benchmark(b, results[b], out_dir / "plots", tests[b], kind)
        plots[b] = [p.relative_to(out_dir).as_posix() for p in files]
    text = render_markdown(
        results,
        methods=methods,
        benchmarks=benchmarks,
        missing=missing,
        command=command,
        plots=plots,
        extra_notes=extra_notes,
        provenance=provenance,
    )
    readme = out_dir / "README.md"
    write_atomic(readme, text)
    summary = {
        "command": command,
        "results": summary_json(results, methods),
        "paired": {
            b: {
                m: {
                    "seeds": list(c.paired.seeds),
                    "diffs": list(c.paired.diffs),
                    "mean": c.paired.mean,
                    "se": c.paired.se,
                    "p_paired_t": c.p,
                    "p_holm": c.p_holm,
                    "holm_family": c.family,
                    "ci95": None if c.ci is None else list(c.ci),
                    "verdict": side(c),
                }
                for m, c in by_method.items()
            }
            for b, by_method in tests.items()
            if by_method
        },
    }
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return readme


# ---------------------------------------------------------------------------------------------------------
# The project README's results block: `make results-table`

README_START = "<!-- results: start, written by `make results-table` from the cached runs -->"
README_END = "<!-- results: end -->"


def _cell(values: Sequence[float]) -> str:
    s = summarize(values)
    return f"{s.mean:.4f} ± {s.se:.4f} ({s.n})" if s.se is not None else f"{s.mean:.4f} (1)"


def _paired_cell(c: Comparison) -> str:
    p = c.paired
    cell = f"{p.mean:+.4f} ± {p.se:.4f} ({p.n})" if p.se is not None else f"{p.mean:+.4f} (1)"
    word = side(c)
    cell = f"{cell} **{word}**" if word in ("higher", "lower") else f"{cell} {word}"
    numbers = _numbers(c)
    return f"{cell}, {numbers}" if numbers else cell


def _tests(n: int) -> str:
    return f"{n} paired test" + ("" if n == 1 else "s")


def stats_note(family: int, scope: str = "of this table") -> str:
    """How a table's p, Holm p, interval and words are computed; empty without a test."""
    if family == 0:
        return ""
    return (
        "p: two-sided paired t-test (n − 1 degrees of freedom); Holm p: p adjusted by Holm's step-down method "
        f"over the {_tests(family)} {scope} (those with a p); 95% CI: mean ± t(0.975, n − 1) × SE, "
        "per comparison (not adjusted). "
        f"**higher** / **lower** only where the Holm p < {ALPHA:g}; otherwise not separated."
    )


def verdict_line(title: str, tests: Mapping[str, Comparison]) -> str:
    """One sentence per benchmark from its comparisons: the baselines the candidate lies above or below (Holm p
    < ALPHA), those it is not separated from, identical to, or has one paired seed against (no test)."""
    groups: dict[str, list[str]] = {}
    for method, c in tests.items():
        key = side(c)
        held = key in ("higher", "lower") and c.p_holm is not None
        groups.setdefault(key, []).append(f"`{method}` (Holm p {c.p_holm:.2g})" if held else f"`{method}`")
    counts = sorted({c.paired.n for c in tests.values() if c.paired.n > 1})
    span = "" if not counts else str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    seeds = f" ({span} paired seeds)" if span else ""
    parts = [
        f"{label} {', '.join(groups[key])}"
        for key, label in (
            ("higher", "**higher** than"),
            ("lower", "**lower** than"),
            ("not separated", "not separated from"),
            ("identical", "identical to"),
            ("one seed", "one paired seed so far, no test, against"),
        )
        if groups.get(key)
    ]
    return f"{title}{seeds}: the candidate is " + "; ".join(parts) + "."


# Test streams that are not clean, and why: the README says so wherever they appear.
STREAM_MARKS: dict[int, str] = {
    42: "test-split runs read to design the space",
    43: "test-split runs read to design the space",
    100: "also run on the validation split, by the split check",
}


def _accs(recs: Mapping[int, dict]) -> list[float]:
    return [float(r["result"]["average_accuracy"]) for r in recs.values()]


def _marks(seeds: Sequence[int], what: str) -> str:
    """' WHAT not clean: 42 and 43 (why); 100 (why).' for the marked seeds among `seeds`, grouped by reason."""
    by_reason: dict[str, list[int]] = {}
    for seed in sorted(seeds):
        if seed in STREAM_MARKS:
            by_reason.setdefault(STREAM_MARKS[seed], []).append(seed)
    if not by_reason:
        return ""
    parts = [" and ".join(map(str, group)) + f" ({reason})" for reason, group in by_reason.items()]
    return f" {what} not clean: " + "; ".join(parts) + "."


def fresh_lines(fresh: Mapping[str, Mapping[int, dict]], out: str = "results") -> list[str]:
    """The verdict the README leads with: the fresh Permuted-MNIST test streams (`fresh`: method -> seed ->
    record), each method's mean, the candidate's paired difference against every baseline with Holm p over
    this list, and the sentence those numbers allow (`verdict_line`)."""
    seeds = sorted({s for recs in fresh.values() for s in recs})
    tests = compare(paired_differences(fresh)) if CANDIDATE in fresh else {}
    family = max((c.family for c in tests.values()), default=0)
    lines = [
        f"**Fresh Permuted-MNIST test streams** (permutation seeds {', '.join(map(str, seeds))}, test split, full "
        "protocol; nothing in the project ran them before): the verdict rests on these."
        + (f" Holm p over this list's {_tests(family)}." if family else ""),
        "",
        *(f"- `{m}`: {_cell(_accs(recs))}" for m, recs in fresh.items() if recs),
        *(f"- candidate − `{m}`: {_paired_cell(c)}" for m, c in tests.items()),
        "",
    ]
    if tests:
        lines += [f"**Verdict.** {verdict_line('On the fresh streams', tests)}"]
        lines += ["", f"![Fresh streams, paired]({out}/fresh/plots/permMNIST_paired.png)"]
    else:
        lines += [
            "**Verdict**: none yet; the candidate has no run on the fresh streams (`make fresh-streams`)."
        ]
    return [*lines, ""]


def readme_block(
    results: Mapping[str, Mapping[str, Mapping[int, dict]]],
    methods: Sequence[str],
    heldout: Mapping[str, Mapping[int, dict]] | None = None,
    out: str = "results",
    fresh: Mapping[str, Mapping[int, dict]] | None = None,
) -> str:
    """The README's results: first the verdict on the fresh Permuted-MNIST streams (`fresh`, `fresh_lines`),
    then every method's mean ± SE (seeds), the candidate's paired difference against each baseline with p, Holm
    p (one family: the table's tests), 95% CI, verdict and a link to its figure, and the held-out Permuted-MNIST
    streams (`heldout`: method -> seed -> record) with their figure and, pooled with the table's and the fresh
    Permuted-MNIST seeds, the candidate's paired difference over every test stream (each list its own Holm
    family); streams that are not clean are marked (`STREAM_MARKS`). `out` is the results folder relative to
    the README, whose report (`write_report`, the held-out and fresh ones under `out/heldout`, `out/fresh`)
    holds the figures."""
    accs = _accs
    benches = [b for b in results if any(results[b].values())]
    titles = [BENCHMARK_TITLES.get(b, b) for b in benches]
    perm_seeds = sorted({s for recs in results.get("permMNIST", {}).values() for s in recs})
    lines = [
        *(fresh_lines(fresh, out) if fresh else []),
        "Average test accuracy over contexts after the last one, mean ± standard error (seeds); full published "
        "protocol, test split." + _marks(perm_seeds, "Permuted-MNIST seeds"),
        "",
        "| method | " + " | ".join(titles) + " | published (original harness) |",
        "|---|" + "---|" * len(benches) + "---|",
    ]
    for m in methods:
        cells = [_cell(accs(recs)) if (recs := results[b].get(m)) else "not run" for b in benches]
        refs = [
            ", ".join(f"{v:.3g}" for tag, v in REFERENCES.get(b, {}).get(m, []) if tag == "harness") or "—"
            for b in benches
        ]
        published = " / ".join(refs) if any(r != "—" for r in refs) else "—"
        lines.append(f"| `{m}` | " + " | ".join(cells) + f" | {published} |")
    paired = table_tests({b: results[b] for b in benches})
    baselines = [m for m in methods if any(m in paired[b] for b in benches)]
    if baselines:
        family = max(c.family for b in benches for c in paired[b].values())
        lines += [
            "",
            "Candidate minus each baseline, paired by seed: mean ± standard error of the difference (seeds). "
            + stats_note(family, "of the table"),
            "",
            "| baseline | " + " | ".join(titles) + " |",
            "|---|" + "---|" * len(benches),
        ]
        for m in baselines:
            cells = [_paired_cell(p) if (p := paired[b].get(m)) else "—" for b in benches]
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
        lines += [""]
        lines += [
            f"- {verdict_line(t, paired[b])}" for b, t in zip(benches, titles, strict=True) if paired[b]
        ]
        links = [f"[{BENCHMARK_TITLES.get(b, b)}]({out}/plots/{b}_paired.png)" for b in benches if paired[b]]
        lines += ["", "The paired differences per seed, as figures: " + ", ".join(links) + "."]
    if heldout:
        held_seeds = sorted({s for recs in heldout.values() for s in recs})
        held_paired = compare(paired_differences(heldout))
        family = max((c.family for c in held_paired.values()), default=0)
        lines += [
            "",
            f"Held-out Permuted-MNIST streams (permutation seeds {', '.join(map(str, held_seeds))}, chose "
            f"nothing), full protocol, test split.{_marks(held_seeds, 'Streams')}"
            + (f" Holm p over this list's {_tests(family)}:" if family else ""),
        ]
        lines += ["", *(f"- `{m}`: {_cell(accs(recs))}" for m, recs in heldout.items() if recs)]
        lines += [f"- candidate − `{m}`: {_paired_cell(c)}" for m, c in held_paired.items()]
        # The table's test streams and the held-out ones together: the most streams each comparison has.
        perm = results.get("permMNIST", {})
        every = {m: {**perm.get(m, {}), **recs, **(fresh or {}).get(m, {})} for m, recs in heldout.items()}
        pooled = compare(paired_differences(every))
        if any(c.paired.n > held_paired[m].paired.n for m, c in pooled.items() if m in held_paired):
            streams = ", ".join(map(str, sorted({s for c in pooled.values() for s in c.paired.seeds})))
            family = max((c.family for c in pooled.values()), default=0)
            which = (
                "the table's, the held-out and the fresh ones"
                if fresh
                else "the table's and the held-out ones"
            )
            lines += [
                "",
                f"Every Permuted-MNIST test stream, {which} (seeds {streams}), paired"
                + (f"; Holm p over this list's {_tests(family)}:" if family else ":"),
            ]
            lines += ["", *(f"- candidate − `{m}`: {_paired_cell(c)}" for m, c in pooled.items())]
        if held_paired:
            lines += ["", f"![Held-out streams, paired]({out}/heldout/plots/permMNIST_paired.png)"]
    return "\n".join([README_START, "", *lines, "", README_END])


def write_readme_block(readme: Path, block: str) -> None:
    """Replace the results block of `readme` (between its markers) with `block`; a ValueError without markers."""
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no results markers ({README_START!r} ... {README_END!r})")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    write_atomic(readme, head + block + tail)


# ---------------------------------------------------------------------------------------------------------
# The report of the cached runs as they are: `python -m evaluation.report`

AS_CACHED = (
    "every cached run as it is: each method with the module it was run with, named under Methods, whatever "
    "today's generator or candidate would produce"
)


def results_as_cached(
    out_dir: Path, benchmarks: Sequence[str]
) -> tuple[dict[str, dict[str, dict[int, dict]]], list[tuple[str, str]], list[str]]:
    """Every cached final-evaluation record of `out_dir/runs`, each method with the module it ran.

    A record counts when its key is the one the current harness gives its module at the published protocol
    on the test split (so records of another harness version or of protocol overrides are left out); where a
    method has records of several modules on a benchmark, the most recently finished one is reported and the
    others are named in the notes. Returns (results, [(method, label)], notes).
    """
    version = cache.code_version()
    by_key: dict[tuple[str, str], dict[str, dict[int, dict]]] = {}
    left_out: list[str] = []
    for b in benchmarks:
        for path in sorted((out_dir / "runs" / b).glob("*__*__seed*.json")):
            record = cache.load_record(path)  # a broken record raises CorruptRecord: refused, never skipped
            assert record is not None  # the file exists
            module = str(record["key_fields"].get("module"))
            expected, _ = cache.run_key(
                module, cache.make_config(b, int(record["seed"]), device="auto"), version
            )
            if record.get("key") != expected:
                left_out.append(f"`{path.relative_to(out_dir).as_posix()}` (another harness or protocol)")
                continue
            record["_relpath"] = path.relative_to(out_dir).as_posix()
            by_key.setdefault((b, str(record["method"])), {}).setdefault(str(record["key"]), {})[
                int(record["seed"])
            ] = record
    results: dict[str, dict[str, dict[int, dict]]] = {b: {} for b in benchmarks}
    labels: dict[str, str] = {}
    notes: list[str] = []
    for (b, method), keys in by_key.items():
        latest = max(keys, key=lambda k: max(str(r.get("finished_at", "")) for r in keys[k].values()))
        results[b][method] = dict(sorted(keys[latest].items()))
        first = next(iter(keys[latest].values()))
        module = str(first["key_fields"]["module"])
        label = str(first.get("method_label", method))
        if module != "joint":
            name = f"modules/{method}-{module[:12]}.py"
            label += (
                f"; module [`{name}`]({name})" if (out_dir / name).is_file() else f"; module {module[:12]}"
            )
        labels.setdefault(method, label)
        if labels[method] != label:
            labels[method] += f"; on {BENCHMARK_TITLES.get(b, b)}: {label}"
        for other in sorted(set(keys) - {latest}):
            notes.append(
                f"`{method}` on {BENCHMARK_TITLES.get(b, b)} also has runs of an older configuration (key "
                f"{other}, {len(keys[other])} seeds), not shown."
            )
    if left_out:
        notes.append(f"Left out: {', '.join(left_out)}.")
    order = ["candidate", *(f"tuned_{t}" for t in cache.TUNED_BASELINES), *cache.PRESET_METHODS, "joint"]
    names = sorted(labels, key=lambda m: (order.index(m) if m in order else len(order), m))
    results = {b: {m: results[b][m] for m in names if m in results[b]} for b in results}  # the table's order
    return results, [(m, labels[m]) for m in names], notes


def report_as_cached(
    out_dir: Path, benchmarks: Sequence[str]
) -> tuple[dict[str, dict[str, dict[int, dict]]], list[tuple[str, str]]]:
    """Write `out_dir`'s report from its cached runs as they are (`results_as_cached`); returns (results,
    [(method, label)])."""
    import shlex

    results, methods, notes = results_as_cached(out_dir, benchmarks)
    command = shlex.join(
        ["python", "-m", "evaluation.report", "--out", str(out_dir), "--benchmarks", *benchmarks]
    )
    write_report(
        out_dir,
        results,
        methods=methods,
        benchmarks=benchmarks,
        missing={b: f"no cached runs: `python -m search final-eval --benchmarks {b}`" for b in benchmarks},
        command=command,
        extra_notes=notes,
        provenance=AS_CACHED,
    )
    print(f"report: {out_dir / 'README.md'}")
    return results, methods


STREAM_SETS = (
    "heldout",
    "fresh",
)  # Permuted-MNIST test streams beyond the table's, each its own results folder


def stream_sets(out_dir: Path, *, write: bool = False) -> dict[str, dict[str, dict[int, dict]] | None]:
    """The Permuted-MNIST records of `out_dir/heldout` and `out_dir/fresh` as cached (None where a folder has no
    runs), method -> seed -> record; `write` rebuilds each folder's report too."""
    found: dict[str, dict[str, dict[int, dict]] | None] = {}
    for name in STREAM_SETS:
        folder = out_dir / name
        if not (folder / "runs").is_dir():
            found[name] = None
        elif write:
            found[name] = report_as_cached(folder, ["permMNIST"])[0]["permMNIST"]
        else:
            found[name] = results_as_cached(folder, ["permMNIST"])[0]["permMNIST"]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild `<out>/README.md`, `summary.json` and the plots from the cached runs as they are; run nothing."""
    import argparse

    from clharness.protocol import PROTOCOLS

    parser = argparse.ArgumentParser(
        prog="python -m evaluation.report",
        description="Rebuild the final-evaluation report from every cached run as it is (each method with the "
        "module it was run with), running nothing. `python -m search final-eval --report-only` instead reports "
        "each method's current module (today's generator, today's candidate).",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results)")
    parser.add_argument("--benchmarks", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument(
        "--readme",
        type=Path,
        help="also rewrite this file's results block (between its markers), held-out streams from OUT/heldout",
    )
    args = parser.parse_args(argv)
    if not (args.out / "runs").is_dir():
        print(f"error: no cached runs under {args.out / 'runs'}", file=sys.stderr)
        return 2
    try:
        results, methods = report_as_cached(args.out, args.benchmarks)
        # The README shows the held-out and fresh streams' figures: their reports are rebuilt with it.
        streams = (
            {name: None for name in STREAM_SETS} if args.readme is None else stream_sets(args.out, write=True)
        )
    except UserError as exc:  # a corrupted record: one line naming it and how to redo it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.readme is not None:
        out = Path(os.path.relpath(args.out, args.readme.parent)).as_posix()
        try:
            write_readme_block(
                args.readme,
                readme_block(results, [m for m, _ in methods], streams["heldout"], out, streams["fresh"]),
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"results block: {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
