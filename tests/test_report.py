"""The report's numbers: standard error, cell formatting, published references, curves, missing benchmarks."""

from __future__ import annotations

import math
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
