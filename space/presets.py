"""The published methods as points of the space (HARNESS.md section 6), and named variants of them."""

from __future__ import annotations

from space.design import Design

PRESETS: dict[str, Design] = {
    # Scaffold EWC: exact Fisher, first 200 examples, 0.5 * sum F (theta - theta*)^2, the published strength.
    "ewc": Design(),
    # Online EWC: the same Fisher, carried importance decayed by gamma; the penalty is weighed by gamma too.
    "online_ewc": Design(accumulate="decay", decay_gamma=0.9),
    # SI: Omega = W / (Delta^2 + epsilon), unclamped as published; sum Omega (theta - theta*)^2, no 0.5: the
    # penalty is 0.5 * sum, so the published scale 1 is 2 here (exact in floating point).
    "si": Design(estimators="si", reference="none", reg_strength_scale=2.0),
    # MAS: mean |d ||f(x)||^2 / d theta| over the first 200 examples; sum Omega (theta - theta*)^2 as published.
    # MAS and L2 scales match their importance's magnitude to the exact Fisher's (geometric mean over Split- and
    # Permuted-MNIST after 300 iterations, docs/space.md); they are starting points, not tuned strengths.
    "mas": Design(estimators="mas", reference="none", reg_strength_scale=2e-5),
    # L2 to the anchor: importance 1 everywhere, 0.5 * sum (theta - theta*)^2.
    "l2": Design(estimators="uniform", reference="none", reg_strength_scale=1e-5),
    # No regularization: the generated penalty is 0.
    "none": Design(estimators="none"),
    # K-FAC EWC (`--kfac-ewc` of GMvandeVen/continual-learning; Ritter et al. 2018): per nn.Linear layer
    # A = E[a a^T], G = E[sum_j p_j g_j g_j^T] over the first 200 examples (as `ewc` here), contexts merged into one
    # pair by the reference's `additive_nearest_kf`, penalty 0.5 tr(dW^T G dW A), exact, raw. The reference gives
    # it no strength of its own (its default is EWC's lambda, which its comparison script sweeps): scale 1 is
    # EWC's published strength, the harness's reg_strength.
    "kfac_ewc": Design(estimators="kfac", reference="none"),
}

# Points of the searched space named for what they test (the fidelity panel, warm starts): each published
# estimator calibrated to the exact Fisher's total, the square root of the Fisher, and per-context
# equalization (every context at the first context's total).
VARIANTS: dict[str, Design] = {
    "si_calibrated": Design(estimators="si"),
    "mas_calibrated": Design(estimators="mas"),
    "l2_calibrated": Design(estimators="uniform"),
    "sqrt_fisher": Design(power=0.5),
    "ewc_equalized": Design(reference="fisher_first"),
    "sqrt_fisher_equalized": Design(power=0.5, reference="fisher_first"),
    "ewc_all_examples": Design(data_examples=0),
    # The structured family calibrated like the rest (trace of the form = the exact Fisher's total), at ranks
    # whose penalty costs at most half a Permuted-MNIST step on one CPU thread (docs/space.md).
    "kfac_merged_r32": Design(estimators="kfac", kfac_rank=32),
    "kfac_merged_r16_damped": Design(estimators="kfac", kfac_rank=16, kfac_damping=0.01),
    "kfac_per_context_r4": Design(estimators="kfac", kfac_accumulate="per_context", kfac_rank=4),
    "kfac_merged_r32_x3": Design(estimators="kfac", kfac_rank=32, reg_strength_scale=3.0),
    # `kfac_ewc` (raw, uncalibrated) at rank 32: apart from `kfac_merged_r32` only by the calibration, and from
    # `kfac_ewc` only by the rank, so that its full runs tell which of the two lost the first contexts.
    "kfac_ewc_r32": Design(estimators="kfac", reference="none", kfac_rank=32),
}


def named(spec: str) -> Design:
    """A preset or variant by name, or `NAME@X`: it at X (> 0) times its strength (a point of a strength sweep).

    A ValueError names what is wrong."""
    name, at, times = spec.partition("@")
    table = {**PRESETS, **VARIANTS}
    if name not in table:
        raise ValueError(f"{spec!r}: {name!r} is not a preset or variant ({', '.join(sorted(table))})")
    design = table[name]
    if not at:
        return design
    try:
        scale = float(times)
    except ValueError:
        scale = float("nan")
    if not scale > 0 or scale == float("inf"):
        raise ValueError(f"{spec!r}: the multiple after '@' must be a positive number")
    return design.replace(reg_strength_scale=design.reg_strength_scale * scale)
