"""The results report: a markdown table (mean ± SE over seeds), published numbers beside it, plots.

Built from the cached run records of `evaluation.final_eval` only, so it can be rebuilt at any time
(`python -m search final-eval --report-only`) and always shows every seed the cache holds for the current
configuration of each method.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clharness.atomic import write_atomic

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


@dataclass(frozen=True)
class Summary:
    """Mean and standard error of the mean over seeds; `se` is None for one seed."""

    mean: float
    se: float | None
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """Mean and standard error (sample standard deviation with ddof=1, divided by sqrt(n))."""
    if not values:
        raise ValueError("no values to summarize")
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return Summary(mean=mean, se=se, n=len(values))


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


def plot_benchmark(
    experiment: str, by_method: Mapping[str, Mapping[int, dict]], plot_dir: Path
) -> list[Path]:
    """Two PNGs: each context's accuracy as training proceeds (one panel per method) and the average curve."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt
    import numpy as np

    title = BENCHMARK_TITLES.get(experiment, experiment)
    matrices = {
        m: [mat for rec in recs.values() if (mat := _valid_matrix(rec)) is not None]
        for m, recs in by_method.items()
    }
    matrices = {m: mats for m, mats in matrices.items() if mats and len({len(x) for x in mats}) == 1}
    written: list[Path] = []
    plot_dir.mkdir(parents=True, exist_ok=True)

    if matrices:
        n = len(matrices)
        cols = min(3, n)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
        for ax, (method, mats) in zip(axes.flat, matrices.items(), strict=False):
            k = len(mats[0])
            for ctx in range(k):
                # accuracy of context ctx+1 after training on contexts ctx+1..k, mean over seeds
                ys = [statistics.fmean(mat[row][ctx] for mat in mats) for row in range(ctx, k)]
                ax.plot(range(ctx + 1, k + 1), ys, marker="o", ms=3, label=f"context {ctx + 1}")
            ax.set_title(f"{method} (n={len(mats)})", fontsize=10)
            ax.set_xlabel("contexts trained")
            ax.set_xticks(range(1, k + 1))
            ax.grid(alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel("test accuracy")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7, loc="lower left")
        fig.suptitle(f"{title}: accuracy of each context as training proceeds")
        fig.tight_layout()
        path = plot_dir / f"{experiment}_contexts.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drew = False
    for method, mats in matrices.items():
        curves = np.array([average_curve(mat) for mat in mats])
        xs = np.arange(1, curves.shape[1] + 1)
        mean = curves.mean(axis=0)
        ax.plot(xs, mean, marker="o", ms=3, label=method)
        ax.set_xticks(xs)
        if len(curves) > 1:
            se = curves.std(axis=0, ddof=1) / math.sqrt(len(curves))
            ax.fill_between(xs, mean - se, mean + se, alpha=0.2)
        drew = True
    for method, recs in by_method.items():
        if method in matrices or not recs:
            continue  # methods without a matrix (joint) are drawn as their final accuracy
        final = statistics.fmean(float(r["result"]["average_accuracy"]) for r in recs.values())
        ax.axhline(final, ls="--", lw=1, color="gray", label=f"{method} (final)")
        drew = True
    if drew:
        ax.set_xlabel("contexts trained")
        ax.set_ylabel("average test accuracy over contexts seen")
        ax.set_title(f"{title}: average accuracy as contexts are added (mean ± SE over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = plot_dir / f"{experiment}_average.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    plt.close(fig)
    return written


# ---------------------------------------------------------------------------------------------------------
# The report


def render_markdown(
    results: Mapping[str, Mapping[str, Mapping[int, dict]]],
    *,
    methods: Sequence[tuple[str, str]],
    benchmarks: Sequence[str],
    missing: Mapping[str, str],
    command: str,
    plots: Mapping[str, Sequence[str]],
    extra_notes: Sequence[str] = (),
) -> str:
    """The report text. `results[experiment][method][seed]` is a run record; `methods` is [(name, label)]."""
    with_results = [b for b in benchmarks if any(results.get(b, {}).values())]
    lines = [
        "# Final evaluation",
        "",
        "Average test accuracy over contexts after the last context (mean ± standard error over seeds; the "
        "standard error is the sample standard deviation, ddof=1, divided by sqrt(n)), full published "
        "protocol, test split. Published numbers are beside ours, each tagged with its source below.",
        "",
        f"Produced by: `{command}` (with every seed the cache already held for each method's current "
        "configuration, from earlier invocations too).",
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
) -> Path:
    """Write `<out>/README.md`, `<out>/summary.json` and `<out>/plots/*.png`; returns the README's path."""
    plots: dict[str, list[str]] = {}
    for b in benchmarks:
        if any(results.get(b, {}).values()):
            files = plot_benchmark(b, results[b], out_dir / "plots")
            plots[b] = [p.relative_to(out_dir).as_posix() for p in files]
    text = render_markdown(
        results,
        methods=methods,
        benchmarks=benchmarks,
        missing=missing,
        command=command,
        plots=plots,
        extra_notes=extra_notes,
    )
    readme = out_dir / "README.md"
    write_atomic(readme, text)
    summary = {"command": command, "results": summary_json(results, methods)}
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return readme
