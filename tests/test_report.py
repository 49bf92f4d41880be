"""The report's numbers: standard error, cell formatting, published references, curves, missing benchmarks."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from evaluation import report


def _record(acc: float, seed: int, k: int = 3) -> dict:
    matrix = [[acc] * (i + 1) for i in range(k)]
    return {"seed": seed, "wall_s": 1.0, "result": {"average_accuracy": acc, "acc_matrix": matrix}}


def test_standard_error_is_sample_std_over_sqrt_n() -> None:
    s = report.summarize([0.90, 0.92, 0.97])
    # by hand: mean 0.93, squared deviations 0.0009 + 0.0001 + 0.0016 = 0.0026, /(n-1) = 0.0013
    assert s.mean == pytest.approx(0.93) and s.n == 3
    assert s.se == pytest.approx(math.sqrt(0.0013) / math.sqrt(3))
    assert report.format_summary(s) == "0.9300 ± 0.0208"
    one = report.summarize([0.8])
    assert one.se is None and report.format_summary(one) == "0.8000 (n=1)"
    with pytest.raises(ValueError):
        report.summarize([])


def _published_cells(text: str) -> dict[str, str]:
    """Method -> the last ("published") cell of its row in the report's main table."""
    rows = [
        line
        for line in text.split("Sources of the published numbers")[0].splitlines()
        if line.startswith("| `")
    ]
    return {row.split("`")[1]: row.rstrip(" |").split(" | ")[-1] for row in rows}


def test_published_numbers_sit_on_their_methods_rows_with_sources() -> None:
    methods = ["candidate", "none", "ewc", "online_ewc", "si", "joint"]
    results = {"CIFAR100": {m: {42: _record(0.5, 42)} for m in methods}}
    text = report.render_markdown(
        results,
        methods=[(m, m) for m in methods],
        benchmarks=["CIFAR100"],
        missing={},
        command="c",
        plots={},
    )
    cells = _published_cells(text)
    assert set(cells) == set(methods)
    for method in methods:
        refs = report.REFERENCES["CIFAR100"].get(method, [])
        # every published number of the method, in order, with its source; nothing on the other rows
        assert cells[method] == (", ".join(f"{value:.4g} [{tag}]" for tag, value in refs) or "—")
    assert cells["candidate"] == "—" and cells["ewc"].count("[") == 2
    footnotes = text.split("Sources of the published numbers:")[1].split("Methods:")[0]
    for by_method in report.REFERENCES.values():
        for refs in by_method.values():
            for tag, value in refs:
                assert f"- [{tag}] " in footnotes  # a tag in the table is explained under it
                assert 0 < value <= 1, (tag, value)  # fractions like ours, not percent


def test_average_curve_is_the_mean_over_contexts_seen() -> None:
    assert report.average_curve([[1.0], [0.5, 1.0], [0.2, 0.4, 0.9]]) == pytest.approx([1.0, 0.75, 0.5])


def test_markdown_table_and_missing_benchmarks() -> None:
    results = {"splitMNIST": {"ewc": {42: _record(0.98, 42), 43: _record(0.96, 43)}, "si": {}}}
    text = report.render_markdown(
        results,
        methods=[("ewc", "preset"), ("si", "preset")],
        benchmarks=["splitMNIST", "permMNIST"],
        missing={"permMNIST": "dataset missing: no MNIST"},
        command="python -m search final-eval --seeds 42 43",
        plots={},
    )
    se = math.sqrt(((0.98 - 0.97) ** 2 + (0.96 - 0.97) ** 2) / 1) / math.sqrt(2)
    assert f"| `ewc` | 0.9700 ± {se:.4f} | 2 | 0.958 [harness] |" in text
    assert "| `si` | not run | 0 | 0.985 [harness] |" in text
    assert "**Permuted-MNIST: no results** (dataset missing: no MNIST)" in text
    assert "Produced by: `python -m search final-eval --seeds 42 43`" in text
    assert "Permuted-MNIST |" not in text  # no empty column for a benchmark without results


