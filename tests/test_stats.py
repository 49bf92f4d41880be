"""evaluation.stats on hand-worked cases: Holm's adjustment, the confidence interval, the words they allow."""

from __future__ import annotations

import math

import pytest

from evaluation import stats


def test_holm_step_down_by_hand() -> None:
    # sorted: a 0.01 x 3 = 0.03; c 0.03 x 2 = 0.06; b 0.04 x 1 = 0.04, raised to 0.06 (monotone)
    assert stats.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})


def test_holm_caps_at_one_and_keeps_order_of_keys() -> None:
    adjusted = stats.holm(
        {"x": 0.6, "y": 0.2, "z": 0.9}
    )  # y 0.6; x 2 x 0.6 = 1.2 -> 1; z 0.9 -> 1 (monotone)
    assert list(adjusted) == ["x", "y", "z"]
    assert adjusted == pytest.approx({"x": 1.0, "y": 0.6, "z": 1.0})


def test_holm_leaves_a_missing_p_out_of_the_family() -> None:
    # two tests, not three: a 0.01 x 2 = 0.02, b 0.04 x 1 = 0.04; the untested one stays None
    assert stats.holm({"a": 0.01, "none": None, "b": 0.04}) == {"a": pytest.approx(0.02), "none": None,
                                                               "b": pytest.approx(0.04)}  # fmt: skip
    assert stats.holm({}) == {} and stats.holm({"one": None}) == {"one": None}
    assert stats.holm({"only": 0.03}) == {"only": pytest.approx(0.03)}


def test_confidence_interval_of_a_paired_mean_difference() -> None:
    # diffs 0.01, 0.02, 0.03: mean 0.02, sample sd 0.01, SE 0.01 / sqrt(3); t(0.975, 2 df) = 4.302653
    ci = stats.confidence_interval(stats.from_diffs((0.01, 0.02, 0.03)))
    assert ci is not None
    lo, hi = ci
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-8)
    # 1 df: t(0.975) = 12.706205; diffs 0.02, 0.03: mean 0.025, SE 0.005
    ci = stats.confidence_interval(stats.from_diffs((0.02, 0.03)))
    assert ci is not None
    lo, hi = ci
    assert (lo, hi) == pytest.approx((0.025 - 12.706205 * 0.005, 0.025 + 12.706205 * 0.005), abs=1e-7)
    assert stats.confidence_interval(stats.from_diffs((0.01,))) is None  # one seed


def test_raw_p_below_alpha_is_not_called_higher_when_holm_is_not() -> None:
    # diffs 0.02, 0.03, 0.04: mean 0.03, SE 0.01 / sqrt(3), t = 3 sqrt(3), 2 df: p = 1 - t / sqrt(2 + t^2) = 0.035
    # alone: higher; beside a test at p 1 (diffs 0.01, -0.01) its Holm p is 2 x 0.035 = 0.070: not separated
    t = 3 * math.sqrt(3)
    p = 1 - t / math.sqrt(2 + t * t)
    assert p == pytest.approx(0.0351, abs=1e-4)
    up = stats.from_diffs((0.02, 0.03, 0.04))
    flat = stats.from_diffs((0.01, -0.01))
    alone = stats.compare({"m": up})["m"]
    assert alone.p == pytest.approx(p) and alone.p_holm == pytest.approx(p) and stats.side(alone) == "higher"
    two = stats.compare({"m": up, "f": flat})
    assert two["m"].p is not None and two["m"].p == pytest.approx(p) and two["m"].p < stats.ALPHA
    assert two["m"].p_holm == pytest.approx(2 * p) and two["m"].family == 2
    assert stats.side(two["m"]) == "not separated" and stats.verdict(two["m"]) == "not separated"
    assert two["f"].p_holm == pytest.approx(1.0) and stats.side(two["f"]) == "not separated"
    down = stats.compare({"m": stats.from_diffs((-0.02, -0.03, -0.04))})["m"]
    assert stats.side(down) == "lower" and down.ci is not None and down.ci[1] < 0


def test_untested_comparisons_are_named_and_left_out_of_the_family() -> None:
    tests = stats.compare(
        {
            "one": stats.from_diffs((0.1,)),  # one seed: no p
            "same": stats.from_diffs((0.0, 0.0, 0.0)),  # identical on every seed: no p
            "m": stats.from_diffs((0.01, 0.02, 0.03)),
        }
    )
    assert tests["m"].family == 1 and tests["m"].p_holm == pytest.approx(tests["m"].p)
    assert tests["one"].p is None and tests["one"].p_holm is None and stats.side(tests["one"]) == "one seed"
    assert (
        tests["same"].p is None and tests["same"].p_holm is None and stats.side(tests["same"]) == "identical"
    )


def test_compare_table_puts_every_cell_in_one_family() -> None:
    up = stats.from_diffs((0.02, 0.03, 0.04))
    table = stats.compare_table({"splitMNIST": {"a": up, "b": up}, "permMNIST": {"a": up}})
    assert {c.family for by in table.values() for c in by.values()} == {3}
    a = table["permMNIST"]["a"]
    assert a.p is not None and a.p_holm == pytest.approx(3 * a.p)


def test_a_p_value_is_printed_on_its_side_of_alpha() -> None:
    """Two significant digits, unless they would round a p across ALPHA: a Holm p of 0.04987 next to **higher**
    must not read 0.05."""
    from evaluation.stats_text import p_text

    assert (p_text(0.04987), p_text(0.0501), p_text(0.05)) == ("0.0499", "0.05", "0.05")
    assert (p_text(0.0096), p_text(0.19), p_text(1.0)) == ("0.0096", "0.19", "1")
    assert p_text(0.049999999) == "0.049999999"
