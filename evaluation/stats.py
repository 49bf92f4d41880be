"""The statistics of the report: mean and standard error over seeds, the candidate's paired differences, the
paired t-test, Holm's adjustment over a family of tests, confidence intervals and the words they allow.

A comparison is called **higher** or **lower** only where its Holm-adjusted p lies below `ALPHA`; the family is
every paired test of one table (`compare`), so that a table's words cannot outrun its tests.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

ALPHA = 0.05
LEVEL = 0.95  # of the confidence intervals

K = TypeVar("K", bound=Hashable)


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


# ---------------------------------------------------------------------------------------------------------
# Paired differences: the candidate against each baseline, seed by seed

CANDIDATE = "candidate"


@dataclass(frozen=True)
class Paired:
    """Candidate minus one baseline on the seeds both ran: per seed, mean and standard error (None: one seed)."""

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mean: float
    se: float | None

    @property
    def n(self) -> int:
        """The number of paired seeds."""
        return len(self.seeds)

    @property
    def identical(self) -> bool:
        """Equal on every seed (more than one)."""
        return self.se == 0.0 and self.mean == 0.0


def from_diffs(diffs: Sequence[float], seeds: Sequence[int] | None = None) -> Paired:
    """A `Paired` from its per-seed differences (seeds 0, 1, ... unless given)."""
    s = summarize(diffs)
    return Paired(tuple(range(len(diffs)) if seeds is None else seeds), tuple(diffs), s.mean, s.se)


def paired_differences(
    by_method: Mapping[str, Mapping[int, dict]], candidate: str = CANDIDATE
) -> dict[str, Paired]:
    """Per baseline (every other method with a seed in common), the candidate's accuracy minus its own."""
    mine = by_method.get(candidate, {})
    out: dict[str, Paired] = {}
    for method, recs in by_method.items():
        seeds = tuple(sorted(set(mine) & set(recs)))
        if method == candidate or not seeds:
            continue
        diffs = tuple(
            float(mine[s]["result"]["average_accuracy"]) - float(recs[s]["result"]["average_accuracy"])
            for s in seeds
        )
        out[method] = from_diffs(diffs, seeds)
    return out


# ---------------------------------------------------------------------------------------------------------
# Tests and intervals


def p_at(t: float, n: int) -> float:
    """The two-sided p of a paired t statistic `t` over `n` seeds."""
    from scipy import stats

    return float(2 * stats.t.sf(abs(t), n - 1))


def p_value(p: Paired) -> float | None:
    """Two-sided paired t-test of the mean difference against 0 (n - 1 degrees of freedom); None with one seed or
    with no difference on any seed."""
    if p.se is None or p.identical:
        return None
    if p.se == 0.0:
        return 0.0
    return p_at(p.mean / p.se, p.n)


def confidence_interval(p: Paired, level: float = LEVEL) -> tuple[float, float] | None:
    """The interval mean ± t(1 - (1 - level) / 2, n - 1) x SE; None with one seed."""
    if p.se is None:
        return None
    from scipy import stats

    half = float(stats.t.ppf(1 - (1 - level) / 2, p.n - 1)) * p.se
    return p.mean - half, p.mean + half


def holm(pvalues: Mapping[K, float | None]) -> dict[K, float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); a None p is left out of the family
    and stays None."""
    tested = sorted(((pv, k) for k, pv in pvalues.items() if pv is not None), key=lambda item: item[0])
    m = len(tested)
    adjusted: dict[K, float | None] = dict.fromkeys(pvalues)
    running = 0.0
    for i, (pv, k) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * pv))
        adjusted[k] = running
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """One paired comparison within its family: raw and Holm-adjusted p, confidence interval, family size."""

    paired: Paired
    p: float | None
    p_holm: float | None
    ci: tuple[float, float] | None
    family: int


def compare(pairs: Mapping[K, Paired]) -> dict[K, Comparison]:
    """Every paired comparison of one family (one table), with Holm's adjustment over the family's tests."""
    raw = {k: p_value(p) for k, p in pairs.items()}
    adjusted = holm(raw)
    family = sum(pv is not None for pv in raw.values())
    return {k: Comparison(p, raw[k], adjusted[k], confidence_interval(p), family) for k, p in pairs.items()}


def compare_table(
    pairs: Mapping[str, Mapping[str, Paired]],
) -> dict[str, dict[str, Comparison]]:
    """`compare` over a table of benchmark -> baseline -> `Paired`: every cell of the table in one family."""
    flat = compare({(b, m): p for b, by in pairs.items() for m, p in by.items()})
    return {b: {m: flat[(b, m)] for m in by} for b, by in pairs.items()}


def side(c: Comparison, alpha: float = ALPHA) -> str:
    """`higher` or `lower` where the Holm-adjusted p < `alpha`, else `not separated`, `identical` (equal on every
    seed) or `one seed` (no test)."""
    if c.paired.se is None:
        return "one seed"
    if c.paired.identical:
        return "identical"
    if c.p_holm is not None and c.p_holm < alpha:
        return "higher" if c.paired.mean > 0 else "lower"
    return "not separated"


def verdict(c: Comparison) -> str:
    """The side in a table's words."""
    return {
        "one seed": "one seed: no test",
        "identical": "identical on every seed",
        "higher": "**candidate higher**",
        "lower": "**candidate lower**",
    }.get(side(c), "not separated")