def test_write_report_plots_and_summary(tmp_path: Path) -> None:
    results = {"splitMNIST": {"ewc": {42: _record(0.98, 42), 43: _record(0.96, 43)}}}
    readme = report.write_report(
        tmp_path, results, methods=[("ewc", "p")], benchmarks=["splitMNIST"], missing={}, command="c"
    )
    assert "![Split-MNIST](plots/splitMNIST_average.png)" in readme.read_text()
    for name in ("splitMNIST_contexts.png", "splitMNIST_average.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------------------
# The candidate against each baseline, and the figures


def _runs(accs: dict[int, float], k: int = 3) -> dict[int, dict]:
    return {seed: _record(acc, seed, k) for seed, acc in accs.items()}


def test_paired_differences_per_seed_with_mean_se_and_verdict() -> None:
    by_method = {
        "candidate": _runs({42: 0.95, 43: 0.96, 44: 0.97}),
        "ewc": _runs({42: 0.94, 43: 0.96, 44: 0.95}),  # diffs 0.01, 0.00, 0.02
        "none": _runs({42: 0.80, 43: 0.81, 44: 0.79}),  # diffs 0.15 each: far beyond 2 SE
        "si": _runs({43: 0.90}),  # one seed in common
        "tuned_ewc": _runs({42: 0.95, 43: 0.96, 44: 0.97}),  # the same accuracies
        "l2": _runs({45: 0.5}),  # no seed in common: no pair
    }
    paired = report.paired_differences(by_method)
    assert list(paired) == ["ewc", "none", "si", "tuned_ewc"]
    ewc = paired["ewc"]
    assert ewc.seeds == (42, 43, 44) and ewc.diffs == pytest.approx((0.01, 0.0, 0.02))
    assert ewc.mean == pytest.approx(0.01) and ewc.se == pytest.approx(0.01 / math.sqrt(3))
    assert report.verdict(ewc) == "no"  # 0.01 < 2 x 0.0058
    assert report.verdict(paired["none"]) == "**yes: candidate higher**"
    assert paired["si"].n == 1 and report.verdict(paired["si"]) == "one seed: no standard error"
    assert report.verdict(paired["tuned_ewc"]) == "no: identical on every seed"
    lower = report.Paired((42, 43), (-0.02, -0.03), -0.025, 0.005)
    assert report.verdict(lower) == "**yes: candidate lower**"

    table = "\n".join(report.paired_table(by_method))
    assert "| `ewc` | 3 | 42: +0.0100, 43: +0.0000, 44: +0.0200 | +0.0100 ± 0.0058 | no |" in table
    assert "| `si` | 1 | 43: +0.0600 | +0.0600 (n=1) | one seed: no standard error |" in table
    assert report.paired_table({"ewc": by_method["ewc"]}) == []  # no candidate, no table


def test_one_colour_per_method_everywhere() -> None:
    names = ["candidate", "ewc", "online_ewc", "si", "mas", "l2", "none", "joint", *(f"tuned_{b}" for b in ("ewc", "online_ewc", "si", "mas"))]  # fmt: skip
    colours = [report.method_style(m).color for m in names]
    assert len(set(colours)) == len(colours)
    # a method without a style gets one from its name: the same in every figure and every run
    assert report.method_style("trial_12").color == report.method_style("trial_12").color
    assert report.method_style("trial_12").color not in colours


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Every figure the report saves, by file name, kept open for inspection."""
    from matplotlib.figure import Figure

    saved: dict[str, object] = {}
    original = Figure.savefig

    def savefig(self: Figure, fname: object, *args: object, **kwargs: object) -> None:
        original(self, fname, *args, **kwargs)
        saved[Path(str(fname)).name] = self

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_figures_bands_in_their_lines_colour_titles_inside(tmp_path: Path, figures: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_hex

    accs = {"candidate": 0.99, "tuned_ewc": 0.99, "ewc": 0.992, "online_ewc": 0.989, "si": 0.986,
            "mas": 0.985, "l2": 0.92, "none": 0.85}  # fmt: skip
    results = {
        "splitMNIST": {
            m: {s: _record(a + 0.001 * (s - 43) * (m != "tuned_ewc") * (i % 2), s, 5) for s in (42, 43, 44)}
            for i, (m, a) in enumerate(accs.items())
        }
    }
    results["splitMNIST"]["tuned_ewc"] = results["splitMNIST"]["candidate"]
    results["splitMNIST"]["joint"] = {s: {"seed": s, "result": {"average_accuracy": 0.997}} for s in (42, 43)}
    readme = report.write_report(
        tmp_path,
        results,
        methods=[(m, m) for m in results["splitMNIST"]],
        benchmarks=["splitMNIST"],
        missing={},
        command="c",
    )
    text = readme.read_text()
    for name in ("splitMNIST_contexts.png", "splitMNIST_average.png", "splitMNIST_paired.png"):
        assert f"(plots/{name})" in text and (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert "| `none` | 3 |" in text and "beyond 2 SE" in text

    average = figures["splitMNIST_average.png"]
    full, zoom = average.axes  # the six close methods get a zoomed panel
    for line in full.get_lines():
        method = line.get_label().split(" (")[0]
        assert to_hex(line.get_color()) == report.method_style(method).color
    bands = [c for c in full.collections if isinstance(c, PolyCollection)]
    assert bands and {to_hex(b.get_facecolor()[0]) for b in bands} <= {
        report.method_style(m).color for m in accs
    }
    shown = {label.split(" (")[0] for label in zoom.get_legend_handles_labels()[1]}
    assert {"candidate", "ewc", "online_ewc", "si", "mas"} <= shown and not {"l2", "none"} & shown
    assert any("same accuracies as candidate" in line.get_label() for line in full.get_lines())

    paired = figures["splitMNIST_paired.png"]
    assert [ax.get_ylabel() for ax in paired.axes] == [
        f"vs {m}" for m in results["splitMNIST"] if m != "candidate"
    ]
    for fig in figures.values():
        canvas = FigureCanvasAgg(fig)  # the saved figure, laid out again as it was saved
        canvas.draw()
        renderer = canvas.get_renderer()
        width = fig.bbox.width
        texts = [fig._suptitle, *(ax.title for ax in fig.axes)]
        for t in texts:
            if t is not None and t.get_text():
                box = t.get_window_extent(renderer)
                assert box.x0 >= 0 and box.x1 <= width, t.get_text()  # the title fits in the figure


def test_report_of_the_cached_runs_as_they_are(tmp_path: Path) -> None:
    import json

    from evaluation import cache

    def put(method: str, module: str, seed: int, acc: float, finished: str, key: str | None = None) -> None:
        real, fields = cache.run_key(
            module, cache.make_config("splitMNIST", seed, device="auto"), cache.code_version()
        )
        record = {"method": method, "method_label": f"preset `{method}`", "seed": seed, "key": key or real,
                  "key_fields": fields, "finished_at": finished, "wall_s": 1.0,
                  "result": {"average_accuracy": acc, "acc_matrix": [[acc] * (i + 1) for i in range(5)]}}  # fmt: skip
        path = cache.result_path(tmp_path / "runs", method, "splitMNIST", key or real, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / f"ewc-{'a' * 12}.py").write_text("# ewc\n")
    put("ewc", "a" * 64, 42, 0.99, "2026-11-27T10:00:00")
    put("ewc", "a" * 64, 43, 0.98, "2026-11-27T10:05:00")
    put("ewc", "b" * 64, 42, 0.50, "2026-11-26T10:00:00")  # an older module of the same method
    put("candidate", "c" * 64, 42, 0.97, "2026-11-27T09:00:00")
    put("si", "d" * 64, 42, 0.90, "2026-11-27T09:00:00", key="0123456789abcdef")  # not today's key
    results, methods, notes = report.results_as_cached(tmp_path, ["splitMNIST", "permMNIST"])
    assert [m for m, _ in methods] == ["candidate", "ewc"]  # the table's order, si left out
    assert list(results["splitMNIST"]) == ["candidate", "ewc"] and results["permMNIST"] == {}
    assert {s: r["result"]["average_accuracy"] for s, r in results["splitMNIST"]["ewc"].items()} == {
        42: 0.99,
        43: 0.98,
    }
    assert (
        dict(methods)["ewc"]
        == f"preset `ewc`; module [`modules/ewc-{'a' * 12}.py`](modules/ewc-{'a' * 12}.py)"
    )
    assert any("older configuration" in n and "`ewc`" in n for n in notes)
    assert any("si__0123456789abcdef__seed42.json" in n and "another harness or protocol" in n for n in notes)

    assert report.main(["--out", str(tmp_path), "--benchmarks", "splitMNIST", "permMNIST"]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "Produced by: `python -m evaluation.report --out" in text and report.AS_CACHED in text
    assert "| `ewc` | 0.9850 ± 0.0050 | 2 |" in text and "**Permuted-MNIST: no results**" in text


def test_the_evaluation_modules_import_one_another_without_a_cycle() -> None:
    """Every import between the modules of `evaluation`, lazy ones inside functions included, goes one way."""
    import ast
    import graphlib

    graph: dict[str, set[str]] = {}
    for path in Path(report.__file__).parent.glob("*.py"):
        imported = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "evaluation":
                imported.update(alias.name for alias in node.names)  # from evaluation import cache
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("evaluation."):
                imported.add(str(node.module).split(".")[1])
            elif isinstance(node, ast.Import):
                imported.update(a.name.split(".")[1] for a in node.names if a.name.startswith("evaluation."))
    assert graph["final_eval"] >= {"report", "cache"}  # the walk sees the imports
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the modules of a cycle


REPO = Path(__file__).resolve().parents[1]


def _readme_results_rows() -> dict[str, list[str]]:
    """The README's results table: method (or "method" for the header) -> its cells after the first column."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| `") or line.startswith("| method |"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].split("`")[1] if "`" in cells[0] else "method"] = cells[1:]
    return rows


STALE = "update the README's results table from `python -m evaluation.report` (results/README.md)"


def test_the_readme_results_table_states_what_the_committed_cache_holds() -> None:
    """Every figure of the README's results table is the cached runs' mean (and standard error, and seed count
    where the cell names its seeds), and "not run" where the cache has none: no stale or hand-typed number."""
    columns = {"splitMNIST": 0, "permMNIST": 1}
    results, _methods, _notes = report.results_as_cached(REPO / "results", list(columns))
    rows = _readme_results_rows()
    header = rows.pop("method")
    assert "candidate" in rows and "none" in rows and "joint" in rows
    checked = 0
    for method, cells in rows.items():
        for experiment, col in columns.items():
            cell, recs = cells[col], results.get(experiment, {}).get(method, {})
            where = (
                f"README's {method} on {experiment}, {cell!r}, against cached seeds {sorted(recs)}: {STALE}"
            )
            if cell.startswith("not run"):
                assert not recs, where  # the cache has runs the README does not report
                continue
            assert recs, where  # a figure with no cached run
            s = report.summarize([float(r["result"]["average_accuracy"]) for r in recs.values()])
            numbers = re.match(r"(\d\.\d{4})(?: ± (\d\.\d{4}))?", cell)
            assert numbers, f"unreadable cell {cell!r}"
            assert numbers.group(1) == f"{s.mean:.4f}", (where, s)
            assert numbers.group(2) == (None if s.se is None else f"{s.se:.4f}"), (where, s)
            named = re.search(r"\(seeds? ([\d, ]+)", cell)
            if named:
                assert sorted(int(x) for x in named.group(1).split(",")) == sorted(recs), where
            elif stated := re.search(r"\((\d+) seeds\)", header[col]):
                assert s.n == int(stated.group(1)), (where, header[col])
            checked += 1
    assert checked >= 10
