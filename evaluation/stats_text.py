"""The paired comparisons in words, as the report, the README's results block and the figures state them, and
the one Holm family of a results table (`table_tests`)."""

from __future__ import annotations

from collections.abc import Mapping

from evaluation.stats import ALPHA, Comparison, compare_table, paired_differences


def table_tests(results: Mapping[str, Mapping[str, Mapping[int, dict]]]) -> dict[str, dict[str, Comparison]]:
    """Per benchmark, the candidate against each baseline: every paired test of the table in one Holm family."""
    return compare_table({b: paired_differences(by_method) for b, by_method in results.items()})


def p_text(p: float) -> str:
    """`p` to 2 significant digits, or more where 2 would put it on the other side of ALPHA (0.0499, not 0.05)."""
    for digits in range(2, 8):
        text = f"{p:.{digits}g}"
        if (float(text) < ALPHA) == (p < ALPHA):
            return text
    return repr(p)


def comparison_numbers(c: Comparison) -> str:
    """`p 0.053, Holm p 0.58, 95% CI [-0.0003, +0.0141]`, or nothing where there is no test."""
    if c.p is None or c.p_holm is None:
        return ""
    text = f"p {p_text(c.p)}, Holm p {p_text(c.p_holm)}"
    return text if c.ci is None else f"{text}, 95% CI [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]"


def paired_tests(n: int) -> str:
    """`1 paired test`, `N paired tests`."""
    return f"{n} paired test" + ("" if n == 1 else "s")


def stats_note(family: int, scope: str = "of this table") -> str:
    """How a table's p, Holm p, interval and words are computed; empty without a test."""
    if family == 0:
        return ""
    return (
        "p: two-sided paired t-test (n − 1 degrees of freedom); Holm p: p adjusted by Holm's step-down method "
        f"over the {paired_tests(family)} {scope} (those with a p); 95% CI: mean ± t(0.975, n − 1) × SE, "
        "per comparison (not adjusted). "
        f"**higher** / **lower** only where the Holm p < {ALPHA:g}; otherwise not separated."
    )
