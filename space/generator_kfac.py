"""The code generator's part for the structured family (space/kfac.py): the lines of its two hook functions.

`space.generator` writes the rest of the module (header, DESIGN, constants, the copied building blocks) and the
start of `estimate_importance` that every family shares (up to the stacked examples, inside `try:`).
"""

from __future__ import annotations

from space.design import Design
from space.registry import ESTIMATORS

Constants = list[tuple[str, str, str]]  # (name, value, reason), as the generated module states them

# The diagonal Fisher of each label variant, for the parameters outside nn.Linear layers.
_DIAGONAL = {"exact": "fisher_exact", "sampled": "fisher_empirical", "empirical": "fisher_empirical"}


def estimate_lines(design: Design, needed: list[str], constants: Constants) -> list[str]:
    """The lines of `estimate_importance` after the shared start: factors, the diagonal rest, calibration."""
    calibrated = design.reference == "fisher"
    merged = design.kfac_accumulate == "merged"
    constants.append(
        (
            "MERGE",
            repr(merged),
            "One Kronecker pair per layer for every context (the online approximation), not one per context."
            if merged
            else "Every context keeps its own Kronecker pair (the penalty sums them exactly), not one merged pair.",
        )
    )
    if design.kfac_damping:
        constants.append(
            (
                "DAMPING",
                repr(design.kfac_damping),
                "Damping added to each factor, relative to its mean diagonal.",
            )
        )
    if design.kfac_rank:
        constants.append(
            (
                "RANK",
                repr(design.kfac_rank),
                "Eigenvectors of A and of G the penalty keeps per layer (its cost).",
            )
        )
    needed += ["_kronecker_factors", "_kfac_carry"]
    # The diagonal Fisher of the parameters outside nn.Linear layers, on the same labels as the factors.
    diagonal = ESTIMATORS[_DIAGONAL[design.fisher_labels]]
    needed += [diagonal.name, *diagonal.requires]
    lines = []
    if design.fisher_labels == "exact":
        needed.append("_softmax_units")
        directions, targets = "_softmax_units", "ys"
    else:
        needed.append("_label_nll")
        directions, targets = "_label_nll", "ys"
        if design.fisher_labels == "sampled":
            constants.append(("LABEL_SEED", "0", "Seed of the labels drawn from the model's softmax."))
            needed.append("_sampled_labels")
            targets = "labels"
            lines.append(
                "        labels = _sampled_labels(model, xs, torch.Generator().manual_seed(LABEL_SEED))"
            )
    lines += [
        f"        factors, covered = _kronecker_factors(model, params, xs, {directions}, {targets})",
        "        rest = {k: p for k, p in params.items() if k not in covered}  # outside nn.Linear: diagonal",
        f"        diagonal = {diagonal.name}(model, rest, xs, {targets}) if rest else {{}}",
    ]
    if calibrated:
        needed += [ESTIMATORS["fisher_exact"].name, *ESTIMATORS["fisher_exact"].requires]
        lines.append("        exact_fisher = _fisher_exact(model, params, xs, ys)")
    lines += ["    finally:", "        model.train(was_training)"]
    if design.kfac_damping:
        needed.append("_damp")
        lines.append(
            '    factors = {k: {"A": _damp(f["A"], DAMPING), "G": _damp(f["G"], DAMPING)} for k, f in factors.items()}'
        )
    if calibrated:
        needed += ["_kfac_total", "_total", "_TINY"]
        lines += [
            "    # The trace of the quadratic form, sum tr(A) tr(G) plus the diagonal's total, on the exact Fisher's.",
            "    ratio = _total(exact_fisher) / _kfac_total(factors, diagonal).clamp_min(_TINY)",
            '    factors = {k: {"A": f["A"], "G": f["G"] * ratio} for k, f in factors.items()}',
            "    diagonal = {k: v * ratio for k, v in diagonal.items()}",
        ]
    lines.append(f"    _kfac_carry(model, factors, merge=MERGE, keep_trace={calibrated and merged})")
    if design.kfac_rank:
        needed.append("_lowrank_carry")
        lines.append("    _lowrank_carry(model, RANK)  # the penalty's eigenbasis, computed once per context")
    lines.append("    return diagonal  # the loop adds it to the carried importance: a plain sum")
    return lines


def penalty_lines(design: Design, needed: list[str]) -> list[str]:
    """The body of `compute_regularization_loss`: the Kronecker form plus the diagonal rest, times 0.5."""
    penalty = "_kfac_lowrank_penalty" if design.kfac_rank else "_kfac_exact_penalty"
    needed += [penalty, "_diagonal_penalty"]
    form = "in the kept eigenbasis, diagonal outside it" if design.kfac_rank else "exact"
    return [
        f'    """R = 0.5 * (sum over layers tr(dW^T G dW A) ({form}) + sum F (theta - anchor)^2)."""',
        f"    structured = {penalty}(model, prev_params_dict)",
        "    return 0.5 * (structured + _diagonal_penalty(model, importance_dict, prev_params_dict))",
    ]
