"""The figures of a results folder: each context's accuracy as training proceeds, the average accuracy as
contexts are added, and the candidate's paired difference against each baseline; one style per method, the same
in every figure."""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.published import BENCHMARK_TITLES
from evaluation.stats import ALPHA, CANDIDATE, Comparison, compare, paired_differences, verdict
from evaluation.stats_text import comparison_numbers, paired_tests

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
        numbers = comparison_numbers(c).replace(", 95% CI", "\n95% CI")
        text = f"{p.mean:+.4f}, n={p.n}: {said}" + (f"\n{numbers}" if numbers else "")
        ax.text(1.01, 0.5, text, transform=ax.transAxes, fontsize=7.5, va="center")
    axes[-1, 0].set_xlabel(f"candidate − baseline, average {kind} accuracy (each row has its own scale)")
    family = max((c.family for c in tests.values()), default=0)
    fig.suptitle(
        f"{title}: candidate minus each baseline, paired by seed\n"
        "dots: seeds; diamond and bar: mean and its 95% confidence interval; the line: no difference"
        + (
            f"\nhigher / lower only where the Holm p (over {paired_tests(family)}) < {ALPHA:g}"
            if family
            else ""
        ),
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
