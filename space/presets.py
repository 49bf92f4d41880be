"""The published methods as points of the space (HARNESS.md section 6)."""

from __future__ import annotations

from space.design import Design

PRESETS: dict[str, Design] = {
    # Scaffold EWC: exact Fisher, first 200 examples, 0.5 * sum F (theta - theta*)^2, the published strength.
    "ewc": Design(),
    # Online EWC: the same Fisher, carried importance decayed by gamma; the penalty is weighed by gamma too.
    "online_ewc": Design(accumulate="decay", decay_gamma=0.9),
    # SI: Omega = W / (Delta^2 + epsilon), unclamped as published; sum Omega (theta - theta*)^2, no 0.5.
    "si": Design(fisher_weight=0.0, si_weight=1.0, penalty_coef=1.0),
    # MAS: mean |d ||f(x)||^2 / d theta| over the first 200 examples; sum Omega (theta - theta*)^2 as published.
    # MAS and L2 scales match their importance's magnitude to the exact Fisher's (geometric mean over Split- and
    # Permuted-MNIST after 300 iterations, docs/space.md); they are starting points, not tuned strengths.
    "mas": Design(fisher_weight=0.0, mas_weight=1.0, penalty_coef=1.0, reg_strength_scale=1e-5),
    # L2 to the anchor: importance 1 everywhere, 0.5 * sum (theta - theta*)^2.
    "l2": Design(fisher_weight=0.0, uniform_weight=1.0, reg_strength_scale=1e-5),
    # No regularization: every weight 0, so the generated penalty is 0.
    "none": Design(fisher_weight=0.0),
}
