"""The report's numbers: standard error, cell formatting, published references, curves, missing benchmarks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evaluation import report, stats
from evaluation.plots import average_curve, method_style
from evaluation.published import REFERENCES
from evaluation.readme import README_END, README_START, readme_block, verdict_line, write_readme_block


def _record(acc: float, seed: int, k: int = 3) -> dict:
    matrix = [[acc] * (i + 1) for i in range(k)]
    return {"seed": seed, "wall_s": 1.0, "result": {"average_accuracy": acc, "acc_matrix": matrix}}


def test_standard_error_is_sample_std_over_sqrt_n() -> None:
    s = stats.summarize([0.90, 0.92, 0.97])
    # by hand: mean 0.93, squared deviations 0.0009 + 0.0001 + 0.0016 = 0.0026, /(n-1) = 0.0013
    assert s.mean == pytest.approx(0.93) and s.n == 3
    assert s.se == pytest.approx(math.sqrt(0.0013) / math.sqrt(3))
    assert report.format_summary(s) == "0.9300 ± 0.0208"
    one = stats.summarize([0.8])
    assert one.se is None and report.format_summary(one) == "0.8000 (n=1)"
    with pytest.raises(ValueError):
        stats.summarize([])


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
        refs = REFERENCES["CIFAR100"].get(method, [])
        # every published number of the method, in order, with its source; nothing on the other rows
        assert cells[method] == (", ".join(f"{value:.4g} [{tag}]" for tag, value in refs) or "—")
    assert cells["candidate"] == "—" and cells["ewc"].count("[") == 2
    footnotes = text.split("Sources of the published numbers:")[1].split("Methods:")[0]
    for by_method in REFERENCES.values():
        for refs in by_method.values():
            for tag, value in refs:
                assert f"- [{tag}] " in footnotes  # a tag in the table is explained under it
                assert 0 < value <= 1, (tag, value)  # fractions like ours, not percent


def test_average_curve_is_the_mean_over_contexts_seen() -> None:
    assert average_curve([[1.0], [0.5, 1.0], [0.2, 0.4, 0.9]]) == pytest.approx([1.0, 0.75, 0.5])


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


def test_the_report_names_the_split_its_runs_were_scored_on() -> None:
    def text(split: str) -> str:
        record = _record(0.9, 42)
        record["result"]["eval_split"] = split
        results = {"permMNIST": {"mas": {42: record}}}
        return report.render_markdown(
            results, methods=[("mas", "p")], benchmarks=["permMNIST"], missing={}, command="c", plots={}
        )

    val, test = text("val"), text("test")
    assert "Average validation accuracy" in val and "protocol, validation split (a tenth" in val
    assert "test" not in val.split("Produced by")[0]
    assert "Average test accuracy" in test and "protocol, test split." in test


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
        "none": _runs({42: 0.80, 43: 0.81, 44: 0.79}),  # diffs 0.15, 0.15, 0.18: t = 16
        "si": _runs({43: 0.90}),  # one seed in common
        "tuned_ewc": _runs({42: 0.95, 43: 0.96, 44: 0.97}),  # the same accuracies
        "l2": _runs({45: 0.5}),  # no seed in common: no pair
    }
    paired = stats.paired_differences(by_method)
    assert list(paired) == ["ewc", "none", "si", "tuned_ewc"]
    ewc = paired["ewc"]
    assert ewc.seeds == (42, 43, 44) and ewc.diffs == pytest.approx((0.01, 0.0, 0.02))
    assert ewc.mean == pytest.approx(0.01) and ewc.se == pytest.approx(0.01 / math.sqrt(3))
    tests = stats.compare(paired)
    # two tests in the family (si: one seed, tuned_ewc: identical): none p 0.0039 x 2, ewc p 0.23 x 1
    assert tests["ewc"].family == 2 and tests["si"].p_holm is None and tests["tuned_ewc"].p_holm is None
    assert stats.verdict(tests["ewc"]) == "not separated"
    assert stats.verdict(tests["none"]) == "**candidate higher**"
    assert paired["si"].n == 1 and stats.verdict(tests["si"]) == "one seed: no test"
    assert stats.verdict(tests["tuned_ewc"]) == "identical on every seed"
    lower = stats.compare({"joint": stats.from_diffs((-0.02, -0.021, -0.019))})  # t = -34.6, p 0.0008
    assert stats.verdict(lower["joint"]) == "**candidate lower**"
    # t = -5 with 1 degree of freedom: p = 1 - (2 / pi) atan(5) = 0.13, not below 0.05 even alone
    two = stats.compare({"joint": stats.Paired((42, 43), (-0.02, -0.03), -0.025, 0.005)})["joint"]
    assert two.p == pytest.approx(1 - 2 / math.pi * math.atan(5.0)) and stats.side(two) == "not separated"

    table = "\n".join(report.paired_table(by_method))
    # ewc: t = sqrt(3), 2 df: p = 1 - sqrt(3/5) = 0.23; CI 0.01 ± 4.302653 x 0.01 / sqrt(3)
    assert (
        "| `ewc` | 3 | 42: +0.0100, 43: +0.0000, 44: +0.0200 | +0.0100 ± 0.0058 | [-0.0148, +0.0348] | 0.23 "
        "| 0.23 | not separated |" in table
    )
    assert "| `si` | 1 | 43: +0.0600 | +0.0600 (n=1) | — | — | — | one seed: no test |" in table
    assert "over the 2 paired tests of this table" in table
    assert report.paired_table({"ewc": by_method["ewc"]}) == []  # no candidate, no table


def test_verdict_line_groups_the_baselines_by_their_holm_adjusted_side() -> None:
    P = stats.Paired
    tests = stats.compare(
        {
            "none": P((42, 43, 44), (0.2, 0.21, 0.19), 0.2, 0.0058),  # t 34.5, 2 df: p 0.00084
            "joint": P((42, 43, 44), (-0.02, -0.021, -0.019), -0.02, 0.0006),  # t -33.3: p 0.00090
            "tuned_mas": P((42, 43, 44), (0.008, 0.012, 0.009), 0.0097, 0.002),  # t 4.85: p 0.040
            "mas": P((42, 43), (0.01, -0.01), 0.0, 0.01),  # t 0: p 1
            "l2": P((42, 43), (0.0, 0.0), 0.0, 0.0),  # identical: no test
            "si": P((42,), (0.1,), 0.1, None),  # one seed: no test
        }
    )
    # Holm over the 4 tests: none 4 x 0.00084 = 0.0034; joint 3 x 0.00090 = 0.0027, raised to 0.0034 (monotone);
    # tuned_mas 2 x 0.040 = 0.080: raw p below 0.05, adjusted not, so not called higher; mas 1
    assert tests["tuned_mas"].p is not None and tests["tuned_mas"].p < 0.05
    assert tests["tuned_mas"].p_holm == pytest.approx(2 * tests["tuned_mas"].p)
    assert verdict_line("Permuted-MNIST", tests) == (
        "Permuted-MNIST (2-3 paired seeds): the candidate is **higher** than `none` (Holm p 0.0034); **lower** "
        "than `joint` (Holm p 0.0034); not separated from `tuned_mas`, `mas`; identical to `l2`; one paired "
        "seed so far, no test, against `si`."
    )


def test_readme_block_states_means_paired_verdicts_and_the_held_out_streams(tmp_path: Path) -> None:
    split = {
        "candidate": _runs({42: 0.95, 43: 0.96, 44: 0.97}),
        "ewc": _runs({42: 0.94, 43: 0.96, 44: 0.95}),  # diffs 0.01, 0.00, 0.02: p 0.23
        "none": _runs({42: 0.80, 43: 0.81, 44: 0.79}),
    }
    perm = {"candidate": _runs({42: 0.90}), "ewc": _runs({42: 0.91}), "tuned_mas": _runs({42: 0.88})}
    heldout = {"candidate": _runs({100: 0.95, 101: 0.96}), "tuned_mas": _runs({100: 0.93, 101: 0.93})}
    block = readme_block(
        {"splitMNIST": split, "permMNIST": perm, "CIFAR100": {}}, ["candidate", "ewc", "none"], heldout
    )
    lines = block.splitlines()
    assert lines[0] == README_START and lines[-1] == README_END
    assert (
        "| method | Split-MNIST | Permuted-MNIST | published (original harness) |" in lines
    )  # no CIFAR column
    # ewc: mean 0.95, sample sd 0.01, SE 0.01 / sqrt(3) = 0.0058; the original harness's 0.958 / 0.838
    assert "| `ewc` | 0.9500 ± 0.0058 (3) | 0.9100 (1) | 0.958 / 0.838 |" in lines
    assert "| `none` | 0.8000 ± 0.0058 (3) | not run | — |" in lines
    # The table's family: the two tests with a p (the Permuted-MNIST pairs have one seed each).
    # p of a paired t-test, 2 degrees of freedom: 1 - t / sqrt(2 + t^2); ewc t = sqrt(3): 1 - sqrt(3/5) = 0.23,
    # Holm 0.23 (the larger of 1 x 0.23 and none's 0.0078); CI 0.01 ± 4.302653 x 0.0058 = [-0.0148, +0.0348]
    assert (
        "| `ewc` | +0.0100 ± 0.0058 (3) not separated, p 0.23, Holm p 0.23, 95% CI [-0.0148, +0.0348] "
        "| -0.0100 (1) one seed |" in lines
    )
    # none: diffs 0.15, 0.15, 0.18: mean 0.16, sample sd sqrt(0.0006 / 2) = 0.0173, SE 0.0100; t = 16, p 0.0039,
    # Holm 2 x 0.0039 = 0.0078; CI 0.16 ± 0.0430
    assert (
        "| `none` | +0.1600 ± 0.0100 (3) **higher**, p 0.0039, Holm p 0.0078, 95% CI [+0.1170, +0.2030] | — |"
        in lines
    )
    assert any("over the 2 paired tests of the table (those with a p)" in line for line in lines)
    assert (
        "Held-out Permuted-MNIST streams (permutation seeds 100, 101, chose nothing), full protocol, test split. "
        "Streams not clean: 100 (also run on the validation split, by the split check). Holm p over this "
        "list's 1 paired test:" in lines
    )
    # candidate 0.955 ± 0.005; tuned_mas 0.93 on both; diffs 0.02, 0.03: mean 0.025, SE 0.005
    assert "- `candidate`: 0.9550 ± 0.0050 (2)" in lines
    # t = 5 with 1 degree of freedom: p = 1 - (2 / pi) atan(5) = 0.13: not separated (the old 2-SE rule said
    # higher); CI 0.025 ± 12.7062 x 0.005
    assert (
        "- candidate − `tuned_mas`: +0.0250 ± 0.0050 (2) not separated, p 0.13, Holm p 0.13, "
        "95% CI [-0.0385, +0.0885]" in lines
    )
    # pooled with the table's seed 42: diffs 0.02, 0.02, 0.03, mean 0.0233, SE 0.0033; t = 7: p 0.02
    assert (
        "Every Permuted-MNIST test stream, the table's and the held-out ones (seeds 42, 100, 101), paired; "
        "Holm p over this list's 1 paired test:" in lines
    )
    assert (
        lines.count(
            "- candidate − `tuned_mas`: +0.0233 ± 0.0033 (3) **higher**, p 0.02, Holm p 0.02, "
            "95% CI [+0.0090, +0.0377]"
        )
        == 1
    )
    assert "![Held-out streams, paired](results/heldout/plots/permMNIST_paired.png)" in lines
    # seed 42 is marked where the table's Permuted-MNIST seeds are named
    assert lines[2].endswith("Permuted-MNIST seeds not clean: 42 (test-split runs read to design the space).")
    # the verdict in words, per benchmark, from the same adjusted numbers
    assert (
        "- Split-MNIST (3 paired seeds): the candidate is **higher** than `none` (Holm p 0.0078); "
        "not separated from `ewc`." in lines
    )
    assert (
        "- Permuted-MNIST: the candidate is one paired seed so far, no test, against `ewc`, `tuned_mas`."
        in lines
    )
    # the paired figures: one link per benchmark with a pair
    assert (
        "The paired differences per seed, as figures: [Split-MNIST](results/plots/splitMNIST_paired.png), "
        "[Permuted-MNIST](results/plots/permMNIST_paired.png)." in lines
    )

    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n{README_START}\nold\n{README_END}\n\nafter\n", encoding="utf-8")
    write_readme_block(readme, block)
    assert readme.read_text(encoding="utf-8") == f"# T\n\n{block}\n\nafter\n"
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no results markers"):
        write_readme_block(readme, block)


def test_p_value_is_the_two_sided_paired_t_test() -> None:
    def paired(*diffs: float) -> stats.Paired:
        s = stats.summarize(diffs)
        return stats.Paired(tuple(range(len(diffs))), diffs, s.mean, s.se)

    t = 0.02 / (0.01 / math.sqrt(3))  # diffs 0.01, 0.02, 0.03: t = 2 sqrt(3)
    assert stats.p_value(paired(0.01, 0.02, 0.03)) == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert stats.p_value(paired(-0.01, -0.02, -0.03)) == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert stats.p_value(paired(0.01)) is None  # one seed: no test
    assert stats.p_value(paired(0.0, 0.0)) is None  # identical on every seed
    assert stats.p_value(paired(0.01, 0.01)) == 0.0  # the same nonzero difference on every seed
    assert stats.p_at(2.0, 2) == pytest.approx(1 - 2 / math.pi * math.atan(2.0))


def test_one_colour_per_method_everywhere() -> None:
    names = ["candidate", "ewc", "online_ewc", "si", "mas", "l2", "none", "joint", *(f"tuned_{b}" for b in ("ewc", "online_ewc", "si", "mas"))]  # fmt: skip
    colours = [method_style(m).color for m in names]
    assert len(set(colours)) == len(colours)
    # a method without a style gets one from its name: the same in every figure and every run
    assert method_style("trial_12").color == method_style("trial_12").color
    assert method_style("trial_12").color not in colours


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
    assert "| `none` | 3 |" in text and "| Holm p | verdict |" in text

    average = figures["splitMNIST_average.png"]
    full, zoom = average.axes  # the six close methods get a zoomed panel
    for line in full.get_lines():
        method = line.get_label().split(" (")[0]
        assert to_hex(line.get_color()) == method_style(method).color
    bands = [c for c in full.collections if isinstance(c, PolyCollection)]
    assert bands and {to_hex(b.get_facecolor()[0]) for b in bands} <= {method_style(m).color for m in accs}
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

    def put(
        method: str, module: str, seed: int, acc: float, finished: str, version: str | None = None,
        root: Path = tmp_path, experiment: str = "splitMNIST", k: int = 5, copied_at: str | None = None,
    ) -> None:  # fmt: skip
        key, fields = cache.run_key(
            module, cache.make_config(experiment, seed, device="auto"), version or cache.code_version()
        )
        record = {"method": method, "method_label": f"preset `{method}`", "seed": seed, "key": key,
                  "key_fields": fields, "finished_at": finished, "wall_s": 1.0,
                  "result": {"average_accuracy": acc, "acc_matrix": [[acc] * (i + 1) for i in range(k)]}}  # fmt: skip
        if copied_at:
            record["copied_at"] = copied_at
        path = cache.result_path(root / "runs", method, experiment, key, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / f"ewc-{'a' * 12}.py").write_text("# ewc\n")
    put("ewc", "a" * 64, 42, 0.99, "2026-11-27T10:00:00")
    put("ewc", "a" * 64, 43, 0.98, "2026-11-27T10:05:00")
    put("ewc", "b" * 64, 42, 0.50, "2026-11-26T10:00:00")  # an older module of the same method
    put("candidate", "c" * 64, 42, 0.97, "2026-11-27T09:00:00")
    # a run of another method copied under `candidate` later (the same code shipped): filed when it was copied
    put("candidate", "f" * 64, 43, 0.95, "2026-11-20T09:00:00", copied_at="2026-11-28T09:00:00")
    other, _ = cache.run_key("d" * 64, cache.make_config("splitMNIST", 42, device="auto"), "harness-0")
    put("si", "d" * 64, 42, 0.90, "2026-11-27T09:00:00", version="harness-0")  # another harness version's
    results, methods, notes = report.results_as_cached(tmp_path, ["splitMNIST", "permMNIST"])
    assert [m for m, _ in methods] == ["candidate", "ewc"]  # the table's order, si left out
    assert list(results["splitMNIST"]) == ["candidate", "ewc"] and results["permMNIST"] == {}
    assert {s: r["result"]["average_accuracy"] for s, r in results["splitMNIST"]["ewc"].items()} == {
        42: 0.99,
        43: 0.98,
    }
    assert dict(methods)["ewc"] == f"preset `ewc`; module `modules/ewc-{'a' * 12}.py`"
    assert any("older configuration" in n and "`ewc`" in n for n in notes)
    assert {s: r["result"]["average_accuracy"] for s, r in results["splitMNIST"]["candidate"].items()} == {
        43: 0.95
    }
    assert any(f"si__{other}__seed42.json" in n and "another harness or protocol" in n for n in notes)

    assert report.main(["--out", str(tmp_path), "--benchmarks", "splitMNIST", "permMNIST"]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "Produced by: `python -m evaluation.report --out" in text and report.AS_CACHED in text
    assert "| `ewc` | 0.9850 ± 0.0050 | 2 |" in text and "**Permuted-MNIST: no results**" in text

    # With --readme, the held-out streams' report is rebuilt too, and the README block shows their figure.
    held = tmp_path / "heldout"
    for seed, (cand, tuned) in {100: (0.96, 0.95), 101: (0.95, 0.95)}.items():
        put("candidate", "c" * 64, seed, cand, "2026-11-28", root=held, experiment="permMNIST", k=10)
        put("tuned_mas", "e" * 64, seed, tuned, "2026-11-28", root=held, experiment="permMNIST", k=10)
    readme = tmp_path / "project" / "README.md"
    readme.parent.mkdir()
    readme.write_text(f"# T\n{README_START}\n{README_END}\n", encoding="utf-8")
    args = ["--out", str(tmp_path), "--benchmarks", "splitMNIST", "permMNIST", "--readme", str(readme)]
    assert report.main(args) == 0
    assert (held / "plots" / "permMNIST_paired.png").is_file()
    assert "| `tuned_mas` | 2 | 100: +0.0100, 101: +0.0000 |" in (held / "README.md").read_text()
    block = readme.read_text(encoding="utf-8")
    assert "- candidate − `tuned_mas`: +0.0050 ± 0.0050 (2) not separated, p 0.5, Holm p 0.5" in block
    assert "![Held-out streams, paired](../heldout/plots/permMNIST_paired.png)" in block
    assert "[Split-MNIST](../plots/splitMNIST_paired.png)" in block  # candidate against ewc on seed 43


def test_the_readme_leads_with_the_verdict_on_the_fresh_streams() -> None:
    """The fresh streams come first, with their own Holm family, and the verdict sentence is built from their
    adjusted p; they join the pooled list of every test stream."""
    perm = {"candidate": _runs({42: 0.96}), "mas": _runs({42: 0.95})}
    heldout = {"candidate": _runs({100: 0.96}), "mas": _runs({100: 0.95})}
    fresh = {
        # candidate - mas: 0.01, 0.02, 0.01, 0.02, 0.01: mean 0.014, sd 0.005477, SE 0.002449, t 5.715 (4 df)
        "candidate": _runs({103: 0.96, 104: 0.97, 105: 0.96, 106: 0.97, 107: 0.96}),
        "mas": _runs({103: 0.95, 104: 0.95, 105: 0.95, 106: 0.95, 107: 0.95}),
        # candidate - tuned_si: 0.00, +0.01, -0.01, +0.02, -0.02: mean 0, not separated
        "tuned_si": _runs({103: 0.96, 104: 0.96, 105: 0.97, 106: 0.95, 107: 0.98}),
    }
    lines = readme_block({"permMNIST": perm}, ["candidate", "mas"], heldout, fresh=fresh).splitlines()
    assert lines[2] == (
        "**Fresh Permuted-MNIST test streams** (permutation seeds 103, 104, 105, 106, 107, test split, full "
        "protocol; nothing in the project ran them before): the verdict rests on these. Holm p over this list's "
        "2 paired tests."
    )
    assert "- `tuned_si`: 0.9640 ± 0.0051 (5)" in lines
    # p of t 5.715 with 4 df: 0.0047; Holm: twice the smaller p (0.0093) against tuned_si's p 1;
    # CI 0.014 ± 2.776445 x 0.002449 = [+0.0072, +0.0208]
    assert (
        "- candidate − `mas`: +0.0140 ± 0.0024 (5) **higher**, p 0.0046, Holm p 0.0093, 95% CI [+0.0072, +0.0208]"
        in lines
    )
    assert any(
        line.startswith("- candidate − `tuned_si`: +0.0000 ± 0.0071 (5) not separated, p 1") for line in lines
    )
    assert (
        "**Verdict.** On the fresh streams (5 paired seeds): the candidate is **higher** than `mas` (Holm p "
        "0.0093); not separated from `tuned_si`." in lines
    )
    assert lines.index("| method | Permuted-MNIST | published (original harness) |") > lines.index(
        "![Fresh streams, paired](results/fresh/plots/permMNIST_paired.png)"
    )
    assert any(
        line.startswith(
            "Every Permuted-MNIST test stream, the table's, the held-out and the fresh ones "
            "(seeds 42, 100, 103, 104, 105, 106, 107)"
        )
        for line in lines
    )

    # A baseline retuned since the table ran another module on the fresh streams: named, and left out of the pool.
    def module(recs: dict[int, dict], sha: str) -> dict[int, dict]:
        return {s: {**r, "key_fields": {"module": sha}} for s, r in recs.items()}

    retuned = {**fresh, "mas": module(fresh["mas"], "b" * 64)}
    table = {"candidate": perm["candidate"], "mas": module(perm["mas"], "a" * 64)}
    held = {"candidate": heldout["candidate"], "mas": module(heldout["mas"], "a" * 64)}
    lines = readme_block({"permMNIST": table}, ["candidate", "mas"], held, fresh=retuned).splitlines()
    assert "- `mas` (module bbbbbbbbbbbb; not the table's `mas`): 0.9500 ± 0.0000 (5)" in lines
    assert "- `mas`: 0.9500 (1)" in lines  # on the held-out streams, the table's module
    assert any(
        line.startswith("Every Permuted-MNIST test stream, the table's and the held-out ones (seeds 42, 100)")
        for line in lines
    )
    # Another module shipped since the held-out streams ran: their candidate line names the module it ran.
    shipped = {**table, "candidate": module(perm["candidate"], "c" * 64)}
    held = {**held, "candidate": module(heldout["candidate"], "d" * 64)}
    lines = readme_block({"permMNIST": shipped}, ["candidate", "mas"], held, fresh=retuned).splitlines()
    assert "- `candidate` (module dddddddddddd; not the table's `candidate`): 0.9600 (1)" in lines
    # Without a fresh run of the candidate there is no verdict, and the block says how to get one.
    lines = readme_block({"permMNIST": perm}, ["candidate"], None, fresh={"mas": fresh["mas"]}).splitlines()
    assert (
        "**Verdict**: none yet; the candidate has no run on the fresh streams (`make fresh-streams`)."
        in lines
    )


REPO = Path(__file__).resolve().parents[1]


def test_the_readme_results_block_is_what_the_committed_cache_gives() -> None:
    """The README's results block is exactly what `make results-table` writes from the committed cache: no stale or
    hand-typed number."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert README_START in text and README_END in text, "the README lost its results markers"
    block = README_START + text.split(README_START, 1)[1].split(README_END, 1)[0]
    results, methods, _notes = report.results_as_cached(
        REPO / "results", ["splitMNIST", "permMNIST", "CIFAR100"]
    )
    streams = report.stream_sets(REPO / "results")
    expected = readme_block(results, [m for m, _ in methods], streams["heldout"], fresh=streams["fresh"])
    assert block + README_END == expected, "the README's results block is stale: run `make results-table`"
    assert "`candidate`" in block and "`none`" in block and "`joint`" in block


