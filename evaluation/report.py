"""The results report of a results folder: a markdown table (mean ± SE over seeds) with the published numbers
beside it (`evaluation.published`), the figures (`evaluation.plots`) and `summary.json`; and
`python -m evaluation.report`, which rebuilds it from the cached runs as they are, with the project README's
results block (`evaluation.readme`).

Built from the cached run records of `evaluation.final_eval` only, so it can be rebuilt at any time
(`python -m search final-eval --report-only`) and always shows every seed the cache holds for the current
configuration of each method.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from clharness.atomic import write_atomic

from evaluation import cache
from evaluation.errors import UserError
from evaluation.plots import plot_benchmark
from evaluation.published import BENCHMARK_SETTINGS, BENCHMARK_TITLES, REFERENCES, SOURCES
from evaluation.readme import readme_block, write_readme_block
from evaluation.stats import Comparison, Summary, compare, paired_differences, side, summarize, verdict
from evaluation.stats_text import p_text, stats_note, table_tests


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
        pv = "—" if c.p is None else p_text(c.p)
        ph = "—" if c.p_holm is None else p_text(c.p_holm)
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
# The report of the cached runs as they are: `python -m evaluation.report`

AS_CACHED = (
    "every cached run as it is: each method with the module it was run with, named under Methods, whatever "
    "today's generator or candidate would produce"
)


def filed_at(record: dict) -> str:
    """When a record was filed under its method: copied (a run of an equivalent module) or run."""
    return str(record.get("copied_at") or record.get("finished_at", ""))


def results_as_cached(
    out_dir: Path, benchmarks: Sequence[str]
) -> tuple[dict[str, dict[str, dict[int, dict]]], list[tuple[str, str]], list[str]]:
    """Every cached final-evaluation record of `out_dir/runs`, each method with the module it ran.

    A record counts when its key is the one the current harness gives its module at the published protocol
    on the test split (so records of another harness version or of protocol overrides are left out); where a
    method has records of several modules on a benchmark, the most recently filed one (run or copied) is reported and the
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
        latest = max(keys, key=lambda k: max(filed_at(r) for r in keys[k].values()))
        results[b][method] = dict(sorted(keys[latest].items()))
        first = next(iter(keys[latest].values()))
        module = str(first["key_fields"]["module"])
        label = str(first.get("method_label", method))
        if module != "joint":
            # not a link: module files are not kept in the repository (`make modules` writes them)
            label += f"; module `modules/{method}-{module[:12]}.py`"
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
    order = [
        "candidate",
        cache.SEARCHED,
        *(f"tuned_{t}" for t in cache.TUNED_BASELINES),
        *cache.PRESET_METHODS,
        "joint",
    ]
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