def test_the_aims_are_computed_from_the_runs() -> None:
    """Each aim says met or not met from the numbers: the fresh verdict's tests (the search's design and joint
    are not baselines), the Permuted-MNIST means against 0.968, and Split-MNIST's per-seed shortfalls against the
    candidate's own SD over seeds."""
    fresh = {
        "candidate": _runs({103: 0.96, 104: 0.97, 105: 0.96, 106: 0.97, 107: 0.96}),
        "searched": _runs(
            {103: 0.97, 104: 0.98, 105: 0.97, 106: 0.98, 107: 0.97}
        ),  # above it: not a baseline
        "mas": _runs({103: 0.95, 104: 0.95, 105: 0.95, 106: 0.95, 107: 0.95}),  # higher, Holm p < 0.05
        "tuned_mas": _runs({103: 0.96, 104: 0.97, 105: 0.96, 106: 0.97, 107: 0.96}),  # the same code
        "tuned_si": _runs({103: 0.96, 104: 0.96, 105: 0.97, 106: 0.95, 107: 0.98}),  # not separated
    }
    # candidate's Split-MNIST accuracies 0.99, 0.98, 0.99: SD 0.005774; kfac_ewc 0.991 on seed 43 is 0.011 above
    # (beyond one SD), ewc 0.985 on seed 42 0.005 above (within it); joint 0.999 is not a baseline.
    split = {
        "candidate": _runs({42: 0.99, 43: 0.98, 44: 0.99}),
        "kfac_ewc": _runs({42: 0.98, 43: 0.991, 44: 0.98}),
        "ewc": _runs({42: 0.995, 43: 0.97, 44: 0.98}),
        "joint": _runs({42: 0.999, 43: 0.999, 44: 0.999}),
    }
    perm = {"candidate": _runs({42: 0.97, 43: 0.968}), "joint": _runs({42: 0.98, 43: 0.98})}
    lines = readme_block(
        {"splitMNIST": split, "permMNIST": perm}, list(split), None, fresh=fresh
    ).splitlines()
    start = lines.index("**Aims** (issue 30), computed from the runs of this block:")
    assert lines[start + 2 : start + 5] == [
        "- Above every baseline that ran the fresh streams, with Holm p < 0.05: **not met**, against `tuned_si` (not "
        "separated); above `mas`; `tuned_mas` ran the same code.",
        "- Permuted-MNIST at least 0.968 (joint training 0.9800): **not met**: 0.9640 on the fresh streams, "
        "0.9690 on the test split.",
        "- Split-MNIST on no seed below a baseline by more than one stream SD (0.0058, the candidate's over its 3 "
        "seeds): **not met**: `kfac_ewc` on seed 43 (-0.0110).",
    ]
    # Met: nothing is listed against the aim.
    up = _runs({103: 0.97, 104: 0.98, 105: 0.97, 106: 0.98, 107: 0.97})
    fresh_met = {"candidate": up, "mas": _runs({103: 0.95, 104: 0.95, 105: 0.96, 106: 0.95, 107: 0.95})}
    met = readme_block({}, [], None, fresh={**fresh_met, "tuned_mas": up}).splitlines()
    assert (
        "- Above every baseline that ran the fresh streams, with Holm p < 0.05: **met**; above `mas`; `tuned_mas` ran the same code."
        in met
    )
    assert "- Permuted-MNIST at least 0.968: **met**: 0.9740 on the fresh streams." in met
